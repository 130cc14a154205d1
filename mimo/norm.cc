// Norm: RMSNorm or LayerNorm forward, and the backward adding dweight (and dbias) to the
// parameters' fp32 gradients.
#include "mimo/norm.h"

#include "common/status_macros.h"
#include "mimo/comm_type.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

struct NormSaved final : SavedActivations {
  Tensor x;     // (tokens, features)
  Tensor rstd;  // (tokens,) fp32
  Tensor mean;  // (tokens,) fp32, LayerNorm only.
};

}  // namespace

absl::StatusOr<std::unique_ptr<Norm>> Norm::Create(const BuildContext& ctx, int64_t features) {
  const TransformerConfig& c = *ctx.config;
  MIMO_ASSIGN_OR_RETURN(auto weight, ctx.NewParameter("weight", {features}, InitKind::kOnes,
                                                      c.init_std, /*weight_decay=*/false));
  std::unique_ptr<Parameter> bias;
  if (c.norm == NormKind::kLayerNorm) {
    MIMO_ASSIGN_OR_RETURN(bias, ctx.NewParameter("bias", {features}, InitKind::kZeros, c.init_std,
                                                 /*weight_decay=*/false));
  }
  comm::Communicator* tp = ModelGroups::Size(ctx.groups.tp) > 1 ? ctx.groups.tp : nullptr;
  return std::unique_ptr<Norm>(
      new Norm(c.norm, c.norm_epsilon, features, tp, std::move(weight), std::move(bias)));
}

absl::StatusOr<BlockOutput> Norm::Forward(const StepContext& ctx, const Tensor& x) {
  MIMO_RETURN_IF_ERROR(CheckActivation(x, features_, weight_->weight().dtype(), "Norm"));
  const int64_t rows = x.size(0);
  auto saved = std::make_unique<NormSaved>();
  saved->x = x;
  MIMO_ASSIGN_OR_RETURN(Tensor y, NewTensor(ctx, x.shape(), x.dtype()));
  MIMO_ASSIGN_OR_RETURN(saved->rstd, NewTensor(ctx, {rows}, DType::kF32));
  if (kind_ == NormKind::kRmsNorm) {
    MIMO_RETURN_IF_ERROR(ctx.ops->RmsNorm({.dtype = x.dtype(),
                                           .x = x.data(),
                                           .weight = weight_->weight().data(),
                                           .y = y.data(),
                                           .rstd = saved->rstd.data<float>(),
                                           .rows = rows,
                                           .cols = features_,
                                           .eps = eps_}));
  } else {
    MIMO_ASSIGN_OR_RETURN(saved->mean, NewTensor(ctx, {rows}, DType::kF32));
    MIMO_RETURN_IF_ERROR(ctx.ops->LayerNorm({.dtype = x.dtype(),
                                             .x = x.data(),
                                             .weight = weight_->weight().data(),
                                             .bias = bias_->weight().data(),
                                             .y = y.data(),
                                             .mean = saved->mean.data<float>(),
                                             .rstd = saved->rstd.data<float>(),
                                             .rows = rows,
                                             .cols = features_,
                                             .eps = eps_}));
  }
  return BlockOutput{std::move(y), std::move(saved)};
}

absl::StatusOr<Tensor> Norm::Backward(const StepContext& ctx,
                                      std::unique_ptr<SavedActivations> saved_base,
                                      const Tensor& dy) {
  MIMO_ASSIGN_OR_RETURN(auto saved, SavedAs<NormSaved>(std::move(saved_base), "Norm"));
  MIMO_RETURN_IF_ERROR(CheckSameShape(dy, saved->x, "Norm backward"));
  const int64_t rows = dy.size(0);
  MIMO_ASSIGN_OR_RETURN(Tensor dx, NewTensor(ctx, dy.shape(), dy.dtype()));
  // The ops overwrite dweight (and dbias): computed here (summed over tp), then added to the
  // gradients. One buffer for both: one all-reduce.
  const int64_t parts = kind_ == NormKind::kRmsNorm ? 1 : 2;
  MIMO_ASSIGN_OR_RETURN(Tensor partials, NewTensor(ctx, {parts, features_}, DType::kF32));
  MIMO_ASSIGN_OR_RETURN(const Tensor dweight, partials.Select(0, 0));
  if (kind_ == NormKind::kRmsNorm) {
    MIMO_RETURN_IF_ERROR(ctx.ops->RmsNormBackward({.dtype = dy.dtype(),
                                                   .dy = dy.data(),
                                                   .x = saved->x.data(),
                                                   .weight = weight_->weight().data(),
                                                   .rstd = saved->rstd.data<float>(),
                                                   .dx = dx.data(),
                                                   .dweight = dweight.data<float>(),
                                                   .rows = rows,
                                                   .cols = features_}));
  } else {
    MIMO_ASSIGN_OR_RETURN(const Tensor dbias, partials.Select(0, 1));
    MIMO_RETURN_IF_ERROR(ctx.ops->LayerNormBackward({.dtype = dy.dtype(),
                                                     .dy = dy.data(),
                                                     .x = saved->x.data(),
                                                     .weight = weight_->weight().data(),
                                                     .mean = saved->mean.data<float>(),
                                                     .rstd = saved->rstd.data<float>(),
                                                     .dx = dx.data(),
                                                     .dweight = dweight.data<float>(),
                                                     .dbias = dbias.data<float>(),
                                                     .rows = rows,
                                                     .cols = features_}));
  }
  if (tp_ != nullptr) {
    MIMO_ASSIGN_OR_RETURN(const comm::DataType type, CommType(DType::kF32));
    MIMO_RETURN_IF_ERROR(ctx.ops->Synchronize());  // The communicator works on its own stream.
    MIMO_RETURN_IF_ERROR(tp_->AllReduce(partials.data(), static_cast<size_t>(partials.numel()),
                                        type, comm::ReduceOp::kSum));
  }
  MIMO_RETURN_IF_ERROR(AddInto(*ctx.ops, weight_->grad(), dweight));
  if (bias_ != nullptr) {
    MIMO_ASSIGN_OR_RETURN(const Tensor dbias, partials.Select(0, 1));
    MIMO_RETURN_IF_ERROR(AddInto(*ctx.ops, bias_->grad(), dbias));
  }
  return dx;
}

void Norm::AppendParameters(std::vector<Parameter*>& out) const {
  out.push_back(weight_.get());
  if (bias_ != nullptr) out.push_back(bias_.get());
}

}  // namespace mimo
