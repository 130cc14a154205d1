// MoeLayer: router, permutation, per-expert GEMMs over contiguous row blocks, activation,
// weighted unpermute; the backward in reverse, with the router's and the auxiliary losses'
// gradients meeting in the logits.
#include "mimo/moe_layer.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

struct MoeSaved final : SavedActivations {
  Tensor x;                      // (T, C)
  Tensor logits;                 // (T, E) fp32
  Tensor scores;                 // (T, E) fp32
  Tensor indices;                // (T, k) int32
  Tensor probs;                  // (T, k) fp32
  Tensor rows;                   // (T, k) int32
  Tensor pair_of_row;            // (R,) int32
  std::vector<int32_t> offsets;  // (E + 1,) on the host.
  Tensor xp;                     // (R, C) permuted input.
  Tensor h1;                     // (R, F1) fc1 output.
  Tensor a;                      // (R, F) activation.
  Tensor h2;                     // (R, C) fc2 output.
  std::unique_ptr<SavedActivations> shared;
};

// How the experts' GELU is computed (SwiGLU has its own op).
kernels::GeluApproximation GeluOf(MlpActivation activation) {
  return activation == MlpActivation::kGelu ? kernels::GeluApproximation::kNone
                                            : kernels::GeluApproximation::kTanh;
}

// The auxiliary losses' parameters over what the forward saved (losses and gradient unset).
kernels::MoeAuxLossParams AuxLossParams(const MoeConfig& moe, const StepContext& ctx,
                                        const MoeSaved& saved) {
  return {.config = moe.router,
          .logits = saved.logits.data<float>(),
          .scores = saved.scores.data<float>(),
          .indices = saved.indices.data<int32_t>(),
          .cu_seqlens = moe.per_sequence_aux_loss ? ctx.sequences->cu_seqlens() : nullptr,
          .num_seqs = moe.per_sequence_aux_loss ? ctx.sequences->num_seqs() : 0,
          .tokens = saved.logits.size(0),
          .aux_coeff = moe.aux_loss_coeff,
          .z_coeff = moe.z_loss_coeff};
}

}  // namespace

MoeLayer::MoeLayer(const TransformerConfig& config, const MoeConfig& moe, int layer_number,
                   int64_t ffn, LinearWeights router, std::unique_ptr<Parameter> fc1,
                   std::unique_ptr<Parameter> fc2, std::unique_ptr<DenseMlp> shared)
    : config_(config),
      moe_(moe),
      layer_number_(layer_number),
      ffn_(ffn),
      router_(std::move(router)),
      fc1_(std::move(fc1)),
      fc2_(std::move(fc2)),
      shared_(std::move(shared)) {}

absl::StatusOr<std::unique_ptr<MoeLayer>> MoeLayer::Create(const BuildContext& ctx,
                                                           const MoeConfig& moe) {
  MIMO_RETURN_IF_ERROR(ValidateMoeConfig(moe));
  const TransformerConfig& c = *ctx.config;
  const int64_t e = moe.router.experts;
  const int64_t ffn =
      moe.expert_ffn_hidden_size != 0 ? moe.expert_ffn_hidden_size : c.ffn_hidden_size;
  const int64_t fc1_rows = c.activation == MlpActivation::kSwiglu ? 2 * ffn : ffn;
  MIMO_ASSIGN_OR_RETURN(LinearWeights router,
                        LinearWeights::Create(ctx.Child("router"), e, c.hidden_size,
                                              /*bias=*/false, c.init_std));
  const BuildContext experts = ctx.Child("experts");
  MIMO_ASSIGN_OR_RETURN(auto fc1, experts.Child("linear_fc1")
                                      .NewParameter("weight", {e, fc1_rows, c.hidden_size},
                                                    InitKind::kNormal, c.init_std, true));
  MIMO_ASSIGN_OR_RETURN(
      auto fc2,
      experts.Child("linear_fc2")
          .NewParameter("weight", {e, c.hidden_size, ffn}, InitKind::kNormal,
                        c.init_std / std::sqrt(2.0f * static_cast<float>(c.num_layers)), true));
  std::unique_ptr<DenseMlp> shared;
  if (moe.shared_expert_ffn_hidden_size > 0) {
    MIMO_ASSIGN_OR_RETURN(
        shared, DenseMlp::Create(ctx.Child("shared_experts"), moe.shared_expert_ffn_hidden_size));
  }
  return std::unique_ptr<MoeLayer>(new MoeLayer(c, moe, ctx.layer_number, ffn, std::move(router),
                                                std::move(fc1), std::move(fc2), std::move(shared)));
}

