// SwiGLU, forward and backward: the argument checks and the CPU twins.
#include <cmath>

#include "common/status_macros.h"
#include "kernels/cpu_elements.h"
#include "kernels/op_checks.h"
#include "kernels/swiglu.h"

namespace mimo::kernels {
namespace {

float Sigmoid(float a) { return 1.0f / (1.0f + std::exp(-a)); }

}  // namespace

absl::Status CheckSwiglu(const SwigluParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("Swiglu", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("Swiglu", p.rows, p.cols));
  return CheckBuffers("Swiglu", p.rows * p.cols > 0, {{p.x, "x"}, {p.y, "y"}});
}

absl::Status CheckSwigluBackward(const SwigluBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("SwigluBackward", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("SwigluBackward", p.rows, p.cols));
  return CheckBuffers("SwigluBackward", p.rows * p.cols > 0,
                      {{p.dy, "dy"}, {p.x, "x"}, {p.dx, "dx"}});
}

absl::Status SwigluCpu(const SwigluParams& p) {
  MIMO_RETURN_IF_ERROR(CheckSwiglu(p));
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t c = 0; c < p.cols; ++c) {
      const float gate = LoadElement(p.dtype, p.x, r * 2 * p.cols + c);
      const float up = LoadElement(p.dtype, p.x, r * 2 * p.cols + p.cols + c);
      StoreElement(p.dtype, p.y, r * p.cols + c, gate * Sigmoid(gate) * up);
    }
  }
  return absl::OkStatus();
}

absl::Status SwigluBackwardCpu(const SwigluBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckSwigluBackward(p));
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t c = 0; c < p.cols; ++c) {
      const int64_t g = r * 2 * p.cols + c;
      const float gate = LoadElement(p.dtype, p.x, g);
      const float up = LoadElement(p.dtype, p.x, g + p.cols);
      const float dy = LoadElement(p.dtype, p.dy, r * p.cols + c);
      const float s = Sigmoid(gate);
      StoreElement(p.dtype, p.dx, g, dy * up * s * (1.0f + gate * (1.0f - s)));
      StoreElement(p.dtype, p.dx, g + p.cols, dy * gate * s);
    }
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
