// A parameter set's fp32 gradients in one contiguous buffer cut into buckets (Megatron's DDP grad
// buffer): every parameter's grad() is a view of its place, so a bucket is summed over the
// data-parallel group with one in-place collective and no copies.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "mimo/parameter.h"

namespace mimo {

// Consecutive `params` grouped into buckets in order: a parameter joins the current bucket unless
// that would pass bucket_elements (> 0); a parameter larger than that makes a bucket of its own.
std::vector<std::vector<Parameter*>> PlanBuckets(const std::vector<Parameter*>& params,
                                                 int64_t bucket_elements);

// One bucket: its parameters' gradients in order, each starting at a multiple of
// GradientBuffer::kAlignElements (zeros between), then zeros up to `padded`.
struct GradientBucket {
  std::vector<Parameter*> params;  // In the order given to GradientBuffer::Create.
  std::vector<int64_t> offsets;    // Of each parameter's first element, within the bucket.
  int64_t begin = 0;               // Of the bucket's first element, within the buffer.
  // Elements, a multiple of the buffer's pad_multiple and of kAlignElements.
  int64_t padded = 0;
};

class GradientBuffer {
 public:
  // Megatron-LM's default DDP bucket: 40M elements.
  static constexpr int64_t kDefaultBucketElements = 40'000'000;
  // Every gradient starts 256-byte aligned, as the GEMMs that write it want (16 bytes at least).
  static constexpr int64_t kAlignElements = 64;

  // Buckets planned by PlanBuckets over `params` (not owned; they outlive the buffer) in the
  // order given -- the order the backward finishes them, for the reductions to start early --
  // each padded to a multiple of `pad_multiple` (the group's size, so that a reduce-scatter can
  // split it) and of kAlignElements. The buffer is allocated from `ops`, zeroed, and every
  // parameter's gradient moved into it (Parameter::MoveGradTo). The padding stays zero: nothing
  // writes it. InvalidArgument for bucket_elements or pad_multiple < 1, or a parameter given twice.
  static absl::StatusOr<std::unique_ptr<GradientBuffer>> Create(
      kernels::Ops& ops, std::vector<Parameter*> params,
      int64_t bucket_elements = kDefaultBucketElements, int pad_multiple = 1);

  const std::vector<GradientBucket>& buckets() const { return buckets_; }
  // The bucket's elements (padded of them) in the buffer.
  float* data(const GradientBucket& bucket) const { return buffer_.data<float>() + bucket.begin; }
  // Every bucket, padding included: (total,) fp32.
  const kernels::Tensor& tensor() const { return buffer_; }

  // Before a step: where every parameter's backward writes its gradient whole, marks them stale
  // (Parameter::ResetGrad) and leaves the buffer as it is (the padding stays zero: nothing
  // writes it); else every gradient and the padding set to zero with one memset.
  absl::Status Reset(kernels::Ops& ops) const;
  // Every bucket summed over `group` in place (null or one member: nothing to do): one
  // all-reduce per bucket, after waiting for the ops' stream. Collective over the group.
  absl::Status AllReduce(kernels::Ops& ops, comm::Communicator* group) const;
  // Bucket `index` summed over `group` in place; the work that wrote it must be done.
  absl::Status AllReduceBucket(size_t index, comm::Communicator* group) const;

 private:
  GradientBuffer(std::vector<GradientBucket> buckets, kernels::Tensor buffer)
      : buckets_(std::move(buckets)), buffer_(std::move(buffer)) {}

  std::vector<GradientBucket> buckets_;
  kernels::Tensor buffer_;  // (sum of the buckets' padded,) fp32
};

}  // namespace mimo
