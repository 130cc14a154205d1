// RankPlanToProto, RankToProto, ModulesToProto: the plan's modules, coordinates, seeds and groups.
#include "coordinator/plan_proto.h"

#include <string>

#include "absl/types/span.h"
#include "parallel/bridge.h"

namespace mimo::coordinator {
namespace {

void CoordsToProto(const parallel::DenseCoords& c, v1::DenseCoordinates* out) {
  out->set_tp(c.tp);
  out->set_cp(c.cp);
  out->set_dp(c.dp);
  out->set_pp(c.pp);
}

}  // namespace

v1::RankAssignment RankToProto(const parallel::RankPlan& plan, int rank, GroupMembers groups) {
  const parallel::RankAssignment& a = plan.rank(rank);
  const parallel::ModulePlan& mp = plan.modules()[a.module];
  v1::RankAssignment out;
  out.set_rank(rank);
  out.set_module(mp.config().name);
  CoordsToProto(a.dense, out.mutable_dense());
  if (a.expert) {
    v1::ExpertCoordinates* e = out.mutable_expert();
    e->set_expt_tp(a.expert->expt_tp);
    e->set_ep(a.expert->ep);
    e->set_expt_dp(a.expert->expt_dp);
    e->set_pp(a.expert->pp);
  }
  v1::RankSeeds* seeds = out.mutable_seeds();
  seeds->set_base(a.seeds.base);
  seeds->set_tensor_parallel(a.seeds.tensor_parallel);
  seeds->set_data_parallel(a.seeds.data_parallel);
  if (a.seeds.expert) seeds->set_expert(*a.seeds.expert);
  if (groups == GroupMembers::kOmit) return out;
  auto& out_groups = *out.mutable_groups();
  for (int k = 0; k < parallel::kNumGroupKinds; ++k) {
    const auto kind = static_cast<parallel::GroupKind>(k);
    if (parallel::IsExpertGroup(kind) && !a.expert) continue;
    const absl::Span<const int> members = mp.Group(rank, kind);
    v1::RankGroup& group = out_groups[std::string(parallel::GroupKindName(kind))];
    group.mutable_ranks()->Add(members.begin(), members.end());
  }
  for (const parallel::BridgeLink& link : parallel::BridgeLinksOf(plan, rank)) {
    v1::RankLink* l = out.add_links();
    l->set_kind(parallel::BridgeLinkKind(plan, link));
    l->set_encoder(plan.modules()[link.encoder].config().name);
    l->set_encoder_rank(link.encoder_rank);
    l->set_language_rank(link.language_rank);
    // Dense view dims: (tp, cp, dp, pp).
    l->set_encoder_replica(
        plan.module_of(link.encoder_rank).dense_view().Coordinate(link.encoder_rank, 2));
    l->set_encoder_dp(plan.modules()[link.encoder].config().dp);
    l->set_language_replica(plan.language().dense_view().Coordinate(link.language_rank, 2));
    l->set_language_dp(plan.language().config().dp);
  }
  return out;
}

void ModulesToProto(const parallel::RankPlan& plan,
                    google::protobuf::RepeatedPtrField<v1::ModulePlan>* modules) {
  modules->Clear();
  for (const parallel::ModulePlan& mp : plan.modules()) {
    const parallel::ResolvedModule& m = mp.config();
    v1::ModulePlan* p = modules->Add();
    p->set_name(m.name);
    p->set_language(m.is_language);
    p->set_tp(m.tp);
    p->set_cp(m.cp);
    p->set_pp(m.pp);
    p->set_dp(m.dp);
    p->set_ep(m.ep);
    p->set_etp(m.etp);
    p->set_vpp(m.vpp);
    if (m.is_language) p->set_expt_dp(m.expt_dp());  // Encoders have no expert view.
    p->set_rank_offset(m.rank_offset);
    p->set_rank_count(m.size());
  }
}

v1::RankPlan RankPlanToProto(const parallel::RankPlan& plan, GroupMembers groups) {
  v1::RankPlan out;
  out.set_world_size(plan.world_size());
  out.set_seed(plan.seed());
  ModulesToProto(plan, out.mutable_modules());
  out.mutable_ranks()->Reserve(plan.world_size());
  for (int r = 0; r < plan.world_size(); ++r) *out.add_ranks() = RankToProto(plan, r, groups);
  return out;
}

}  // namespace mimo::coordinator
