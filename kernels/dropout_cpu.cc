// Dropout: the argument checks and the CPU twin.
#include "absl/strings/str_cat.h"
#include "common/philox.h"
#include "common/status_macros.h"
#include "kernels/cpu_elements.h"
#include "kernels/dropout.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {

absl::Status CheckDropout(const DropoutParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("Dropout", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("Dropout", p.n, 1));
  if (!(p.p >= 0.0f && p.p < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("Dropout: p must be in [0, 1), got ", p.p));
  }
  if (p.offset > UINT64_MAX - static_cast<uint64_t>(p.n)) {
    return absl::InvalidArgumentError("Dropout: offset + n exceeds the stream's 2^64 elements");
  }
  return CheckBuffers("Dropout", p.n > 0, {{p.x, "x"}, {p.y, "y"}});
}

absl::Status DropoutCpu(const DropoutParams& p) {
  MIMO_RETURN_IF_ERROR(CheckDropout(p));
  const PhiloxKey key = {static_cast<uint32_t>(p.seed), static_cast<uint32_t>(p.seed >> 32)};
  const float scale = 1.0f / (1.0f - p.p);
  PhiloxCounter bits{};
  uint64_t block = UINT64_MAX;
  for (int64_t i = 0; i < p.n; ++i) {
    const uint64_t e = p.offset + static_cast<uint64_t>(i);
    if (e / 4 != block) {
      block = e / 4;
      bits = Philox4x32(
          {static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), p.substream, p.kind},
          key);
    }
    const float u = static_cast<float>(bits[e % 4] >> 8) * 0x1p-24f;
    StoreElement(p.dtype, p.y, i, u >= p.p ? LoadElement(p.dtype, p.x, i) * scale : 0.0f);
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