absl::StatusOr<BlockOutput> MoeLayer::Forward(const StepContext& ctx, const Tensor& x) {
  MIMO_RETURN_IF_ERROR(CheckActivation(x, config_.hidden_size, config_.dtype, "MoeLayer"));
  kernels::Ops& ops = *ctx.ops;
  const kernels::RouterConfig& rc = moe_.router;
  const int64_t t = x.size(0), c = config_.hidden_size, e = rc.experts, k = rc.top_k;
  const int64_t f1 = fc1_->spec().shape[1];
  const int64_t capacity = kernels::MoePermuteCapacity(t, k, e, moe_.align);
  auto saved = std::make_unique<MoeSaved>();
  saved->x = x;
  // Route: fp32 logits from the compute-dtype GEMM, then the router op and the losses.
  MIMO_ASSIGN_OR_RETURN(saved->logits, NewTensor(ctx, {t, e}, DType::kF32));
  MIMO_RETURN_IF_ERROR(ops.Gemm({.ab_dtype = x.dtype(),
                                 .d_dtype = DType::kF32,
                                 .a = x.data(),
                                 .b = router_.weight->weight().data(),
                                 .d = saved->logits.data(),
                                 .transpose_b = true,
                                 .m = t,
                                 .n = e,
                                 .k = c}));
  MIMO_ASSIGN_OR_RETURN(saved->scores, NewTensor(ctx, {t, e}, DType::kF32));
  MIMO_ASSIGN_OR_RETURN(saved->indices, NewTensor(ctx, {t, k}, DType::kI32));
  MIMO_ASSIGN_OR_RETURN(saved->probs, NewTensor(ctx, {t, k}, DType::kF32));
  MIMO_ASSIGN_OR_RETURN(Tensor counts, NewTensor(ctx, {e}, DType::kI32));
  MIMO_RETURN_IF_ERROR(ops.MoeRouter({.config = rc,
                                      .logits = saved->logits.data<float>(),
                                      .scores = saved->scores.data<float>(),
                                      .indices = saved->indices.data<int32_t>(),
                                      .probs = saved->probs.data<float>(),
                                      .tokens_per_expert = counts.data<int32_t>(),
                                      .tokens = t}));
  if (ctx.aux_losses != nullptr) {
    MIMO_ASSIGN_OR_RETURN(Tensor losses, NewTensor(ctx, {2}, DType::kF32));
    kernels::MoeAuxLossParams p = AuxLossParams(moe_, ctx, *saved);
    p.losses = losses.data<float>();
    MIMO_RETURN_IF_ERROR(ops.MoeAuxLoss(p));
    ctx.aux_losses->push_back({layer_number_, std::move(losses)});
  }
  // Permute to expert-contiguous rows; the row counts come to the host for the expert GEMMs.
  MIMO_ASSIGN_OR_RETURN(saved->rows, NewTensor(ctx, {t, k}, DType::kI32));
  MIMO_ASSIGN_OR_RETURN(Tensor offsets, NewTensor(ctx, {e + 1}, DType::kI32));
  MIMO_ASSIGN_OR_RETURN(saved->pair_of_row, NewTensor(ctx, {capacity}, DType::kI32));
  MIMO_RETURN_IF_ERROR(ops.MoePermuteMap({.indices = saved->indices.data<int32_t>(),
                                          .rows = saved->rows.data<int32_t>(),
                                          .offsets = offsets.data<int32_t>(),
                                          .pair_of_row = saved->pair_of_row.data<int32_t>(),
                                          .tokens = t,
                                          .top_k = k,
                                          .experts = e,
                                          .align = moe_.align,
                                          .capacity = capacity}));
  MIMO_ASSIGN_OR_RETURN(saved->xp, NewTensor(ctx, {capacity, c}, x.dtype()));
  MIMO_RETURN_IF_ERROR(ops.MoePermute({.dtype = x.dtype(),
                                       .x = x.data(),
                                       .pair_of_row = saved->pair_of_row.data<int32_t>(),
                                       .out = saved->xp.data(),
                                       .tokens = t,
                                       .top_k = k,
                                       .hidden = c,
                                       .capacity = capacity}));
  saved->offsets.resize(e + 1);
  MIMO_RETURN_IF_ERROR(
      ops.CopyToHost(saved->offsets.data(), offsets.data(), sizeof(int32_t) * (e + 1)));
  const std::vector<int32_t>& off = saved->offsets;
  const int64_t used = off[e];
  // Each expert's MLP over its rows (padding rows are zeros and stay zeros).
  MIMO_ASSIGN_OR_RETURN(saved->h1, NewTensor(ctx, {capacity, f1}, x.dtype()));
  MIMO_ASSIGN_OR_RETURN(saved->a, NewTensor(ctx, {capacity, ffn_}, x.dtype()));
  MIMO_ASSIGN_OR_RETURN(saved->h2, NewTensor(ctx, {capacity, c}, x.dtype()));
  for (int64_t i = 0; i < e; ++i) {
    const int64_t n = off[i + 1] - off[i];
    if (n == 0) continue;
    MIMO_RETURN_IF_ERROR(ops.Linear({.dtype = x.dtype(),
                                     .x = RowAt(saved->xp, off[i], c),
                                     .w = RowAt(fc1_->weight(), i * f1, c),
                                     .y = RowAt(saved->h1, off[i], f1),
                                     .tokens = n,
                                     .in = c,
                                     .out = f1}));
  }
  if (used > 0) {
    if (config_.activation == MlpActivation::kSwiglu) {
      MIMO_RETURN_IF_ERROR(ops.Swiglu({.dtype = x.dtype(),
                                       .x = saved->h1.data(),
                                       .y = saved->a.data(),
                                       .rows = used,
                                       .cols = ffn_}));
    } else {
      MIMO_RETURN_IF_ERROR(ops.Gelu({.dtype = x.dtype(),
                                     .x = saved->h1.data(),
                                     .y = saved->a.data(),
                                     .n = used * ffn_,
                                     .approximation = GeluOf(config_.activation)}));
    }
  }
  for (int64_t i = 0; i < e; ++i) {
    const int64_t n = off[i + 1] - off[i];
    if (n == 0) continue;
    MIMO_RETURN_IF_ERROR(ops.Linear({.dtype = x.dtype(),
                                     .x = RowAt(saved->a, off[i], ffn_),
                                     .w = RowAt(fc2_->weight(), i * c, ffn_),
                                     .y = RowAt(saved->h2, off[i], c),
                                     .tokens = n,
                                     .in = ffn_,
                                     .out = c}));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor y, NewTensor(ctx, {t, c}, x.dtype()));
  MIMO_RETURN_IF_ERROR(ops.MoeUnpermute({.dtype = x.dtype(),
                                         .h = saved->h2.data(),
                                         .rows = saved->rows.data<int32_t>(),
                                         .probs = saved->probs.data<float>(),
                                         .y = y.data(),
                                         .tokens = t,
                                         .top_k = k,
                                         .hidden = c}));
  if (shared_ != nullptr) {
    MIMO_ASSIGN_OR_RETURN(BlockOutput shared, shared_->Forward(ctx, x));
    saved->shared = std::move(shared.saved);
    MIMO_RETURN_IF_ERROR(AddInto(ops, y, shared.y));
  }
  return BlockOutput{std::move(y), std::move(saved)};
}

