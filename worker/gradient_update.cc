// CreateGradientUpdate: the optimizers, the gradient buffers and the bucket order.
#include "worker/gradient_update.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "common/status_macros.h"
#include "mimo/model_groups.h"

namespace mimo::worker {

absl::StatusOr<GradientUpdate> CreateGradientUpdate(kernels::Ops& ops,
                                                    const GradientUpdateOptions& o) {
  GradientUpdate u;
  absl::flat_hash_map<const Parameter*, int64_t> turn_of;
  for (size_t i = 0; i < o.backward_order.size(); ++i) {
    turn_of[o.backward_order[i]] = static_cast<int64_t>(i);
  }
  // The distributed optimizer shards the sets that have replicas; on a set without (dp or
  // expt_dp of one rank) its shards would only copy the state, so AdamW updates it in place.
  const bool shard_dense = o.distributed_optimizer && ModelGroups::Size(o.dp) > 1;
  const bool shard_experts = o.distributed_optimizer && ModelGroups::Size(o.expt_dp) > 1;
  // The dense parameters split over tp (their specs have shards) and the whole ones: the slices'
  // squared norms are summed over tp, the whole parameters' counted once.
  // Parameters shared with other ranks' copies go in a set of their own (the same layout on
  // every rank holding a copy).
  const absl::flat_hash_set<const Parameter*> shared(o.shared.begin(), o.shared.end());
  std::vector<Parameter*> whole, slices, copies;
  for (Parameter* p : o.dense) {
    if (shared.contains(p)) {
      copies.push_back(p);
    } else {
      (p->spec().shards.empty() ? whole : slices).push_back(p);
    }
  }
  std::vector<comm::Communicator*> copies_norm_groups;
  if (!copies.empty() && !copies[0]->spec().shards.empty()) copies_norm_groups = {o.tp};
  std::vector<ShardedParameterSet> sharded;
  if (shard_dense) {
    if (!whole.empty()) sharded.push_back({.params = whole, .dp = o.dp});
    if (!slices.empty()) sharded.push_back({.params = slices, .dp = o.dp, .norm_groups = {o.tp}});
    if (!copies.empty()) {
      u.shared_set = static_cast<int>(sharded.size());
      sharded.push_back({.params = copies,
                         .dp = o.dp,
                         .norm_groups = copies_norm_groups,
                         .in_norm = o.shared_in_norm});
    }
  }
  if (shard_experts) {
    sharded.push_back({.params = o.experts, .dp = o.expt_dp, .norm_groups = o.expert_norm_groups});
  }
  if (!sharded.empty()) {
    MIMO_ASSIGN_OR_RETURN(
        u.distributed,
        DistributedOptimizer::Create(ops, o.optimizer, std::move(sharded), o.bucket_elements));
  }
  const std::vector<Parameter*> plain_dense = shard_dense ? std::vector<Parameter*>{} : o.dense;
  const std::vector<Parameter*> plain_experts =
      shard_experts ? std::vector<Parameter*>{} : o.experts;
  // AdamW's sharded sets: the routed experts and the tp slices, each with its norm groups.
  std::vector<NormShardedParameters> adamw_sharded;
  if (!plain_experts.empty()) {
    adamw_sharded.push_back({.params = plain_experts, .norm_groups = o.expert_norm_groups});
  }
  if (!shard_dense && !slices.empty()) {
    adamw_sharded.push_back({.params = slices, .norm_groups = {o.tp}});
  }
  if (!shard_dense && !copies.empty()) {
    adamw_sharded.push_back(
        {.params = copies, .norm_groups = copies_norm_groups, .in_norm = o.shared_in_norm});
  }
  MIMO_ASSIGN_OR_RETURN(
      u.adamw,
      AdamWOptimizer::Create(ops, o.optimizer, shard_dense ? std::vector<Parameter*>{} : whole,
                             std::move(adamw_sharded)));
  // The gradients of every set with replicas in buckets, each bucket's collective started in
  // the order the backward finishes them: a bucket's turn comes when its last parameter's does.
  struct Planned {
    int64_t turn;
    GradientSync::Bucket bucket;
  };
  std::vector<Planned> planned;
  auto plan = [&](const GradientBuffer& grads, auto collective) {
    for (size_t i = 0; i < grads.buckets().size(); ++i) {
      const GradientBucket& b = grads.buckets()[i];
      int64_t turn = 0;
      for (const Parameter* p : b.params) turn = std::max(turn, turn_of.at(p));
      planned.push_back(
          {turn, {.params = b.params, .collective = [collective, i] { return collective(i); }}});
    }
  };
  if (u.distributed != nullptr) {
    for (int set = 0; set < u.distributed->num_sets(); ++set) {
      DistributedOptimizer* opt = u.distributed.get();
      plan(opt->gradients(set), [opt, set](size_t i) { return opt->ReduceScatterBucket(set, i); });
    }
  }
  if (!plain_dense.empty() && ModelGroups::Size(o.dp) > 1) {
    MIMO_ASSIGN_OR_RETURN(u.dense_grads,
                          GradientBuffer::Create(ops, plain_dense, o.bucket_elements));
    const GradientBuffer* grads = u.dense_grads.get();
    plan(*grads, [grads, dp = o.dp](size_t i) { return grads->AllReduceBucket(i, dp); });
  }
  if (!plain_experts.empty() && ModelGroups::Size(o.expt_dp) > 1) {
    MIMO_ASSIGN_OR_RETURN(u.expert_grads,
                          GradientBuffer::Create(ops, plain_experts, o.bucket_elements));
    const GradientBuffer* grads = u.expert_grads.get();
    plan(*grads,
         [grads, expt_dp = o.expt_dp](size_t i) { return grads->AllReduceBucket(i, expt_dp); });
  }
  // Gradients reset a buffer at a time where they live in one.
  absl::flat_hash_set<const Parameter*> buffered;
  if (u.distributed != nullptr) {
    for (int set = 0; set < u.distributed->num_sets(); ++set) {
      u.buffers.push_back(&u.distributed->gradients(set));
    }
  }
  for (const GradientBuffer* g : {u.dense_grads.get(), u.expert_grads.get()}) {
    if (g != nullptr) u.buffers.push_back(g);
  }
  for (const GradientBuffer* g : u.buffers) {
    for (const GradientBucket& b : g->buckets()) buffered.insert(b.params.begin(), b.params.end());
  }
  for (const auto* set : {&o.dense, &o.experts}) {
    for (Parameter* p : *set) {
      if (!buffered.contains(p)) u.unbuffered.push_back(p);
    }
  }
  if (!planned.empty()) {
    std::stable_sort(planned.begin(), planned.end(),
                     [](const Planned& a, const Planned& b) { return a.turn < b.turn; });
    std::vector<GradientSync::Bucket> buckets;
    for (Planned& p : planned) buckets.push_back(std::move(p.bucket));
    MIMO_ASSIGN_OR_RETURN(u.sync, GradientSync::Create(ops, std::move(buckets)));
  }
  return u;
}

}  // namespace mimo::worker
