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
  if (!(c.lr > 0 && std::isfinite(c.lr))) {
    return bad(absl::StrCat("lr ", c.lr, " is not positive and finite"));
  }
  if (!(c.min_lr >= 0 && c.min_lr <= c.lr)) {
    return bad(absl::StrCat("min_lr ", c.min_lr, " is not in [0, lr]"));
  }
  if (!(c.weight_decay >= 0 && std::isfinite(c.weight_decay))) {
    return bad(absl::StrCat("weight_decay ", c.weight_decay, " is not finite and >= 0"));
  }
  if (!(c.beta1 >= 0 && c.beta1 < 1) || !(c.beta2 >= 0 && c.beta2 < 1)) {
    return bad(absl::StrCat("betas ", c.beta1, ", ", c.beta2, " are not in [0, 1)"));
  }
  if (!(c.eps > 0 && std::isfinite(c.eps))) {
    return bad(absl::StrCat("eps ", c.eps, " is not positive and finite"));
  }
  if (!(c.clip_grad >= 0 && std::isfinite(c.clip_grad))) {
    return bad(absl::StrCat("clip_grad ", c.clip_grad, " is not finite and >= 0"));
  }
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

OptimizerStepStats PlanUpdate(const OptimizerConfig& config, int64_t steps, double squared_norm,
                              float& grad_scale) {
  OptimizerStepStats stats;
  stats.step = steps + 1;
  stats.lr = LearningRate(config, stats.step);
  stats.grad_norm = std::sqrt(squared_norm);
  stats.skipped = !std::isfinite(stats.grad_norm);
  grad_scale = 1.0f;
  if (!stats.skipped && config.clip_grad > 0) {
    const double coeff = config.clip_grad / (stats.grad_norm + 1e-6);
    if (coeff < 1.0) grad_scale = static_cast<float>(coeff);
  }
  return stats;
}

absl::StatusOr<AdamWOptimizer::Squares> AdamWOptimizer::NewSquares(kernels::Ops& ops,
                                                                   std::vector<Parameter*> params) {
  Squares set;
  for (Parameter* p : params) {
    State s{.param = p};
    MIMO_ASSIGN_OR_RETURN(
        s.m, Tensor::Empty(p->master().shape(), DType::kF32, ops.allocator(), ops.stream()));
    MIMO_ASSIGN_OR_RETURN(
        s.v, Tensor::Empty(p->master().shape(), DType::kF32, ops.allocator(), ops.stream()));
    MIMO_RETURN_IF_ERROR(ops.SetZero(s.m.data(), s.m.nbytes()));
    MIMO_RETURN_IF_ERROR(ops.SetZero(s.v.data(), s.v.nbytes()));
    set.state.push_back(std::move(s));
  }
  const int64_t n = static_cast<int64_t>(params.size());
  MIMO_ASSIGN_OR_RETURN(set.squares,
                        Tensor::Empty({n}, DType::kF32, ops.allocator(), ops.stream()));
  MIMO_ASSIGN_OR_RETURN(set.ones, Tensor::Empty({n}, DType::kF32, ops.allocator(), ops.stream()));
  MIMO_ASSIGN_OR_RETURN(set.total, Tensor::Empty({1}, DType::kF32, ops.allocator(), ops.stream()));
  const std::vector<float> ones(n, 1.0f);
  if (n > 0) MIMO_RETURN_IF_ERROR(ops.CopyFromHost(set.ones.data(), ones.data(), 4 * n));
  MIMO_RETURN_IF_ERROR(ops.SetZero(set.total.data(), set.total.nbytes()));
  return set;
}

