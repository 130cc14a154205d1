// Grouped matrix products: the argument checks and the CPU twin (one GemmCpu per group).
#include <cstddef>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/gemm.h"
#include "kernels/grouped_gemm.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {

absl::Status CheckGroupedGemm(const GroupedGemmParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("GroupedGemm", p.ab_dtype));
  if (p.d_dtype != p.ab_dtype && p.d_dtype != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat("GroupedGemm: d dtype ", DTypeName(p.d_dtype),
                                                   " is not supported with a and b in ",
                                                   DTypeName(p.ab_dtype), " (same, or f32)"));
  }
  // Room for a tile past the last row in the kernels' int32 index arithmetic.
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max() - 1024;
  if (p.groups < 1 || p.groups > 65535 || p.rows < 0 || p.rows > kMax || p.m < 0 || p.m > kMax ||
      p.n < 0 || p.n > kMax || p.k < 0 || p.k > kMax) {
    return absl::InvalidArgumentError(absl::StrCat("GroupedGemm: bad shape: groups ", p.groups,
                                                   " (1 to 65535), rows ", p.rows, ", m ", p.m,
                                                   ", n ", p.n, ", k ", p.k));
  }
  const bool rows_mode = p.mode == GroupedGemmMode::kVariableRows;
  if (rows_mode && p.m != 0) {
    return absl::InvalidArgumentError("GroupedGemm: m is kVariableDepth's (rows are the groups')");
  }
  if (!rows_mode && (p.k != 0 || p.transpose_b || p.row_multiple != 1)) {
    return absl::InvalidArgumentError(
        "GroupedGemm: kVariableDepth takes neither k (the groups' rows), transpose_b nor "
        "row_multiple");
  }
  if (p.row_multiple < 1 || p.row_multiple > kMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("GroupedGemm: row_multiple ", p.row_multiple, " is not in [1, ", kMax, "]"));
  }
  MIMO_RETURN_IF_ERROR(CheckBuffers("GroupedGemm", true, {{p.offsets, "offsets"}}));
  const bool any_input = p.rows > 0 && p.n > 0 && (rows_mode ? p.k > 0 : p.m > 0);
  MIMO_RETURN_IF_ERROR(CheckBuffers("GroupedGemm", any_input, {{p.a, "a"}, {p.b, "b"}}));
  const bool any_output = p.n > 0 && (rows_mode ? p.rows > 0 : p.m > 0);
  return CheckBuffers("GroupedGemm", any_output, {{p.d, "d"}});
}

absl::Status GroupedGemmCpu(const GroupedGemmParams& p) {
  MIMO_RETURN_IF_ERROR(CheckGroupedGemm(p));
  for (int64_t g = 0; g <= p.groups; ++g) {
    const int32_t o = p.offsets[g];
    if (o < 0 || o > p.rows || (g > 0 && o < p.offsets[g - 1])) {
      return absl::InvalidArgumentError(absl::StrCat("GroupedGemm: offsets[", g, "] = ", o,
                                                     " is not in [offsets[", g - 1, "], ", p.rows,
                                                     "]"));
    }
    if (o % p.row_multiple != 0) {
      return absl::InvalidArgumentError(absl::StrCat("GroupedGemm: offsets[", g, "] = ", o,
                                                     " is not a multiple of row_multiple ",
                                                     p.row_multiple));
    }
  }
  const size_t ab = DTypeSize(p.ab_dtype), ds = DTypeSize(p.d_dtype);
  const char* a = static_cast<const char*>(p.a);
  const char* b = static_cast<const char*>(p.b);
  char* d = static_cast<char*>(p.d);
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t first = p.offsets[g], count = p.offsets[g + 1] - first;
    GemmParams q{.ab_dtype = p.ab_dtype, .d_dtype = p.d_dtype, .accumulate = p.accumulate};
    if (p.mode == GroupedGemmMode::kVariableRows) {
      if (count == 0) continue;
      q.a = a + first * p.k * ab;    // (count, k)
      q.b = b + g * p.n * p.k * ab;  // (n, k) or (k, n)
      q.d = d + first * p.n * ds;    // (count, n)
      q.transpose_b = p.transpose_b;
      q.m = count;
      q.n = p.n;
      q.k = p.k;
    } else {
      q.a = count > 0 ? a + first * p.m * ab : nullptr;  // (count, m)
      q.b = count > 0 ? b + first * p.n * ab : nullptr;  // (count, n)
      q.d = d + g * p.m * p.n * ds;                      // (m, n)
      q.transpose_a = true;
      q.m = p.m;
      q.n = p.n;
      q.k = count;
    }
    MIMO_RETURN_IF_ERROR(GemmCpu(q));
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
