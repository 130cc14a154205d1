// The point-to-point links between encoder ranks and language ranks (non-colocated modules).
#include "parallel/bridge.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"

namespace mimo::parallel {
namespace {

// The leader of data-parallel replica `dp` of `module`: tp 0, cp 0 at pipeline stage `pp`.
int Leader(const ModulePlan& module, int dp, int pp) {
  // Dense view dims: (tp, cp, dp, pp).
  const int coords[] = {0, 0, dp, pp};
  return module.dense_view().RankAt(coords);
}

// Appends the links of data-parallel replica `replica` of encoder `m`.
void AppendEncoderReplicaLinks(const RankPlan& plan, int m, int replica,
                               std::vector<BridgeLink>* links) {
  const ModulePlan& encoder = plan.modules()[m];
  const ResolvedModule& e = encoder.config();
  const ResolvedModule& language = plan.language().config();
  const int from = Leader(encoder, replica, e.pp - 1);
  // Language replicas [first, last) take this encoder replica's samples.
  const int first =
      e.dp >= language.dp ? replica / (e.dp / language.dp) : replica * (language.dp / e.dp);
  const int last = e.dp >= language.dp ? first + 1 : first + language.dp / e.dp;
  for (int l = first; l < last; ++l) {
    links->push_back(
        {.encoder = m, .encoder_rank = from, .language_rank = Leader(plan.language(), l, 0)});
  }
}

void SortLinks(std::vector<BridgeLink>& links) {
  std::sort(links.begin(), links.end(), [](const BridgeLink& a, const BridgeLink& b) {
    return std::tie(a.encoder, a.encoder_rank, a.language_rank) <
           std::tie(b.encoder, b.encoder_rank, b.language_rank);
  });
}

}  // namespace

std::string BridgeLinkKind(const RankPlan& plan, const BridgeLink& link) {
  return absl::StrCat("link_", plan.modules()[link.encoder].config().name, "_", link.encoder_rank,
                      "_", link.language_rank);
}

std::vector<BridgeLink> BridgeLinks(const RankPlan& plan) {
  std::vector<BridgeLink> links;
  for (size_t m = 0; m < plan.modules().size(); ++m) {
    const ModulePlan& encoder = plan.modules()[m];
    if (encoder.config().is_language) continue;
    for (int replica = 0; replica < encoder.config().dp; ++replica) {
      AppendEncoderReplicaLinks(plan, static_cast<int>(m), replica, &links);
    }
  }
  SortLinks(links);
  return links;
}

std::vector<BridgeLink> BridgeLinksOf(const RankPlan& plan, int rank) {
  std::vector<BridgeLink> mine;
  const ModulePlan& module = plan.module_of(rank);
  const ResolvedModule& c = module.config();
  const GridView& view = module.dense_view();
  // Dense view dims: (tp, cp, dp, pp).
  if (view.Coordinate(rank, 0) != 0 || view.Coordinate(rank, 1) != 0) return mine;
  const int replica = view.Coordinate(rank, 2);
  const int stage = view.Coordinate(rank, 3);
  if (!c.is_language) {
    if (stage != c.pp - 1) return mine;
    AppendEncoderReplicaLinks(plan, plan.rank(rank).module, replica, &mine);
  } else {
    if (stage != 0) return mine;
    for (size_t m = 0; m < plan.modules().size(); ++m) {
      const ResolvedModule& e = plan.modules()[m].config();
      if (e.is_language) continue;
      // The encoder replicas whose samples this language replica takes.
      const int first = e.dp >= c.dp ? replica * (e.dp / c.dp) : replica / (c.dp / e.dp);
      const int last = e.dp >= c.dp ? first + e.dp / c.dp : first + 1;
      for (int r = first; r < last; ++r) {
        mine.push_back({.encoder = static_cast<int>(m),
                        .encoder_rank = Leader(plan.modules()[m], r, e.pp - 1),
                        .language_rank = rank});
      }
    }
  }
  SortLinks(mine);
  return mine;
}

}  // namespace mimo::parallel