absl::StatusOr<Tensor> MoeLayer::Backward(const StepContext& ctx,
                                          std::unique_ptr<SavedActivations> saved_base,
                                          const Tensor& dy) {
  MIMO_ASSIGN_OR_RETURN(auto saved, SavedAs<MoeSaved>(std::move(saved_base), "MoeLayer"));
  MIMO_RETURN_IF_ERROR(CheckSameShape(dy, saved->x, "MoeLayer backward"));
  kernels::Ops& ops = *ctx.ops;
  const kernels::RouterConfig& rc = moe_.router;
  const int64_t t = dy.size(0), c = config_.hidden_size, e = rc.experts, k = rc.top_k;
  const int64_t f1 = fc1_->spec().shape[1];
  const int64_t capacity = saved->pair_of_row.numel();
  const std::vector<int32_t>& off = saved->offsets;
  const int64_t used = off[e];
  // Through the weighted combine: the experts' output gradients and the weights' gradient.
  MIMO_ASSIGN_OR_RETURN(Tensor dh2, NewTensor(ctx, {capacity, c}, dy.dtype()));
  MIMO_ASSIGN_OR_RETURN(Tensor dprobs, NewTensor(ctx, {t, k}, DType::kF32));
  MIMO_RETURN_IF_ERROR(ops.MoeUnpermuteBackward({.dtype = dy.dtype(),
                                                 .dy = dy.data(),
                                                 .h = saved->h2.data(),
                                                 .rows = saved->rows.data<int32_t>(),
                                                 .pair_of_row = saved->pair_of_row.data<int32_t>(),
                                                 .probs = saved->probs.data<float>(),
                                                 .dh = dh2.data(),
                                                 .dprobs = dprobs.data<float>(),
                                                 .tokens = t,
                                                 .top_k = k,
                                                 .hidden = c,
                                                 .capacity = capacity}));
  saved->h2 = Tensor();
  // Through each expert's MLP.
  MIMO_ASSIGN_OR_RETURN(Tensor da, NewTensor(ctx, {capacity, ffn_}, dy.dtype()));
  MIMO_ASSIGN_OR_RETURN(Tensor dh1, NewTensor(ctx, {capacity, f1}, dy.dtype()));
  MIMO_ASSIGN_OR_RETURN(Tensor dxp, NewTensor(ctx, {capacity, c}, dy.dtype()));
  for (int64_t i = 0; i < e; ++i) {
    const int64_t n = off[i + 1] - off[i];
    if (n == 0) continue;
    MIMO_RETURN_IF_ERROR(
        ops.LinearBackward({.dtype = dy.dtype(),
                            .dy = RowAt(dh2, off[i], c),
                            .x = RowAt(saved->a, off[i], ffn_),
                            .w = RowAt(fc2_->weight(), i * c, ffn_),
                            .dx = RowAt(da, off[i], ffn_),
                            .dw = static_cast<float*>(RowAt(fc2_->grad(), i * c, ffn_)),
                            .accumulate = true,
                            .tokens = n,
                            .in = ffn_,
                            .out = c}));
  }
  if (used > 0) {
    if (config_.activation == MlpActivation::kSwiglu) {
      MIMO_RETURN_IF_ERROR(ops.SwigluBackward({.dtype = dy.dtype(),
                                               .dy = da.data(),
                                               .x = saved->h1.data(),
                                               .dx = dh1.data(),
                                               .rows = used,
                                               .cols = ffn_}));
    } else {
      MIMO_RETURN_IF_ERROR(ops.GeluBackward({.dtype = dy.dtype(),
                                             .dy = da.data(),
                                             .x = saved->h1.data(),
                                             .dx = dh1.data(),
                                             .n = used * ffn_,
                                             .approximation = GeluOf(config_.activation)}));
    }
  }
  for (int64_t i = 0; i < e; ++i) {
    const int64_t n = off[i + 1] - off[i];
    if (n == 0) continue;
    MIMO_RETURN_IF_ERROR(
        ops.LinearBackward({.dtype = dy.dtype(),
                            .dy = RowAt(dh1, off[i], f1),
                            .x = RowAt(saved->xp, off[i], c),
                            .w = RowAt(fc1_->weight(), i * f1, c),
                            .dx = RowAt(dxp, off[i], c),
                            .dw = static_cast<float*>(RowAt(fc1_->grad(), i * f1, c)),
                            .accumulate = true,
                            .tokens = n,
                            .in = c,
                            .out = f1}));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor dx, NewTensor(ctx, {t, c}, dy.dtype()));
  MIMO_RETURN_IF_ERROR(ops.MoePermuteBackward({.dtype = dy.dtype(),
                                               .dout = dxp.data(),
                                               .rows = saved->rows.data<int32_t>(),
                                               .dx = dx.data(),
                                               .tokens = t,
                                               .top_k = k,
                                               .hidden = c}));
  // Through the router: the combine weights' and the auxiliary losses' gradients meet in the
  // logits, then the router GEMM (in the compute dtype) adds to dx and the router's gradient.
  MIMO_ASSIGN_OR_RETURN(Tensor dlogits, NewTensor(ctx, {t, e}, DType::kF32));
  MIMO_RETURN_IF_ERROR(ops.MoeRouterBackward({.config = rc,
                                              .dprobs = dprobs.data<float>(),
                                              .scores = saved->scores.data<float>(),
                                              .indices = saved->indices.data<int32_t>(),
                                              .dlogits = dlogits.data<float>(),
                                              .tokens = t}));
  if (moe_.aux_loss_coeff > 0.0f || moe_.z_loss_coeff > 0.0f) {
    MIMO_ASSIGN_OR_RETURN(Tensor losses, NewTensor(ctx, {2}, DType::kF32));
    kernels::MoeAuxLossParams p = AuxLossParams(moe_, ctx, *saved);
    p.losses = losses.data<float>();
    p.dlogits = dlogits.data<float>();
    p.loss_grad = ctx.loss_scale;
    MIMO_RETURN_IF_ERROR(ops.MoeAuxLoss(p));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor dlogits_c, NewTensor(ctx, {t, e}, dy.dtype()));
  MIMO_RETURN_IF_ERROR(ops.Cast({.from = DType::kF32,
                                 .to = dy.dtype(),
                                 .x = dlogits.data(),
                                 .y = dlogits_c.data(),
                                 .n = t * e}));
  MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(
      ops, router_,
      {.row0 = 0, .rows = e, .dy = &dlogits_c, .x = &saved->x, .dx = &dx, .accumulate_dx = true}));
  if (shared_ != nullptr) {
    MIMO_ASSIGN_OR_RETURN(Tensor dshared, shared_->Backward(ctx, std::move(saved->shared), dy));
    MIMO_RETURN_IF_ERROR(AddInto(ops, dx, dshared));
  }
  return dx;
}

void MoeLayer::AppendParameters(std::vector<Parameter*>& out) const {
  out.push_back(router_.weight.get());
  out.push_back(fc1_.get());
  out.push_back(fc2_.get());
  if (shared_ != nullptr) shared_->AppendParameters(out);
}

absl::StatusOr<std::unique_ptr<Block>> MoeMlpBuilder::Build(const BuildContext& ctx) const {
  MIMO_ASSIGN_OR_RETURN(auto layer, MoeLayer::Create(ctx, moe_));
  return std::unique_ptr<Block>(std::move(layer));
}

}  // namespace mimo
