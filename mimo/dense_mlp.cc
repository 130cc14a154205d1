// DenseMlp: fc1 (GELU-tanh fused into its GEMM), SwiGLU or GELU, fc2; and their backward.
#include "mimo/dense_mlp.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/sequence_parallel.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::GemmActivation;
using kernels::Tensor;

struct MlpSaved final : SavedActivations {
  Tensor x;  // (T / tp, C) the input: this member's rows.
  Tensor h;  // (T, 2F) SwiGLU or (T, F) GELU: fc1's output before the activation.
  Tensor a;  // (T, F) the activation, fc2's input.
};

}  // namespace

absl::StatusOr<std::unique_ptr<DenseMlp>> DenseMlp::Create(const BuildContext& ctx, int64_t ffn) {
  const TransformerConfig& c = *ctx.config;
  if (ffn < 0) return absl::InvalidArgumentError(absl::StrCat("DenseMlp: width ", ffn));
  if (ffn == 0) ffn = c.ffn_hidden_size;
  const int64_t n = ModelGroups::Size(ctx.groups.tp), r = ModelGroups::Rank(ctx.groups.tp);
  comm::Communicator* tp = n > 1 ? ctx.groups.tp : nullptr;
  if (tp != nullptr && ffn % n != 0) {
    return absl::InvalidArgumentError(absl::StrCat("DenseMlp: tensor parallelism over ", n,
                                                   " ranks needs a width that divides by it, not ",
                                                   ffn));
  }
  const int64_t part = ffn / n;
  const int64_t blocks = c.activation == MlpActivation::kSwiglu ? 2 : 1;
  std::vector<ParameterShard> fc1_shards, fc2_shards;
  if (tp != nullptr) {
    fc1_shards = {{.dim = 0, .offset = r * part, .full_size = blocks * ffn, .blocks = blocks}};
    fc2_shards = {{.dim = 1, .offset = r * part, .full_size = ffn}};
  }
  MIMO_ASSIGN_OR_RETURN(
      LinearWeights fc1,
      LinearWeights::Create(ctx.Child("linear_fc1"), blocks * part, c.hidden_size,
                            c.add_bias_linear, c.init_std, std::move(fc1_shards)));
  MIMO_ASSIGN_OR_RETURN(
      LinearWeights fc2,
      LinearWeights::Create(ctx.Child("linear_fc2"), c.hidden_size, part, c.add_bias_linear,
                            c.init_std / std::sqrt(2.0f * static_cast<float>(c.num_layers)),
                            std::move(fc2_shards)));
  return std::unique_ptr<DenseMlp>(
      new DenseMlp(c, part, tp, /*add_fc2_bias=*/r == 0, std::move(fc1), std::move(fc2)));
}

absl::StatusOr<BlockOutput> DenseMlp::Forward(const StepContext& ctx, const Tensor& local) {
  MIMO_RETURN_IF_ERROR(CheckActivation(local, config_.hidden_size, config_.dtype, "DenseMlp"));
  kernels::Ops& ops = *ctx.ops;
  // (T, C): every member's rows (the input itself without tensor parallelism).
  MIMO_ASSIGN_OR_RETURN(const Tensor x, GatherRows(ops, tp_, local));
  const int64_t t = x.size(0);
  auto saved = std::make_unique<MlpSaved>();
  saved->x = local;  // This member's rows: gathered again in the backward (1 / tp the memory).
  MIMO_ASSIGN_OR_RETURN(saved->h, NewTensor(ctx, {t, fc1_.out()}, x.dtype()));
  MIMO_ASSIGN_OR_RETURN(saved->a, NewTensor(ctx, {t, ffn_}, x.dtype()));
  switch (config_.activation) {
    case MlpActivation::kSwiglu:
      MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, fc1_, 0, fc1_.out(), x, saved->h));
      MIMO_RETURN_IF_ERROR(ops.Swiglu({.dtype = x.dtype(),
                                       .x = saved->h.data(),
                                       .y = saved->a.data(),
                                       .rows = t,
                                       .cols = ffn_}));
      break;
    case MlpActivation::kGelu:
      MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, fc1_, 0, fc1_.out(), x, saved->h));
      MIMO_RETURN_IF_ERROR(ops.Gelu(
          {.dtype = x.dtype(), .x = saved->h.data(), .y = saved->a.data(), .n = t * ffn_}));
      break;
    case MlpActivation::kGeluTanh:
      MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, fc1_, 0, fc1_.out(), x, saved->a,
                                             GemmActivation::kGeluTanh, &saved->h));
      break;
  }
  MIMO_ASSIGN_OR_RETURN(Tensor y, NewTensor(ctx, {t, config_.hidden_size}, x.dtype()));
  // fc2's bias is added by one member only: the reduce-scatter sums the members' products.
  MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, fc2_, 0, config_.hidden_size, saved->a, y,
                                         GemmActivation::kNone, nullptr, add_fc2_bias_));
  // This member's rows of the sum of the members' partial products.
  MIMO_ASSIGN_OR_RETURN(Tensor own, ReduceScatterRows(ops, tp_, y));
  return BlockOutput{std::move(own), std::move(saved)};
}

