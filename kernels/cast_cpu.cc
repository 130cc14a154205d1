// Cast: argument checks and the CPU twin.
#include "common/status_macros.h"
#include "kernels/cast.h"
#include "kernels/cpu_elements.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {

absl::Status CheckCast(const CastParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("Cast", p.from));
  MIMO_RETURN_IF_ERROR(CheckFloatDType("Cast", p.to));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("Cast", p.n, 1));
  return CheckBuffers("Cast", p.n > 0, {{p.x, "x"}, {p.y, "y"}});
}

absl::Status CastCpu(const CastParams& p) {
  MIMO_RETURN_IF_ERROR(CheckCast(p));
  for (int64_t i = 0; i < p.n; ++i) StoreElement(p.to, p.y, i, LoadElement(p.from, p.x, i));
  return absl::OkStatus();
}

}  // namespace mimo::kernels
