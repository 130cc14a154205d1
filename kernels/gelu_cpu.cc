// GELU, forward and backward: the argument checks and the CPU twins.
#include <cmath>

#include "common/status_macros.h"
#include "kernels/cpu_elements.h"
#include "kernels/gelu.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {
namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kTanhCubic = 0.044715f;

float GeluOf(GeluApproximation a, float x) {
  if (a == GeluApproximation::kNone) return x * 0.5f * std::erfc(-x * kInvSqrt2);
  return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + kTanhCubic * x * x * x)));
}

float GeluDerivativeOf(GeluApproximation a, float x) {
  if (a == GeluApproximation::kNone) {
    return 0.5f * std::erfc(-x * kInvSqrt2) + x * kInvSqrt2Pi * std::exp(-0.5f * x * x);
  }
  const float t = std::tanh(kSqrt2OverPi * (x + kTanhCubic * x * x * x));
  return 0.5f * (1.0f + t) +
         0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kTanhCubic * x * x);
}

}  // namespace

absl::Status CheckGelu(const GeluParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("Gelu", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("Gelu", p.n, 1));
  return CheckBuffers("Gelu", p.n > 0, {{p.x, "x"}, {p.y, "y"}});
}

absl::Status CheckGeluBackward(const GeluBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("GeluBackward", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("GeluBackward", p.n, 1));
  return CheckBuffers("GeluBackward", p.n > 0, {{p.dy, "dy"}, {p.x, "x"}, {p.dx, "dx"}});
}

absl::Status GeluCpu(const GeluParams& p) {
  MIMO_RETURN_IF_ERROR(CheckGelu(p));
  for (int64_t i = 0; i < p.n; ++i) {
    StoreElement(p.dtype, p.y, i, GeluOf(p.approximation, LoadElement(p.dtype, p.x, i)));
  }
  return absl::OkStatus();
}

absl::Status GeluBackwardCpu(const GeluBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckGeluBackward(p));
  for (int64_t i = 0; i < p.n; ++i) {
    StoreElement(p.dtype, p.dx, i,
                 LoadElement(p.dtype, p.dy, i) *
                     GeluDerivativeOf(p.approximation, LoadElement(p.dtype, p.x, i)));
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
