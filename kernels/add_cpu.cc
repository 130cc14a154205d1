// Elementwise sum: the argument checks and the CPU twin.
#include "common/status_macros.h"
#include "kernels/add.h"
#include "kernels/cpu_elements.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {

absl::Status CheckAdd(const AddParams& p) {
  if (p.dtype != DType::kI32) MIMO_RETURN_IF_ERROR(CheckFloatDType("Add", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("Add", p.n, 1));
  return CheckBuffers("Add", p.n > 0, {{p.a, "a"}, {p.b, "b"}, {p.out, "out"}});
}

absl::Status AddCpu(const AddParams& p) {
  MIMO_RETURN_IF_ERROR(CheckAdd(p));
  if (p.dtype == DType::kI32) {
    const auto* a = static_cast<const uint32_t*>(p.a);
    const auto* b = static_cast<const uint32_t*>(p.b);
    auto* out = static_cast<uint32_t*>(p.out);
    for (int64_t i = 0; i < p.n; ++i) out[i] = a[i] + b[i];  // Unsigned: defined wrap-around.
    return absl::OkStatus();
  }
  for (int64_t i = 0; i < p.n; ++i) {
    StoreElement(p.dtype, p.out, i, LoadElement(p.dtype, p.a, i) + LoadElement(p.dtype, p.b, i));
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
