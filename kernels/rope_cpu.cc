// Rotary position embedding: the argument checks and the CPU twin.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu_elements.h"
#include "kernels/op_checks.h"
#include "kernels/rope.h"

namespace mimo::kernels {

absl::Status CheckRope(const RopeParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("Rope", p.dtype));
  if (p.tokens < 0 || p.heads < 0 || p.head_dim < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Rope: bad shape (", p.tokens, ", ", p.heads, ", ", p.head_dim, ")"));
  }
  if (p.rotary_dim < 2 || p.rotary_dim % 2 != 0 || p.rotary_dim > p.head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("Rope: rotary_dim must be even and in [2, head_dim = ", p.head_dim, "], got ",
                     p.rotary_dim));
  }
  if (!(p.base > 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat("Rope: base must be positive, got ", p.base));
  }
  return CheckBuffers("Rope", p.tokens * p.heads > 0,
                      {{p.x, "x"}, {p.y, "y"}, {p.positions, "positions"}});
}

absl::Status RopeCpu(const RopeParams& p) {
  MIMO_RETURN_IF_ERROR(CheckRope(p));
  const int64_t half = p.rotary_dim / 2;
  for (int64_t t = 0; t < p.tokens; ++t) {
    if (p.positions[t] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Rope: token ", t, " has negative position ", p.positions[t]));
    }
  }
  for (int64_t t = 0; t < p.tokens; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double theta =
          p.positions[t] * std::pow(p.base, -2.0 * static_cast<double>(i) / p.rotary_dim);
      const float cos = static_cast<float>(std::cos(theta));
      const float sin = static_cast<float>(p.backward ? -std::sin(theta) : std::sin(theta));
      for (int64_t h = 0; h < p.heads; ++h) {
        const int64_t base = (t * p.heads + h) * p.head_dim;
        const float a = LoadElement(p.dtype, p.x, base + i);
        const float b = LoadElement(p.dtype, p.x, base + i + half);
        StoreElement(p.dtype, p.y, base + i, a * cos - b * sin);
        StoreElement(p.dtype, p.y, base + i + half, b * cos + a * sin);
      }
    }
    if (p.x == p.y) continue;
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t base = (t * p.heads + h) * p.head_dim;
      for (int64_t d = p.rotary_dim; d < p.head_dim; ++d) {
        StoreElement(p.dtype, p.y, base + d, LoadElement(p.dtype, p.x, base + d));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