absl::StatusOr<Tensor> DenseMlp::Backward(const StepContext& ctx,
                                          std::unique_ptr<SavedActivations> saved_base,
                                          const Tensor& dy_local) {
  MIMO_ASSIGN_OR_RETURN(auto saved, SavedAs<MlpSaved>(std::move(saved_base), "DenseMlp"));
  kernels::Ops& ops = *ctx.ops;
  MIMO_RETURN_IF_ERROR(CheckSameShape(dy_local, saved->x, "DenseMlp backward"));
  MIMO_ASSIGN_OR_RETURN(const Tensor dy, GatherRows(ops, tp_, dy_local));  // (T, C)
  const int64_t t = dy.size(0);
  MIMO_ASSIGN_OR_RETURN(Tensor da, NewTensor(ctx, {t, ffn_}, dy.dtype()));
  MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(
      ops, fc2_, {.row0 = 0, .rows = config_.hidden_size, .dy = &dy, .x = &saved->a, .dx = &da}));
  saved->a = Tensor();
  MIMO_ASSIGN_OR_RETURN(Tensor dh, NewTensor(ctx, {t, fc1_.out()}, dy.dtype()));
  MIMO_ASSIGN_OR_RETURN(Tensor dx, NewTensor(ctx, dy.shape(), dy.dtype()));
  MIMO_ASSIGN_OR_RETURN(const Tensor x, GatherRows(ops, tp_, saved->x));  // (T, C)
  saved->x = Tensor();
  LinearRowsBackward fc1{.row0 = 0, .rows = fc1_.out(), .dy = &dh, .x = &x, .dx = &dx};
  switch (config_.activation) {
    case MlpActivation::kSwiglu:
      MIMO_RETURN_IF_ERROR(ops.SwigluBackward({.dtype = dy.dtype(),
                                               .dy = da.data(),
                                               .x = saved->h.data(),
                                               .dx = dh.data(),
                                               .rows = t,
                                               .cols = ffn_}));
      break;
    case MlpActivation::kGelu:
      MIMO_RETURN_IF_ERROR(ops.GeluBackward({.dtype = dy.dtype(),
                                             .dy = da.data(),
                                             .x = saved->h.data(),
                                             .dx = dh.data(),
                                             .n = t * ffn_}));
      break;
    case MlpActivation::kGeluTanh:
      // fc1's backward applies the activation's derivative itself.
      fc1.dy = &da;
      fc1.activation = GemmActivation::kGeluTanh;
      fc1.pre_activation = &saved->h;
      fc1.dpre_activation = &dh;
      break;
  }
  MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(ops, fc1_, fc1));
  // dx holds this member's part of every row's gradient: the rows' owners get the sums.
  return ReduceScatterRows(ops, tp_, dx);
}

void DenseMlp::AppendParameters(std::vector<Parameter*>& out) const {
  for (const LinearWeights* lw : {&fc1_, &fc2_}) {
    out.push_back(lw->weight.get());
    if (lw->bias != nullptr) out.push_back(lw->bias.get());
  }
}

absl::StatusOr<std::unique_ptr<Block>> DenseMlpBuilder::Build(const BuildContext& ctx) const {
  MIMO_ASSIGN_OR_RETURN(auto mlp, DenseMlp::Create(ctx, ffn_));
  return std::unique_ptr<Block>(std::move(mlp));
}

}  // namespace mimo
