// The optimizer step of a rank's parameters: the learning-rate schedule (linear warm-up, cosine
// decay), global gradient-norm clipping, and AdamW on the fp32 master weights with the compute
// dtype's weights written alongside (Megatron's mixed-precision optimizer).
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
#include "mimo/parameter.h"

namespace mimo {

struct OptimizerConfig {
  float lr = 3e-4f;            // Peak learning rate, > 0.
  float min_lr = 0.0f;         // End of the cosine decay, in [0, lr].
  float weight_decay = 0.01f;  // Decoupled, on parameters whose spec asks for it; >= 0.
  float beta1 = 0.9f;          // In [0, 1).
  float beta2 = 0.999f;        // In [0, 1).
  float eps = 1e-8f;           // > 0.
  // Gradients are scaled by min(1, clip_grad / (norm + 1e-6)), norm the L2 norm over every
  // parameter; 0 disables clipping. >= 0.
  float clip_grad = 1.0f;
  // Updates 1..warmup_steps ramp the rate linearly to lr; the next decay_steps follow a cosine
  // from lr to min_lr, which holds after them (decay_steps 0: lr holds). Both >= 0.
  int64_t warmup_steps = 0;
  int64_t decay_steps = 0;
};

// InvalidArgument naming the field at fault.
absl::Status ValidateOptimizerConfig(const OptimizerConfig& config);

// The learning rate of update `step` (1 for the first).
double LearningRate(const OptimizerConfig& config, int64_t step);

struct OptimizerStepStats {
  int64_t step = 0;      // This update's number (1 for the first).
  double lr = 0;         // Its learning rate.
  double grad_norm = 0;  // The global L2 norm of the gradients, before clipping.
  bool skipped = false;  // A non-finite norm: no parameter changed (Megatron's skipped iter).
};

// The update after `steps` others given the model's squared gradient norm: its number, rate and
// norm, skipped on a non-finite norm; `grad_scale` is set to the clip factor the gradients take
// (1: no clipping).
OptimizerStepStats PlanUpdate(const OptimizerConfig& config, int64_t steps, double squared_norm,
                              float& grad_scale);

// Parameters that hold different parts of the model on the members of their norm groups (a
// rank's own experts over ep and expt_tp; a tp member's slices over tp): their squared gradient
// norms are summed over each group in turn (null entries skipped), so that together the groups
// count every part once.
struct NormShardedParameters {
  std::vector<Parameter*> params;
  std::vector<comm::Communicator*> norm_groups;  // Not owned.
  // False: updated, but left out of the norm (copies of parameters another rank counts: the
  // last pipeline stage's copy of shared word embeddings).
  bool in_norm = true;
};

class AdamWOptimizer {
 public:
  // Moments (fp32, zero) for each of `params` and the `sharded` sets' (not owned; they outlive
  // the optimizer). `params` are the same on every rank that holds them.
  static absl::StatusOr<std::unique_ptr<AdamWOptimizer>> Create(
      kernels::Ops& ops, const OptimizerConfig& config, std::vector<Parameter*> params,
      std::vector<NormShardedParameters> sharded = {});

  // One update from the parameters' gradients (every member of the sharded sets' norm groups
  // must call Step together). Waits for the device for the norm (and before each norm group's
  // all-reduce). Same as
  // Apply(ops, SquaredGradNorm(ops)).
  absl::StatusOr<OptimizerStepStats> Step(kernels::Ops& ops);
  // The squared L2 norm of this rank's part of the model's gradients, as Step counts it: the
  // replicated parameters' squares once, each sharded set's summed over its norm groups.
  absl::StatusOr<float> SquaredGradNorm(kernels::Ops& ops);
  // The update with the whole model's squared gradient norm given (this rank's part plus the
  // other ranks' parts: modules on their own ranks): clipping and the skip on a non-finite norm
  // follow it, so every rank given the same value takes the same decision.
  absl::StatusOr<OptimizerStepStats> Apply(kernels::Ops& ops, double squared_norm);
  int64_t steps() const { return steps_; }
  // A restored run's count of updates: the learning-rate schedule and Adam's bias correction go
  // on from it.
  void set_steps(int64_t steps) { steps_ = steps; }
  // The state a checkpoint keeps: each parameter's first and second moments (fp32, its shape),
  // named "<parameter name>.exp_avg" and ".exp_avg_sq" (PyTorch's names), in a fixed order.
  // Views of the optimizer's own tensors: writing them restores the state.
  std::vector<std::pair<std::string, kernels::Tensor>> StateTensors() const;

 private:
  struct State {
    Parameter* param;
    kernels::Tensor m, v;  // fp32, the parameter's shape.
  };
  // The squared norms of one set of parameters: one slot each, ones to sum them with, the sum
  // (separate tensors: cuBLASLt wants every GEMM operand 16-byte aligned).
  struct Squares {
    std::vector<State> state;
    kernels::Tensor squares;  // (params,) fp32
    kernels::Tensor ones;     // (params,) fp32
    kernels::Tensor total;    // (1,) fp32
  };
  static absl::StatusOr<Squares> NewSquares(kernels::Ops& ops, std::vector<Parameter*> params);
  // Enqueues the sum of the set's squared gradient norms into its total.
  static absl::Status SumSquares(kernels::Ops& ops, const Squares& set);

  struct ShardedSquares {
    Squares squares;
    std::vector<comm::Communicator*> norm_groups;
    bool in_norm = true;
  };

  AdamWOptimizer(const OptimizerConfig& config, Squares replicated,
                 std::vector<ShardedSquares> sharded)
      : config_(config), replicated_(std::move(replicated)), sharded_(std::move(sharded)) {}

  const OptimizerConfig config_;
  Squares replicated_;
  std::vector<ShardedSquares> sharded_;
  int64_t steps_ = 0;
};

}  // namespace mimo