absl::Status AdamWOptimizer::SumSquares(kernels::Ops& ops, const Squares& set) {
  const int64_t n = static_cast<int64_t>(set.state.size());
  for (int64_t i = 0; i < n; ++i) {
    const Parameter& p = *set.state[i].param;
    MIMO_RETURN_IF_ERROR(ops.SumSquares({.dtype = DType::kF32,
                                         .x = p.grad().data(),
                                         .n = p.numel(),
                                         .out = set.squares.data<float>() + i}));
  }
  // total = ones (1, n) . squares (n, 1).
  return ops.Gemm({.ab_dtype = DType::kF32,
                   .d_dtype = DType::kF32,
                   .a = set.ones.data(),
                   .b = set.squares.data(),
                   .d = set.total.data(),
                   .m = 1,
                   .n = 1,
                   .k = n});
}

absl::StatusOr<std::unique_ptr<AdamWOptimizer>> AdamWOptimizer::Create(
    kernels::Ops& ops, const OptimizerConfig& config, std::vector<Parameter*> params,
    std::vector<NormShardedParameters> sharded) {
  MIMO_RETURN_IF_ERROR(ValidateOptimizerConfig(config));
  MIMO_ASSIGN_OR_RETURN(Squares replicated, NewSquares(ops, std::move(params)));
  std::vector<ShardedSquares> sets;
  for (NormShardedParameters& set : sharded) {
    MIMO_ASSIGN_OR_RETURN(Squares squares, NewSquares(ops, std::move(set.params)));
    sets.push_back({std::move(squares), std::move(set.norm_groups), set.in_norm});
  }
  return std::unique_ptr<AdamWOptimizer>(
      new AdamWOptimizer(config, std::move(replicated), std::move(sets)));
}

absl::StatusOr<OptimizerStepStats> AdamWOptimizer::Step(kernels::Ops& ops) {
  MIMO_ASSIGN_OR_RETURN(const float squared, SquaredGradNorm(ops));
  return Apply(ops, squared);
}

absl::StatusOr<float> AdamWOptimizer::SquaredGradNorm(kernels::Ops& ops) {
  MIMO_RETURN_IF_ERROR(SumSquares(ops, replicated_));
  for (const ShardedSquares& set : sharded_) {
    if (!set.in_norm) continue;
    MIMO_RETURN_IF_ERROR(SumSquares(ops, set.squares));
    for (comm::Communicator* group : set.norm_groups) {
      if (group == nullptr || group->size() == 1) continue;
      MIMO_RETURN_IF_ERROR(ops.Synchronize());
      MIMO_RETURN_IF_ERROR(group->AllReduce(set.squares.total.data(), 1, comm::DataType::kFloat32,
                                            comm::ReduceOp::kSum));
    }
  }
  float total = 0;
  MIMO_RETURN_IF_ERROR(ops.CopyToHost(&total, replicated_.total.data(), sizeof(float)));
  for (const ShardedSquares& set : sharded_) {
    if (!set.in_norm) continue;
    float part = 0;
    MIMO_RETURN_IF_ERROR(ops.CopyToHost(&part, set.squares.total.data(), sizeof(float)));
    total += part;
  }
  return total;
}

std::vector<std::pair<std::string, kernels::Tensor>> AdamWOptimizer::StateTensors() const {
  std::vector<std::pair<std::string, kernels::Tensor>> out;
  std::vector<const Squares*> sets = {&replicated_};
  for (const ShardedSquares& set : sharded_) sets.push_back(&set.squares);
  for (const Squares* set : sets) {
    for (const State& s : set->state) {
      out.emplace_back(s.param->name() + ".exp_avg", s.m);
      out.emplace_back(s.param->name() + ".exp_avg_sq", s.v);
    }
  }
  return out;
}

absl::StatusOr<OptimizerStepStats> AdamWOptimizer::Apply(kernels::Ops& ops, double sum) {
  float scale = 1.0f;
  const OptimizerStepStats stats = PlanUpdate(config_, steps_, sum, scale);
  if (stats.skipped) return stats;
  steps_ = stats.step;
  std::vector<const Squares*> sets = {&replicated_};
  for (const ShardedSquares& set : sharded_) sets.push_back(&set.squares);
  for (const Squares* set : sets) {
    for (const State& s : set->state) {
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
  }
  return stats;
}

}  // namespace mimo
