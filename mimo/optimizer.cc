// AdamWOptimizer: squared gradient norms per parameter on the device, summed (and over the norm
// group), read once on the host for the clip factor, then one AdamW launch per parameter.
#include "mimo/optimizer.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

}  // namespace

absl::Status ValidateOptimizerConfig(const OptimizerConfig& c) {
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("OptimizerConfig: ", what));
  };
  if (!(c.lr > 0)) return bad(absl::StrCat("lr ", c.lr, " is not positive"));
  if (!(c.min_lr >= 0 && c.min_lr <= c.lr)) {
    return bad(absl::StrCat("min_lr ", c.min_lr, " is not in [0, lr]"));
  }
  if (!(c.weight_decay >= 0)) return bad(absl::StrCat("weight_decay ", c.weight_decay, " < 0"));
  if (!(c.beta1 >= 0 && c.beta1 < 1) || !(c.beta2 >= 0 && c.beta2 < 1)) {
    return bad(absl::StrCat("betas ", c.beta1, ", ", c.beta2, " are not in [0, 1)"));
  }
  if (!(c.eps > 0)) return bad(absl::StrCat("eps ", c.eps, " is not positive"));
  if (!(c.clip_grad >= 0)) return bad(absl::StrCat("clip_grad ", c.clip_grad, " < 0"));
  if (c.warmup_steps < 0 || c.decay_steps < 0) {
    return bad(absl::StrCat("warmup_steps ", c.warmup_steps, " and decay_steps ", c.decay_steps,
                            " must be >= 0"));
  }
  return absl::OkStatus();
}

double LearningRate(const OptimizerConfig& c, int64_t step) {
  if (step <= c.warmup_steps) {
    return static_cast<double>(c.lr) * static_cast<double>(step) /
           static_cast<double>(c.warmup_steps);
  }
  if (c.decay_steps == 0) return c.lr;
  const double t = std::min<double>(
      1.0, static_cast<double>(step - c.warmup_steps) / static_cast<double>(c.decay_steps));
  return c.min_lr + 0.5 * (static_cast<double>(c.lr) - c.min_lr) * (1.0 + std::cos(M_PI * t));
}

absl::StatusOr<std::unique_ptr<AdamWOptimizer>> AdamWOptimizer::Create(
    kernels::Ops& ops, const OptimizerConfig& config, std::vector<Parameter*> params) {
  MIMO_RETURN_IF_ERROR(ValidateOptimizerConfig(config));
  std::vector<State> state;
  for (Parameter* p : params) {
    State s{.param = p};
    MIMO_ASSIGN_OR_RETURN(
        s.m, Tensor::Empty(p->master().shape(), DType::kF32, ops.allocator(), ops.stream()));
    MIMO_ASSIGN_OR_RETURN(
        s.v, Tensor::Empty(p->master().shape(), DType::kF32, ops.allocator(), ops.stream()));
    MIMO_RETURN_IF_ERROR(ops.SetZero(s.m.data(), s.m.nbytes()));
    MIMO_RETURN_IF_ERROR(ops.SetZero(s.v.data(), s.v.nbytes()));
    state.push_back(std::move(s));
  }
  // The squares, one per parameter, ones to sum them with, and the sum.
  const int64_t n = static_cast<int64_t>(params.size());
  MIMO_ASSIGN_OR_RETURN(Tensor squares,
                        Tensor::Empty({n}, DType::kF32, ops.allocator(), ops.stream()));
  MIMO_ASSIGN_OR_RETURN(Tensor ones,
                        Tensor::Empty({n}, DType::kF32, ops.allocator(), ops.stream()));
  MIMO_ASSIGN_OR_RETURN(Tensor total,
                        Tensor::Empty({1}, DType::kF32, ops.allocator(), ops.stream()));
  const std::vector<float> host_ones(n, 1.0f);
  if (n > 0) MIMO_RETURN_IF_ERROR(ops.CopyFromHost(ones.data(), host_ones.data(), 4 * n));
  MIMO_RETURN_IF_ERROR(ops.SetZero(total.data(), total.nbytes()));
  return std::unique_ptr<AdamWOptimizer>(new AdamWOptimizer(
      config, std::move(state), std::move(squares), std::move(ones), std::move(total)));
}

absl::StatusOr<OptimizerStepStats> AdamWOptimizer::Step(kernels::Ops& ops,
                                                        comm::Communicator* norm_group) {
  const int64_t n = static_cast<int64_t>(state_.size());
  float* squares = squares_.data<float>();
  float* total = total_.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const Parameter& p = *state_[i].param;
    MIMO_RETURN_IF_ERROR(ops.SumSquares(
        {.dtype = DType::kF32, .x = p.grad().data(), .n = p.numel(), .out = squares + i}));
  }
  // total = ones (1, n) . squares (n, 1).
  MIMO_RETURN_IF_ERROR(ops.Gemm({.ab_dtype = DType::kF32,
                                 .d_dtype = DType::kF32,
                                 .a = ones_.data(),
                                 .b = squares,
                                 .d = total,
                                 .m = 1,
                                 .n = 1,
                                 .k = n}));
  if (norm_group != nullptr && norm_group->size() > 1) {
    MIMO_RETURN_IF_ERROR(ops.Synchronize());
    MIMO_RETURN_IF_ERROR(
        norm_group->AllReduce(total, 1, comm::DataType::kFloat32, comm::ReduceOp::kSum));
  }
  float sum = 0;
  MIMO_RETURN_IF_ERROR(ops.CopyToHost(&sum, total, sizeof(float)));
  OptimizerStepStats stats;
  stats.step = steps_ + 1;
  stats.lr = LearningRate(config_, stats.step);
  stats.grad_norm = std::sqrt(static_cast<double>(sum));
  if (!std::isfinite(stats.grad_norm)) {
    stats.skipped = true;
    return stats;
  }
  steps_ = stats.step;
  float scale = 1.0f;
  if (config_.clip_grad > 0) {
    const double coeff = config_.clip_grad / (stats.grad_norm + 1e-6);
    if (coeff < 1.0) scale = static_cast<float>(coeff);
  }
  for (const State& s : state_) {
    Parameter& p = *s.param;
    const bool separate = p.weight().data() != p.master().data();
    MIMO_RETURN_IF_ERROR(
        ops.AdamW({.n = p.numel(),
                   .master = p.master().data<float>(),
                   .m = s.m.data<float>(),
                   .v = s.v.data<float>(),
                   .grad = p.grad().data(),
                   .grad_dtype = DType::kF32,
                   .model = separate ? p.weight().data() : nullptr,
                   .model_dtype = p.weight().dtype(),
                   .lr = static_cast<float>(stats.lr),
                   .beta1 = config_.beta1,
                   .beta2 = config_.beta2,
                   .eps = config_.eps,
                   .weight_decay = p.spec().weight_decay ? config_.weight_decay : 0.0f,
                   .grad_scale = scale,
                   .step = stats.step}));
  }
  return stats;
}

}  // namespace mimo
