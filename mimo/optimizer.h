// The optimizer step of a rank's parameters: the learning-rate schedule (linear warm-up, cosine
// decay), global gradient-norm clipping, and AdamW on the fp32 master weights with the compute
// dtype's weights written alongside (Megatron's mixed-precision optimizer).
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

class AdamWOptimizer {
 public:
  // Moments (fp32, zero) for each of `params` (not owned; they outlive the optimizer).
  static absl::StatusOr<std::unique_ptr<AdamWOptimizer>> Create(kernels::Ops& ops,
                                                                const OptimizerConfig& config,
                                                                std::vector<Parameter*> params);

  // One update from the parameters' gradients. `norm_group` (optional, not owned): the ranks
  // whose parameters together make the model (e.g. the expert-parallel group, each holding other
  // experts): their squared norms are summed over it (every member must call Step together).
  // Waits for the device once, for the norm.
  absl::StatusOr<OptimizerStepStats> Step(kernels::Ops& ops,
                                          comm::Communicator* norm_group = nullptr);
  int64_t steps() const { return steps_; }

 private:
  struct State {
    Parameter* param;
    kernels::Tensor m, v;  // fp32, the parameter's shape.
  };
  AdamWOptimizer(const OptimizerConfig& config, std::vector<State> state, kernels::Tensor squares,
                 kernels::Tensor ones, kernels::Tensor total)
      : config_(config),
        state_(std::move(state)),
        squares_(std::move(squares)),
        ones_(std::move(ones)),
        total_(std::move(total)) {}

  const OptimizerConfig config_;
  std::vector<State> state_;
  // Separate tensors: cuBLASLt wants each GEMM operand 16-byte aligned.
  kernels::Tensor squares_;  // (params,) fp32: each gradient's squared norm.
  kernels::Tensor ones_;     // (params,) fp32 ones.
  kernels::Tensor total_;    // (1,) fp32: their sum.
  int64_t steps_ = 0;
};

}  // namespace mimo
