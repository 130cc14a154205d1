// Megatron's distributed optimizer (--use-distributed-optimizer, ZeRO stage 1): the gradients are
// reduce-scattered over the data-parallel group in buckets, each rank keeps the fp32 master
// weights and AdamW moments of its 1/dp of every bucket only, updates them, and the new weights
// are all-gathered in the compute dtype. The same updates as mimo/optimizer.h's AdamWOptimizer
// after a gradient all-reduce, with the optimizer state's memory divided by dp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "mimo/gradient_buffer.h"
#include "mimo/optimizer.h"
#include "mimo/parameter.h"

namespace mimo {

// Parameters that share a data-parallel group: each set is sharded over its own group.
struct ShardedParameterSet {
  // Not owned; they outlive the optimizer. Replicas hold the same values on every member of dp.
  std::vector<Parameter*> params;
  // The ranks holding replicas of `params` (null or one member: this rank alone, no sharding);
  // the gradients are summed over it.
  comm::Communicator* dp = nullptr;
  // Groups whose members hold different slices of `params` (the routed experts over ep and
  // expt_tp): the squared gradient norms are summed over each in turn. Null entries are skipped.
  std::vector<comm::Communicator*> norm_groups;
  // False: updated, but left out of SquaredGradNorm (copies of parameters another rank counts:
  // the last pipeline stage's copy of shared word embeddings).
  bool in_norm = true;
};

class DistributedOptimizer {
 public:
  // Lays each set's gradients out in a GradientBuffer (mimo/gradient_buffer.h: buckets planned
  // with `bucket_elements` over the parameters in the order given -- the order the backward
  // finishes them -- each padded to a multiple of its group's size), copies this rank's shard
  // of the masters and releases the parameters' own masters (Parameter::ReleaseMaster: bf16
  // weights). Every member of each set's dp must create it with the same parameters in the same
  // order, and the members of a set's norm groups must all have parameters in it or all none. A
  // parameter may be in one set once.
  static absl::StatusOr<std::unique_ptr<DistributedOptimizer>> Create(
      kernels::Ops& ops, const OptimizerConfig& config, std::vector<ShardedParameterSet> sets,
      int64_t bucket_elements = GradientBuffer::kDefaultBucketElements);

  // The gradients (Parameter::grad, after the backward) summed over each set's dp, this rank
  // keeping its shard: ReduceScatterBucket for every bucket of every set, in order, after
  // waiting for the ops' stream. Collective over every set's dp.
  absl::Status ReduceScatterGradients(kernels::Ops& ops);
  // The sets' gradient buffers, for a caller that starts the buckets' reductions itself
  // (mimo/gradient_sync.h, during the backward).
  int num_sets() const { return static_cast<int>(sets_.size()); }
  const GradientBuffer& gradients(int set) const { return *sets_.at(set).grads; }
  // (shard,) fp32: this rank's shard of the set's summed gradients once every bucket of it has
  // been reduce-scattered (the buffer itself when dp has one member).
  const kernels::Tensor& gradient_shard(int set) const { return sets_.at(set).grad; }
  // Bucket `bucket` of set `set` reduce-scattered over the set's dp into this rank's shard; the
  // work that wrote the bucket must be done. Collective over the set's dp.
  absl::Status ReduceScatterBucket(int set, size_t bucket);
  // The squared L2 norm of every set's summed gradients, whole: the shards' squares summed over
  // dp, then over the set's norm groups. The same value on every member.
  absl::StatusOr<float> SquaredGradNorm(kernels::Ops& ops);
  // The update given the whole model's squared gradient norm (as AdamWOptimizer::Apply): this
  // rank's shards stepped, then every parameter's weight all-gathered over dp.
  absl::StatusOr<OptimizerStepStats> Apply(kernels::Ops& ops, double squared_norm);

  int64_t steps() const { return steps_; }
  // A restored run's count of updates (as AdamWOptimizer::set_steps).
  void set_steps(int64_t steps) { steps_ = steps; }
  // The state a checkpoint keeps of this rank, by parameter: each piece of a parameter inside
  // this rank's shards (a
  // parameter has at most one), as elements [param_offset, param_offset + elements) of its
  // row-major tensor, with views of the masters and moments there ((elements,) fp32 each). What
  // checkpoints keep, so that any layout reads them (worker/trainer_state.cc).
  struct StatePiece {
    Parameter* param = nullptr;
    int64_t param_offset = 0;
    int64_t elements = 0;
    kernels::Tensor master, exp_avg, exp_avg_sq;
    kernels::DType weight_dtype = kernels::DType::kF32;  // bf16: the master is its own state.
  };
  absl::StatusOr<std::vector<StatePiece>> StatePieces() const;
  // Elements of the optimizer state this rank keeps per kind (masters, first and second
  // moments): its shards, padding included.
  int64_t shard_elements() const;

 private:
  // A piece of one parameter inside this rank's shard of a bucket.
  struct Piece {
    Parameter* param;
    int64_t param_offset;  // Of its first element in the parameter.
    int64_t shard_offset;  // In the set's shard buffers.
    int64_t elements;
  };
  // Per bucket of the set's gradient buffer.
  struct Shard {
    int64_t offset = 0;  // Of this rank's shard of the bucket in the set's shard buffers.
    // The bucket is one parameter whose size the group divides: its weight is all-gathered
    // directly, never staged.
    bool direct = false;
  };
  struct Set {
    comm::Communicator* dp = nullptr;
    std::vector<comm::Communicator*> norm_groups;
    bool in_norm = true;
    std::unique_ptr<GradientBuffer> grads;
    std::vector<Shard> shards;  // One per bucket of grads.
    std::vector<Piece> pieces;
    kernels::DType dtype = kernels::DType::kF32;  // The weights' (one per set).
    // (shard,) fp32: the grad is grads' own buffer when dp has one member.
    kernels::Tensor master, m, v, grad;
    kernels::Tensor weight;   // (shard,) dtype: the updated weights to gather; master when fp32.
    kernels::Tensor squares;  // (1,) fp32
  };
  DistributedOptimizer(const OptimizerConfig& config, std::vector<Set> sets,
                       kernels::Tensor staging)
      : config_(config), sets_(std::move(sets)), staging_(std::move(staging)) {}

  const OptimizerConfig config_;
  std::vector<Set> sets_;
  // (largest staged bucket,) fp32, big enough for a bucket's gathered weights in any dtype.
  kernels::Tensor staging_;
  int64_t steps_ = 0;
};

}  // namespace mimo
