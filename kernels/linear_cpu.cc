// Linear layer: the argument checks, the GEMM calls both devices share, and the CPU twins.
#include "common/status_macros.h"
#include "kernels/cpu_elements.h"
#include "kernels/gelu.h"
#include "kernels/linear.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {
namespace {

absl::Status CheckSizes(const char* op, int64_t tokens, int64_t in, int64_t out) {
  MIMO_RETURN_IF_ERROR(CheckRowsCols(op, tokens, in));
  return CheckRowsCols(op, out, in);
}

}  // namespace

absl::Status CheckLinear(const LinearParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("Linear", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckSizes("Linear", p.tokens, p.in, p.out));
  const bool any = p.tokens > 0 && p.out > 0;
  MIMO_RETURN_IF_ERROR(CheckBuffers("Linear", any, {{p.x, "x"}, {p.w, "w"}, {p.y, "y"}}));
  return CheckBuffers("Linear", any && p.activation != GemmActivation::kNone,
                      {{p.pre_activation, "pre_activation"}});
}

absl::Status CheckLinearBackward(const LinearBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("LinearBackward", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckSizes("LinearBackward", p.tokens, p.in, p.out));
  MIMO_RETURN_IF_ERROR(CheckBuffers("LinearBackward", p.out > 0, {{p.dw, "dw"}}));
  const bool any = p.tokens > 0 && p.out > 0;
  MIMO_RETURN_IF_ERROR(CheckBuffers("LinearBackward", any, {{p.dy, "dy"}, {p.x, "x"}, {p.w, "w"}}));
  return CheckBuffers(
      "LinearBackward", any && p.activation != GemmActivation::kNone,
      {{p.pre_activation, "pre_activation"}, {p.dpre_activation, "dpre_activation"}});
}

GemmParams LinearForwardGemm(const LinearParams& p) {
  // y (tokens, out) = x (tokens, in) . w^T.
  return {.ab_dtype = p.dtype,
          .d_dtype = p.dtype,
          .a = p.x,
          .b = p.w,
          .d = p.y,
          .transpose_b = true,
          .m = p.tokens,
          .n = p.out,
          .k = p.in,
          .bias = p.bias,
          .activation = p.activation,
          .pre_activation = p.pre_activation};
}

GeluBackwardParams LinearActivationBackward(const LinearBackwardParams& p) {
  return {.dtype = p.dtype,
          .dy = p.dy,
          .x = p.pre_activation,
          .dx = p.dpre_activation,
          .n = p.tokens * p.out,
          .approximation = GeluApproximation::kTanh};
}

GemmParams LinearDxGemm(const LinearBackwardParams& p, const void* dz) {
  // dx (tokens, in) = dz (tokens, out) . w (out, in).
  return {.ab_dtype = p.dtype,
          .d_dtype = p.dtype,
          .a = dz,
          .b = p.w,
          .d = p.dx,
          .m = p.tokens,
          .n = p.in,
          .k = p.out};
}

GemmParams LinearDwGemm(const LinearBackwardParams& p, const void* dz) {
  // dw (out, in) (+)= dz^T . x (tokens, in), in fp32.
  return {.ab_dtype = p.dtype,
          .d_dtype = DType::kF32,
          .a = dz,
          .b = p.x,
          .d = p.dw,
          .transpose_a = true,
          .m = p.out,
          .n = p.in,
          .k = p.tokens,
          .accumulate = p.accumulate};
}

absl::Status LinearCpu(const LinearParams& p) {
  MIMO_RETURN_IF_ERROR(CheckLinear(p));
  return GemmCpu(LinearForwardGemm(p));
}

absl::Status LinearBackwardCpu(const LinearBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckLinearBackward(p));
  const void* dz = p.dy;  // (tokens, out)
  if (p.activation != GemmActivation::kNone) {
    MIMO_RETURN_IF_ERROR(GeluBackwardCpu(LinearActivationBackward(p)));
    dz = p.dpre_activation;
  }
  if (p.dx != nullptr) MIMO_RETURN_IF_ERROR(GemmCpu(LinearDxGemm(p, dz)));
  MIMO_RETURN_IF_ERROR(GemmCpu(LinearDwGemm(p, dz)));
  if (p.dbias != nullptr) {
    for (int64_t o = 0; o < p.out; ++o) {
      float sum = 0.0f;
      for (int64_t t = 0; t < p.tokens; ++t) sum += LoadElement(p.dtype, dz, t * p.out + o);
      p.dbias[o] = p.accumulate ? p.dbias[o] + sum : sum;
    }
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
