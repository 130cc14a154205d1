// Renders a RankPlan for people (a table) and for programs (JSON).
#include "parallel/plan_format.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "parallel/bridge.h"

namespace mimo::parallel {
namespace {

// Prints rows of cells as left-aligned columns separated by two spaces.
void WriteColumns(const std::vector<std::vector<std::string>>& rows, std::ostream& out) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()));
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line.append(width[c] - row[c].size() + 2, ' ');
    }
    out << line << '\n';
  }
}

}  // namespace

void WritePlanTable(const RankPlan& plan, std::ostream& out) {
  out << "world_size " << plan.world_size() << ", seed " << plan.seed() << ", "
      << plan.modules().size() << " modules\n\n";
  std::vector<std::vector<std::string>> modules = {
      {"MODULE", "RANKS", "TP", "CP", "DP", "PP", "EP", "ETP", "EXPT_DP", "VPP"}};
  for (const ModulePlan& mp : plan.modules()) {
    const ResolvedModule& m = mp.config();
    const bool lang = m.is_language;
    modules.push_back({m.name, absl::StrCat("[", m.rank_offset, ",", m.rank_end(), ")"),
                       absl::StrCat(m.tp), absl::StrCat(m.cp), absl::StrCat(m.dp),
                       absl::StrCat(m.pp), lang ? absl::StrCat(m.ep) : "-",
                       lang ? absl::StrCat(m.etp) : "-", lang ? absl::StrCat(m.expt_dp()) : "-",
                       lang ? absl::StrCat(m.vpp) : "-"});
  }
  WriteColumns(modules, out);
  out << '\n';
  std::vector<std::vector<std::string>> rows = {{"RANK", "MODULE", "TP", "CP", "DP", "PP",
                                                 "EXPT_TP", "EP", "EXPT_DP", "SEED", "TP_SEED",
                                                 "DP_SEED", "EXPERT_SEED"}};
  rows.reserve(plan.world_size() + 1);
  for (int r = 0; r < plan.world_size(); ++r) {
    const RankAssignment& a = plan.rank(r);
    const auto& e = a.expert;
    rows.push_back({absl::StrCat(r), plan.modules()[a.module].config().name,
                    absl::StrCat(a.dense.tp), absl::StrCat(a.dense.cp), absl::StrCat(a.dense.dp),
                    absl::StrCat(a.dense.pp), e ? absl::StrCat(e->expt_tp) : "-",
                    e ? absl::StrCat(e->ep) : "-", e ? absl::StrCat(e->expt_dp) : "-",
                    absl::StrCat(a.seeds.base), absl::StrCat(a.seeds.tensor_parallel),
                    absl::StrCat(a.seeds.data_parallel),
                    a.seeds.expert ? absl::StrCat(*a.seeds.expert) : "-"});
  }
  WriteColumns(rows, out);
}

nlohmann::ordered_json RankToJson(const RankPlan& plan, int rank) {
  using nlohmann::ordered_json;
  const RankAssignment& a = plan.rank(rank);
  const ModulePlan& mp = plan.modules()[a.module];
  ordered_json j;
  j["rank"] = rank;
  j["module"] = mp.config().name;
  j["dense"] = {{"tp", a.dense.tp}, {"cp", a.dense.cp}, {"dp", a.dense.dp}, {"pp", a.dense.pp}};
  if (a.expert) {
    j["expert"] = {{"expt_tp", a.expert->expt_tp},
                   {"ep", a.expert->ep},
                   {"expt_dp", a.expert->expt_dp},
                   {"pp", a.expert->pp}};
  } else {
    j["expert"] = nullptr;
  }
  j["seeds"] = {{"base", a.seeds.base},
                {"tensor_parallel", a.seeds.tensor_parallel},
                {"data_parallel", a.seeds.data_parallel},
                {"expert", a.seeds.expert ? ordered_json(*a.seeds.expert) : ordered_json()}};
  ordered_json groups = ordered_json::object();
  for (int k = 0; k < kNumGroupKinds; ++k) {
    const auto kind = static_cast<GroupKind>(k);
    if (IsExpertGroup(kind) && !a.expert) continue;
    const absl::Span<const int> members = mp.Group(rank, kind);
    groups[std::string(GroupKindName(kind))] = std::vector<int>(members.begin(), members.end());
  }
  j["groups"] = std::move(groups);
  ordered_json links = ordered_json::array();
  for (const BridgeLink& link : BridgeLinksOf(plan, rank)) {
    links.push_back({{"kind", BridgeLinkKind(plan, link)},
                     {"encoder", plan.modules()[link.encoder].config().name},
                     {"encoder_rank", link.encoder_rank},
                     {"language_rank", link.language_rank}});
  }
  j["links"] = std::move(links);
  return j;
}

void WritePlanJson(const RankPlan& plan, std::ostream& out) {
  out << "{\"world_size\": " << plan.world_size() << ", \"ranks\": [";
  for (int r = 0; r < plan.world_size(); ++r) {
    if (r > 0) out << ", ";
    out << RankToJson(plan, r).dump();
  }
  out << "]}\n";
}

}  // namespace mimo::parallel
