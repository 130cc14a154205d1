// Gradients summed over a data-parallel group in buckets: consecutive parameters' fp32 gradients
// packed into one buffer of about `bucket_elements` and reduced with one collective, instead of
// one collective per parameter (Megatron's DDP buckets, without the overlap with the backward).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "kernels/ops.h"
#include "mimo/parameter.h"

namespace mimo {

// Consecutive `params` grouped into buckets in order: a parameter joins the current bucket unless
// that would pass bucket_elements (> 0); a parameter larger than that makes a bucket of its own.
std::vector<std::vector<Parameter*>> PlanBuckets(const std::vector<Parameter*>& params,
                                                 int64_t bucket_elements);

class GradientBuckets {
 public:
  // Megatron-LM's default DDP bucket: 40M elements.
  static constexpr int64_t kDefaultBucketElements = 40'000'000;

  // Plans buckets over `params` (not owned; they outlive this), in order: a parameter joins the
  // current bucket unless that would pass bucket_elements (> 0), and a parameter larger than a
  // bucket is reduced in place on its own. The staging buffer comes from `ops`.
  static absl::StatusOr<std::unique_ptr<GradientBuckets>> Create(
      kernels::Ops& ops, std::vector<Parameter*> params,
      int64_t bucket_elements = kDefaultBucketElements);

  // Every parameter's gradient replaced by its sum over `group` (null or one member: nothing to
  // do). Waits for the ops' stream first; collective over the group.
  absl::Status AllReduce(kernels::Ops& ops, comm::Communicator* group);
  // Collectives one AllReduce makes.
  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }

 private:
  struct Bucket {
    std::vector<Parameter*> params;
    int64_t elements = 0;
    bool staged = true;  // False: one large parameter reduced in place.
  };
  GradientBuckets(std::vector<Bucket> buckets, kernels::Tensor staging)
      : buckets_(std::move(buckets)), staging_(std::move(staging)) {}

  std::vector<Bucket> buckets_;
  kernels::Tensor staging_;  // (largest staged bucket,) fp32
};

}  // namespace mimo
