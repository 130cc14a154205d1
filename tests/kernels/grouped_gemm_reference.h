// Grouped matrix products in float64: the reference the CPU twin and the CUDA kernels are
// measured against, and the odd-shaped cases both tests run.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/grouped_gemm.h"

namespace mimo::kernels::testing {

struct GroupedGemmCase {
  const char* name;
  GroupedGemmMode mode;
  std::vector<int32_t> counts;  // Rows per group; the groups' rows start at row `first`.
  int64_t first, tail;          // Rows before the first group and after the last.
  int64_t m, n, k;
  bool transpose_b, accumulate;
};

// Every group's rows in order after `first` rows: offsets (groups + 1,).
inline std::vector<int32_t> OffsetsOf(const GroupedGemmCase& c) {
  std::vector<int32_t> offsets{static_cast<int32_t>(c.first)};
  for (int32_t n : c.counts) offsets.push_back(offsets.back() + n);
  return offsets;
}

inline int64_t RowsOf(const GroupedGemmCase& c) { return OffsetsOf(c).back() + c.tail; }

// `c`'s product over buffers a, b, d and offsets (OffsetsOf(c)) of dtypes `ab` and `d_dtype`.
inline GroupedGemmParams ParamsOf(const GroupedGemmCase& c, DType ab, DType d_dtype, const void* a,
                                  const void* b, void* d, const int32_t* offsets) {
  return {.mode = c.mode,
          .ab_dtype = ab,
          .d_dtype = d_dtype,
          .a = a,
          .b = b,
          .d = d,
          .offsets = offsets,
          .groups = static_cast<int64_t>(c.counts.size()),
          .rows = RowsOf(c),
          .m = c.m,
          .n = c.n,
          .k = c.k,
          .transpose_b = c.transpose_b,
          .accumulate = c.accumulate};
}

// The expected d: `d` (its old values, NaN where never written) with every group's product set
// or added.
inline std::vector<double> GroupedGemmFloat64(const GroupedGemmCase& c,
                                              const std::vector<double>& a,
                                              const std::vector<double>& b, std::vector<double> d) {
  const std::vector<int32_t> off = OffsetsOf(c);
  // Loops ordered so that the innermost one walks contiguous memory (the sums' order does not
  // matter in float64 at these sizes).
  for (size_t g = 0; g + 1 < off.size(); ++g) {
    if (c.mode == GroupedGemmMode::kVariableRows) {
      const double* bg = b.data() + static_cast<int64_t>(g) * c.n * c.k;
      std::vector<double> sum(c.n);
      for (int64_t r = off[g]; r < off[g + 1]; ++r) {
        const double* ar = a.data() + r * c.k;
        if (c.transpose_b) {  // b's rows are (n, k): a dot product per output.
          for (int64_t j = 0; j < c.n; ++j) {
            double s = 0;
            for (int64_t l = 0; l < c.k; ++l) s += ar[l] * bg[j * c.k + l];
            sum[j] = s;
          }
        } else {  // b is (k, n): a's row times b, one b row at a time.
          std::fill(sum.begin(), sum.end(), 0.0);
          for (int64_t l = 0; l < c.k; ++l) {
            for (int64_t j = 0; j < c.n; ++j) sum[j] += ar[l] * bg[l * c.n + j];
          }
        }
        for (int64_t j = 0; j < c.n; ++j) {
          double& out = d[r * c.n + j];
          out = c.accumulate ? out + sum[j] : sum[j];
        }
      }
    } else {  // Outer products of the group's rows of a (m) and b (n).
      std::vector<double> sum(c.m * c.n, 0.0);
      for (int64_t r = off[g]; r < off[g + 1]; ++r) {
        for (int64_t i = 0; i < c.m; ++i) {
          const double x = a[r * c.m + i];
          for (int64_t j = 0; j < c.n; ++j) sum[i * c.n + j] += x * b[r * c.n + j];
        }
      }
      for (int64_t i = 0; i < c.m * c.n; ++i) {
        double& out = d[static_cast<int64_t>(g) * c.m * c.n + i];
        out = c.accumulate ? out + sum[i] : sum[i];
      }
    }
  }
  return d;
}

// 70 groups (more than one warp's 32 per step of the blocks' search), empty ones around the
// 32-group edges.
inline std::vector<int32_t> SeventyCounts() {
  std::vector<int32_t> counts(70);
  for (int g = 0; g < 70; ++g) counts[g] = (g * 37) % 11;
  for (int g : {0, 30, 32, 33, 63, 64, 69}) counts[g] = 0;
  counts[31] = 150;  // Two row tiles of the FMA kernel's 64, more than one of 128.
  return counts;
}

// Cases of both modes: empty groups, groups of one row, counts across tile edges, rows outside
// every group, inner sizes that are and are not multiples of 8.
inline std::vector<GroupedGemmCase> GroupedGemmCases() {
  using M = GroupedGemmMode;
  return {
      {"ForwardOdd", M::kVariableRows, {1, 0, 130, 257, 7}, 3, 13, 0, 136, 64, true, false},
      {"InputGradient", M::kVariableRows, {40, 0, 0, 129, 1}, 0, 5, 0, 40, 72, false, false},
      {"ForwardAccumulate", M::kVariableRows, {17, 300}, 0, 0, 0, 48, 96, true, true},
      {"ManyGroups",
       M::kVariableRows,
       {9, 33, 0, 64, 65, 1, 0, 127, 128, 2, 200, 3},
       0,
       0,
       0,
       264,
       520,
       true,
       false},
      {"OddInner", M::kVariableRows, {5, 0, 11}, 1, 2, 0, 5, 7, false, false},
      {"OddInnerTransposed", M::kVariableRows, {3, 9}, 0, 4, 0, 13, 9, true, false},
      {"WeightGradient", M::kVariableDepth, {1, 0, 130, 257, 7}, 0, 6, 136, 72, 0, false, false},
      {"WeightGradientAccumulate", M::kVariableDepth, {64, 0, 33}, 2, 0, 40, 264, 0, false, true},
      {"WeightGradientOdd", M::kVariableDepth, {5, 2, 0}, 0, 1, 9, 11, 0, false, false},
      {"NoRows", M::kVariableRows, {0, 0}, 0, 3, 0, 16, 16, true, false},
      {"WeightGradientNoRows", M::kVariableDepth, {0, 0}, 0, 0, 16, 24, 0, false, false},
      {"SeventyGroups", M::kVariableRows, SeventyCounts(), 0, 7, 0, 16, 24, true, false},
      {"SeventyGroupsWeightGradient", M::kVariableDepth, SeventyCounts(), 0, 7, 16, 24, 0, false,
       false},
  };
}

// Elements of the inputs and the output of a case.
struct GroupedGemmSizes {
  int64_t a, b, d;
};

inline GroupedGemmSizes SizesOf(const GroupedGemmCase& c) {
  const int64_t rows = RowsOf(c), groups = static_cast<int64_t>(c.counts.size());
  if (c.mode == GroupedGemmMode::kVariableRows) {
    return {rows * c.k, groups * c.n * c.k, rows * c.n};
  }
  return {rows * c.m, rows * c.n, groups * c.m * c.n};
}

// max |got - want| over the written elements relative to the largest |want|; infinity when an
// element is NaN in one and not the other (written where it should not be, or not written).
inline double GroupedGemmError(const std::vector<double>& got, const std::vector<double>& want) {
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i]) != std::isnan(got[i])) return INFINITY;
    if (std::isnan(want[i])) continue;
    err = std::max(err, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return err / scale;
}

}  // namespace mimo::kernels::testing
