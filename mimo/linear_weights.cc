// Linear layers over a range of output rows, forward and backward, on the Ops.
#include "mimo/linear_weights.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::Tensor;

absl::Status CheckRows(const LinearWeights& lw, int64_t row0, int64_t rows) {
  if (row0 < 0 || rows <= 0 || row0 + rows > lw.out()) {
    return absl::InvalidArgumentError(absl::StrCat(lw.weight->name(), ": rows [", row0, ", ",
                                                   row0 + rows, ") outside [0, ", lw.out(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LinearWeights> LinearWeights::Create(const BuildContext& ctx, int64_t out,
                                                    int64_t in, bool bias, float std,
                                                    std::vector<ParameterShard> shards) {
  LinearWeights lw;
  std::vector<ParameterShard> bias_shards;
  for (const ParameterShard& s : shards) {
    if (s.dim == 0) bias_shards.push_back(s);
  }
  MIMO_ASSIGN_OR_RETURN(lw.weight, ctx.NewParameter("weight", {out, in}, InitKind::kNormal, std,
                                                    /*weight_decay=*/true, std::move(shards)));
  if (bias) {
    MIMO_ASSIGN_OR_RETURN(lw.bias, ctx.NewParameter("bias", {out}, InitKind::kZeros, std,
                                                    /*weight_decay=*/false, bias_shards));
  }
  return lw;
}

absl::Status LinearRowsForward(kernels::Ops& ops, const LinearWeights& lw, int64_t row0,
                               int64_t rows, const Tensor& x, const Tensor& y,
                               kernels::GemmActivation activation, const Tensor* pre_activation,
                               bool add_bias) {
  MIMO_RETURN_IF_ERROR(CheckRows(lw, row0, rows));
  const int64_t in = lw.in();
  if (x.dim() != 2 || x.size(1) != in || y.dim() != 2 || y.size(0) != x.size(0) ||
      y.size(1) != rows) {
    return absl::InvalidArgumentError(absl::StrCat(lw.weight->name(), ": x ", x.ToString(), ", y ",
                                                   y.ToString(), " for ", rows, " rows of ", in,
                                                   " inputs"));
  }
  return ops.Linear(
      {.dtype = x.dtype(),
       .x = x.data(),
       .w = RowAt(lw.weight->weight(), row0, in),
       .bias = lw.bias != nullptr && add_bias ? RowAt(lw.bias->weight(), row0, 1) : nullptr,
       .y = y.data(),
       .activation = activation,
       .pre_activation = pre_activation != nullptr ? pre_activation->data() : nullptr,
       .tokens = x.size(0),
       .in = in,
       .out = rows});
}

absl::Status LinearRowsBackwardRun(kernels::Ops& ops, const LinearWeights& lw,
                                   const LinearRowsBackward& b) {
  MIMO_RETURN_IF_ERROR(CheckRows(lw, b.row0, b.rows));
  const int64_t in = lw.in();
  const Tensor& x = *b.x;
  const Tensor& dy = *b.dy;
  if (x.dim() != 2 || x.size(1) != in || dy.dim() != 2 || dy.size(0) != x.size(0) ||
      dy.size(1) != b.rows || (b.dx != nullptr && b.dx->shape() != x.shape()) ||
      (b.dw != nullptr && (lw.bias != nullptr || b.dw->dtype() != kernels::DType::kF32 ||
                           b.dw->shape() != kernels::Shape{b.rows, in}))) {
    return absl::InvalidArgumentError(absl::StrCat(
        lw.weight->name(), " backward: x ", x.ToString(), ", dy ", dy.ToString(),
        b.dw != nullptr
            ? absl::StrCat(", dw ", b.dw->ToString(), lw.bias != nullptr ? " with a bias" : "")
            : ""));
  }
  kernels::LinearBackwardParams p{
      .dtype = dy.dtype(),
      .dy = dy.data(),
      .x = x.data(),
      .w = RowAt(lw.weight->weight(), b.row0, in),
      .activation = b.activation,
      .pre_activation = b.pre_activation != nullptr ? b.pre_activation->data() : nullptr,
      .dpre_activation = b.dpre_activation != nullptr ? b.dpre_activation->data() : nullptr,
      .dx = b.dx != nullptr && !b.accumulate_dx ? b.dx->data() : nullptr,
      .dw = b.dw != nullptr ? b.dw->data<float>()
                            : static_cast<float*>(RowAt(lw.weight->grad(), b.row0, in)),
      .dbias =
          lw.bias != nullptr ? static_cast<float*>(RowAt(lw.bias->grad(), b.row0, 1)) : nullptr,
      .accumulate = b.dw == nullptr,
      .tokens = x.size(0),
      .in = in,
      .out = b.rows};
  MIMO_RETURN_IF_ERROR(ops.LinearBackward(p));
  if (b.dx != nullptr && b.accumulate_dx) {
    // dx += dz w: dz is dy, or the pre-activation's gradient the backward just wrote.
    p.dx = b.dx->data();
    kernels::GemmParams gemm = kernels::LinearDxGemm(
        p, b.activation == kernels::GemmActivation::kNone ? p.dy : p.dpre_activation);
    gemm.accumulate = true;
    MIMO_RETURN_IF_ERROR(ops.Gemm(gemm));
  }
  return absl::OkStatus();
}

}  // namespace mimo
