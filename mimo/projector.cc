// Projector: fc1 (then GELU and fc2 for the MLP), forward and backward.
#include "mimo/projector.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

struct ProjectorSaved final : SavedActivations {
  kernels::Tensor x;  // (T, in)
  kernels::Tensor h;  // (T, H) fc1's output (kMlp).
  kernels::Tensor a;  // (T, H) its GELU (kMlp).
};

}  // namespace

absl::StatusOr<std::unique_ptr<Projector>> Projector::Create(const BuildContext& ctx,
                                                             const ProjectorConfig& config,
                                                             int64_t in, int64_t out) {
  if (in < 1 || out < 1 || config.hidden_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Projector: needs widths >= 1, got in ", in,
                                                   ", out ", out, ", hidden ", config.hidden_size));
  }
  const float std = ctx.config->init_std;
  const bool mlp = config.kind == ProjectorKind::kMlp;
  const int64_t h = mlp && config.hidden_size > 0 ? config.hidden_size : out;
  MIMO_ASSIGN_OR_RETURN(LinearWeights fc1,
                        LinearWeights::Create(ctx.Child("linear_fc1"), h, in, true, std));
  LinearWeights fc2;
  if (mlp) {
    MIMO_ASSIGN_OR_RETURN(fc2, LinearWeights::Create(ctx.Child("linear_fc2"), out, h, true, std));
  }
  return std::unique_ptr<Projector>(new Projector(std::move(fc1), std::move(fc2)));
}

absl::StatusOr<BlockOutput> Projector::Forward(const StepContext& ctx, const kernels::Tensor& x) {
  MIMO_RETURN_IF_ERROR(CheckActivation(x, fc1_.in(), x.dtype(), "Projector"));
  kernels::Ops& ops = *ctx.ops;
  const int64_t t = x.size(0), h = fc1_.out();
  auto saved = std::make_unique<ProjectorSaved>();
  saved->x = x;
  MIMO_ASSIGN_OR_RETURN(saved->h, NewTensor(ctx, {t, h}, x.dtype()));
  MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, fc1_, 0, h, x, saved->h));
  if (!mlp()) return BlockOutput{saved->h, std::move(saved)};
  MIMO_ASSIGN_OR_RETURN(saved->a, NewTensor(ctx, {t, h}, x.dtype()));
  MIMO_RETURN_IF_ERROR(ops.Gelu({.dtype = x.dtype(),
                                 .x = saved->h.data(),
                                 .y = saved->a.data(),
                                 .n = t * h,
                                 .approximation = kernels::GeluApproximation::kNone}));
  MIMO_ASSIGN_OR_RETURN(kernels::Tensor y, NewTensor(ctx, {t, fc2_.out()}, x.dtype()));
  MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, fc2_, 0, fc2_.out(), saved->a, y));
  return BlockOutput{std::move(y), std::move(saved)};
}

absl::StatusOr<kernels::Tensor> Projector::Backward(const StepContext& ctx,
                                                    std::unique_ptr<SavedActivations> saved_base,
                                                    const kernels::Tensor& dy) {
  MIMO_ASSIGN_OR_RETURN(auto saved, SavedAs<ProjectorSaved>(std::move(saved_base), "Projector"));
  kernels::Ops& ops = *ctx.ops;
  const int64_t t = saved->x.size(0), h = fc1_.out();
  kernels::Tensor dh = dy;
  if (mlp()) {
    MIMO_ASSIGN_OR_RETURN(kernels::Tensor da, NewTensor(ctx, {t, h}, dy.dtype()));
    MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(
        ops, fc2_, {.row0 = 0, .rows = fc2_.out(), .dy = &dy, .x = &saved->a, .dx = &da}));
    MIMO_ASSIGN_OR_RETURN(dh, NewTensor(ctx, {t, h}, dy.dtype()));
    MIMO_RETURN_IF_ERROR(ops.GeluBackward({.dtype = dy.dtype(),
                                           .dy = da.data(),
                                           .x = saved->h.data(),
                                           .dx = dh.data(),
                                           .n = t * h,
                                           .approximation = kernels::GeluApproximation::kNone}));
  }
  MIMO_ASSIGN_OR_RETURN(kernels::Tensor dx, NewTensor(ctx, {t, fc1_.in()}, dy.dtype()));
  MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(
      ops, fc1_, {.row0 = 0, .rows = h, .dy = &dh, .x = &saved->x, .dx = &dx}));
  return dx;
}

void Projector::AppendParameters(std::vector<Parameter*>& out) const {
  out.push_back(fc1_.weight.get());
  out.push_back(fc1_.bias.get());
  if (mlp()) {
    out.push_back(fc2_.weight.get());
    out.push_back(fc2_.bias.get());
  }
}

}  // namespace mimo
