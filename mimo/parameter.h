// Trainable parameters: the weight ops read (bf16 or fp32), its fp32 master copy and fp32
// gradient, initialized from the job seed independently of the layout.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace mimo {

// How a parameter's initial values are drawn.
enum class InitKind {
  kNormal,  // N(0, std^2), like Megatron's init_method_normal.
  kOnes,    // Norm weights.
  kZeros,   // Biases.
};

// A run of consecutive indices of a full dimension: [start, start + size).
struct ShardRange {
  int64_t start = 0;
  int64_t size = 0;
};

// How the layout splits one dimension of a parameter's full tensor across ranks (routed experts
// over the EP group, an expert's width over expt_tp, a dense layer's width over tp): the full
// dimension of `full_size` is `blocks` equal consecutive blocks (2 for SwiGLU's [gate; up] rows,
// else 1), and this rank holds shape[dim] / blocks slices of each block, starting at `offset`
// within the block. Or, when `ranges` is set (blocks of unequal sizes, such as the fused
// [Q; K; V] rows split over tp), this rank holds those ranges of the full dimension, in order
// (their sizes add up to shape[dim]; offset and blocks are then unused).
struct ParameterShard {
  int dim = 0;
  int64_t offset = 0;
  int64_t full_size = 0;
  int64_t blocks = 1;
  std::vector<ShardRange> ranges;
};

// The ranges of the full dimension a shard of `local_size` indices holds, in order (`ranges`
// itself, or one per block).
std::vector<ShardRange> ShardRanges(const ParameterShard& shard, int64_t local_size);

struct ParameterSpec {
  // Unique within the model, dot-separated like Megatron's state-dict keys
  // ("decoder.layers.0.mlp.linear_fc1.weight"); it keys the initial values.
  std::string name;
  kernels::Shape shape;  // Sizes, outermost first; every size > 0.
  InitKind init = InitKind::kNormal;
  float std = 0.02f;  // Of kNormal; > 0.
  // Takes AdamW's weight decay (Megatron exempts biases and norm weights).
  bool weight_decay = true;
  // The split dimensions, each at most once; none: the parameter is whole on every rank that
  // holds it. The full tensor's shape replaces shape[dim] by full_size for each.
  std::vector<ParameterShard> shards;
};

// InvalidArgument for an empty name, a non-positive size, a non-positive std, or a shard
// outside the full tensor (or of a dimension not in the shape, or split twice).
absl::Status CheckParameterSpec(const ParameterSpec& spec);

// The initial value of every element (row-major) of `spec`'s tensor under `seed` (the job seed):
// element i of the full tensor, kNormal, is std * N(0, 1) from Box-Muller over the two 32-bit
// words 2*(i%2), 2*(i%2)+1 of Philox block i/2, keyed by a hash of (seed, name); a sharded
// parameter holds its slices of the full tensor's values. The values depend only on the seed, the
// name and the element's index in the full tensor -- not on the device or the parallel layout --
// like Megatron's --use-cpu-initialization.
std::vector<float> InitialValues(const ParameterSpec& spec, uint64_t seed);

// One parameter on one device. `weight` is what the ops read, in the model's compute dtype;
// `master` is its fp32 copy the optimizer updates (the same tensor when the compute dtype is
// fp32); `grad` is the fp32 gradient the backward passes add to (Megatron's main_grad).
class Parameter {
 public:
  // Allocates the tensors from `ops`' allocator, fills master and weight with InitialValues and
  // zeroes grad. InvalidArgument for a bad spec or a dtype other than bf16/f32.
  static absl::StatusOr<std::unique_ptr<Parameter>> Create(kernels::Ops& ops, ParameterSpec spec,
                                                           kernels::DType dtype, uint64_t seed);

  // The spec alone, checked as Create checks it, without memory or values (weight, master and
  // grad empty): what a rank of a layout holds, for tools that only need the names, shapes and
  // shards (mimo-convert). Such a parameter can be listed, never computed with.
  static absl::StatusOr<std::unique_ptr<Parameter>> Describe(ParameterSpec spec,
                                                             kernels::DType dtype);

  const ParameterSpec& spec() const { return spec_; }
  const std::string& name() const { return spec_.name; }
  int64_t numel() const { return kernels::NumElements(spec_.shape); }
  const kernels::Tensor& weight() const { return weight_; }
  const kernels::Tensor& master() const { return master_; }
  const kernels::Tensor& grad() const { return grad_; }

  // Sets grad to zero; it is no longer stale.
  absl::Status ZeroGrad(kernels::Ops& ops);
  // Before the first micro-batch of a step: marks grad stale (it still holds an earlier step's
  // values) where the backward writes it whole (set_backward_writes_whole_grad), saving the
  // memset and the first product's read of the old values; zeroes it otherwise.
  absl::Status ResetGrad(kernels::Ops& ops);
  // Declared by the block that owns the parameter when the first backward of a step writes every
  // element of grad if asked to (TakeStaleGrad): the routed experts' weights. Default false.
  void set_backward_writes_whole_grad() { backward_writes_whole_grad_ = true; }
  bool backward_writes_whole_grad() const { return backward_writes_whole_grad_; }
  // For the backward about to produce this gradient: true (once per ResetGrad) when grad is
  // stale; the caller must then write every element of it instead of adding to it.
  bool TakeStaleGrad() { return std::exchange(grad_stale_, false); }
  bool grad_stale() const { return grad_stale_; }
  // For the first reader of the step's gradients (GradientSync before a bucket's collective,
  // Trainer::Step for the others; the reductions and optimizers themselves do not check): a
  // gradient no backward wrote this step (still stale) is set to zero first.
  absl::Status ZeroGradIfStale(kernels::Ops& ops);
  // Moves grad into `storage` (fp32, numel() elements, contiguous; memory owned elsewhere that
  // outlives this parameter, such as its place in a gradient buffer): the current values are
  // copied there (enqueued on `ops`) and grad() becomes a view of it.
  absl::Status MoveGradTo(kernels::Ops& ops, kernels::Tensor storage);
  // Frees the fp32 master of a parameter whose weight has its own (bf16) tensor, for an optimizer
  // that keeps the master values itself (the distributed optimizer, each rank its shard); master()
  // holds no memory afterwards (data() null). Nothing to do when the weight is the master (fp32).
  void ReleaseMaster() {
    if (master_.data() != weight_.data()) master_ = kernels::Tensor();
  }

 private:
  Parameter(ParameterSpec spec, kernels::Tensor weight, kernels::Tensor master,
            kernels::Tensor grad)
      : spec_(std::move(spec)),
        weight_(std::move(weight)),
        master_(std::move(master)),
        grad_(std::move(grad)) {}

  ParameterSpec spec_;
  kernels::Tensor weight_;  // spec.shape, compute dtype.
  kernels::Tensor master_;  // spec.shape, fp32; empty after ReleaseMaster().
  kernels::Tensor grad_;    // spec.shape, fp32.
  bool backward_writes_whole_grad_ = false;
  bool grad_stale_ = false;  // Since ResetGrad, until TakeStaleGrad or ZeroGrad.
};

}  // namespace mimo
