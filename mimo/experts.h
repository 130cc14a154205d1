// The routed experts of a MoE layer -- each local expert's MLP over its own block of rows -- and
// the typed builders a MoeLayer makes its routed and shared experts with.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"
#include "mimo/expert_rows.h"
#include "mimo/parameter.h"

namespace mimo {

// Which of the model's experts a rank holds, and which part of their width.
struct LocalExperts {
  int64_t total = 0;  // E, over the whole EP group.
  int64_t first = 0;  // The global index of local expert 0.
  int64_t count = 0;  // El.
  int64_t ffn = 0;    // F: each expert's full width.
  // Expert tensor parallelism: each expert's width in ffn_parts (expt_tp) equal parts, of which
  // this rank holds part ffn_part (its columns of fc1's gate and up rows, and of fc2).
  int64_t ffn_parts = 1;
  int64_t ffn_part = 0;
  int64_t local_ffn() const { return ffn / ffn_parts; }
};

class Experts {
 public:
  virtual ~Experts() = default;
  // x (R, C) in the compute dtype: local expert i's rows are [offsets[i], offsets[i + 1]) (rows
  // past offsets[El] ignored). Returns h (R, C) with each row the MLP of its expert over the same
  // row of x (rows past offsets[El] unset).
  virtual absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const kernels::Tensor& x,
                                              const ExpertRowOffsets& offsets) = 0;
  // dh (R, C) -> dx (R, C) (rows past offsets[El] unset); adds the experts' weight gradients,
  // or writes every local expert's (zero for one without rows) where they are stale
  // (Parameter::ResetGrad: the step's first backward).
  virtual absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                                   std::unique_ptr<SavedActivations> saved,
                                                   const kernels::Tensor& dh) = 0;
  virtual void AppendParameters(std::vector<Parameter*>& out) const = 0;
  // Whether Forward reads offsets.host. Experts that read only offsets.device make no host
  // synchronization, so a CUDA graph can capture them.
  virtual bool needs_host_offsets() const = 0;
};

// Makes a MoE layer's routed experts; ctx.prefix is the experts' ("...mlp.experts").
class ExpertsBuilder {
 public:
  virtual ~ExpertsBuilder() = default;
  virtual absl::StatusOr<std::unique_ptr<Experts>> Build(const BuildContext& ctx,
                                                         const LocalExperts& experts) const = 0;
};

// Makes a MoE layer's shared experts: a Block from (T, C) to (T, C) applied to every token;
// ctx.prefix is theirs ("...mlp.shared_experts"), `ffn` their total width.
class SharedExpertsBuilder {
 public:
  virtual ~SharedExpertsBuilder() = default;
  virtual absl::StatusOr<std::unique_ptr<Block>> Build(const BuildContext& ctx,
                                                       int64_t ffn) const = 0;
};

// Experts as Megatron's SequentialMLP: one (E-sliced) weight tensor per projection, one GEMM per
// expert with rows, launched from the host (which needs the offsets there) as one batch per
// projection and direction (Ops::GemmBatch: on a GPU experts of equal padded row counts share one
// batched product, and the products run side by side on several streams).
// Parameters (Fl = F / ffn_parts, Fl1 = 2Fl for SwiGLU else Fl, no biases): linear_fc1.weight (El,
// Fl1, C); linear_fc2.weight (El, C, Fl) with std init_std / sqrt(2 * num_layers); each the experts
// [first, first + El) and this rank's part of the width of the full (E, F1, C) and (E, C, F)
// tensors. With ffn_parts > 1 the outputs are partial sums the caller reduces over the expt_tp
// group.
class SequentialExpertsBuilder final : public ExpertsBuilder {
 public:
  absl::StatusOr<std::unique_ptr<Experts>> Build(const BuildContext& ctx,
                                                 const LocalExperts& experts) const override;
};

// Experts as Megatron's GroupedMLP, with SequentialExpertsBuilder's parameters (the same names,
// shapes and initial values, so checkpoints move between the two): each projection one grouped
// GEMM over all local experts that reads their row offsets on the device
// (kernels::GroupedGemmParams), the activation over the whole buffer. No host synchronization:
// what a MoE layer in a CUDA graph needs. On a GPU the forward and input-gradient products run as
// cuBLASLt row tiles inside each expert, the weight gradients on mimo's grouped kernel (wgmma on
// Hopper, else mma.sync); bench/RESULTS.md compares them with cuBLASLt's per-expert GEMMs.
class GroupedExpertsBuilder final : public ExpertsBuilder {
 public:
  absl::StatusOr<std::unique_ptr<Experts>> Build(const BuildContext& ctx,
                                                 const LocalExperts& experts) const override;
};

// Shared experts as a DenseMlp of width `ffn` (the transformer's activation and biases).
class DenseSharedExpertsBuilder final : public SharedExpertsBuilder {
 public:
  absl::StatusOr<std::unique_ptr<Block>> Build(const BuildContext& ctx, int64_t ffn) const override;
};

}  // namespace mimo
