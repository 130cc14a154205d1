// The interface of trainable blocks (norms, attention, MLPs, transformer layers): the forward
// saves what the backward needs; the backward adds the parameters' gradients (or writes those
// marked stale, Parameter::ResetGrad) and returns the input's.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "mimo/packed_sequences.h"
#include "mimo/parameter.h"
#include "parallel/rng_seeds.h"

namespace mimo {

// The auxiliary losses a block reports for a micro-batch (MoE: load balancing and z-loss), as a
// (2,) fp32 tensor on the device, already multiplied by their coefficients.
struct AuxLossRecord {
  int layer_number = 0;
  bool mtp = false;        // From a multi-token-prediction layer (BuildContext::mtp_layer).
  kernels::Tensor losses;  // (2,) fp32: [load balancing, z]
};

// One MoE layer's routing of a micro-batch (its forward's choices), kept when the step asks
// (StepContext::routing): for comparisons with a reference implementation, whose own choices can
// differ on near ties and would otherwise send the runs apart.
struct RoutingRecord {
  int layer_number = 0;
  bool mtp = false;
  kernels::Tensor indices;     // (T, k) int32: the chosen experts, best first.
  kernels::Tensor dispatched;  // (T, k) int32: where the pairs go (-1: dropped under a capacity,
                               // or a padding row's).
};

// Told by the backward as it finishes parameters' gradients for the step, so that their
// reduction over the replicas can start while the backward goes on (mimo/gradient_sync.h).
class GradientReadyHook {
 public:
  virtual ~GradientReadyHook() = default;
  // The backward will not write these parameters' gradients again this step. Parameters the
  // hook does not reduce are ignored.
  virtual absl::Status Ready(const std::vector<Parameter*>& params) = 0;
};

// What one micro-batch's forward and backward run with. Backward gets the context its forward
// had.
struct StepContext {
  kernels::Ops* ops = nullptr;
  const PackedSequences* sequences = nullptr;
  // Hidden dropout's random stream: the rank's seed of `dropout_kind` (parallel/rng_seeds.h) and
  // the elements of each block's substream used before this micro-batch; the caller advances
  // it by at least tokens * hidden_size per micro-batch so no two micro-batches share a mask.
  uint64_t dropout_seed = 0;
  parallel::RngStreamKind dropout_kind = parallel::RngStreamKind::kDataParallel;
  uint64_t dropout_offset = 0;
  // d(the step's objective)/d(this micro-batch's loss), e.g. 1 / micro-batches: auxiliary losses'
  // gradients are scaled by it, as the main loss's are (Megatron's MoEAuxLossAutoScaler).
  float loss_scale = 1.0f;
  // Where forwards append the auxiliary losses they compute (none are kept when null).
  std::vector<AuxLossRecord>* aux_losses = nullptr;
  // Where MoE forwards append their routing (none is kept when null).
  std::vector<RoutingRecord>* routing = nullptr;
  // The micro-batch's last rows that only pad it to equal row blocks (sequence parallelism: a
  // sequence of their own, without labels): blocks keep no statistics of them (the MoE layer
  // routes them but leaves them out of its expert load and auxiliary losses).
  int64_t padding_rows = 0;
  // False for evaluation forwards: blocks keep no training statistics (the MoE layer counts no
  // expert load), as Megatron counts only with gradients enabled.
  bool training = true;
  // Set for the step's last backward only: the modules report each block once its backward is
  // done (ReportGradientsReady). Null: nothing to report.
  GradientReadyHook* gradients_ready = nullptr;
};

// What a block's forward keeps for its backward; each block derives its own.
class SavedActivations {
 public:
  virtual ~SavedActivations() = default;
};

struct BlockOutput {
  kernels::Tensor y;
  std::unique_ptr<SavedActivations> saved;
};

class Block {
 public:
  virtual ~Block() = default;
  // y = f(x) over x (tokens, features) in the model's compute dtype, contiguous. The saved
  // activations may hold x itself: its contents must not change before the Backward.
  virtual absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const kernels::Tensor& x) = 0;
  // dx from dy (y's shape) and what this block's Forward saved (consumed, so its memory goes as
  // soon as the backward is done with it); adds the gradients of the block's parameters to
  // their grad tensors (writes a stale one whole: Parameter::TakeStaleGrad). InvalidArgument
  // when `saved` came from another kind of block.
  virtual absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                                   std::unique_ptr<SavedActivations> saved,
                                                   const kernels::Tensor& dy) = 0;
  // The block's parameters (and its sub-blocks'), appended in a fixed order.
  virtual void AppendParameters(std::vector<Parameter*>& out) const = 0;
};

// `saved` as the block's own type, or InvalidArgument naming `block`.
template <typename T>
absl::StatusOr<std::unique_ptr<T>> SavedAs(std::unique_ptr<SavedActivations> saved,
                                           const char* block) {
  T* typed = dynamic_cast<T*>(saved.get());
  if (typed == nullptr) {
    return absl::InvalidArgumentError(std::string(block) +
                                      ": Backward got activations saved by another kind of block");
  }
  saved.release();
  return std::unique_ptr<T>(typed);
}

// Tells ctx.gradients_ready, if any, that the backward is done with these gradients.
inline absl::Status ReportGradientsReady(const StepContext& ctx,
                                         const std::vector<Parameter*>& params) {
  if (ctx.gradients_ready == nullptr) return absl::OkStatus();
  return ctx.gradients_ready->Ready(params);
}
// The same for every parameter of `block`.
template <typename B>
absl::Status ReportGradientsReady(const StepContext& ctx, const B& block) {
  if (ctx.gradients_ready == nullptr) return absl::OkStatus();
  std::vector<Parameter*> params;
  block.AppendParameters(params);
  return ctx.gradients_ready->Ready(params);
}

// A new contiguous tensor on `ctx`'s device for work on its stream.
inline absl::StatusOr<kernels::Tensor> NewTensor(const StepContext& ctx,
                                                 const kernels::Shape& shape,
                                                 kernels::DType dtype) {
  return kernels::Tensor::Empty(shape, dtype, ctx.ops->allocator(), ctx.ops->stream());
}

}  // namespace mimo
