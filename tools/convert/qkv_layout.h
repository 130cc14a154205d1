// The fused attention projection's rows in mimo's order and in Megatron-Core's, for export and
// import: mimo keeps every query head's rows, then each query group's key rows, then each
// group's value rows; Megatron interleaves them per group (the group's query heads, its key, its
// value).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "mimo/v1/job_spec.pb.h"

namespace mimo::tools {

struct QkvShape {
  int64_t heads = 0;     // H
  int64_t groups = 0;    // G, dividing H
  int64_t head_dim = 0;  // D
  int64_t rows() const { return (heads + 2 * groups) * head_dim; }
};

// Whether `name` is a fused QKV weight or bias (".self_attention.linear_qkv.weight" / ".bias").
bool IsFusedQkv(absl::string_view name);

// The attention sizes of `module`'s transformer (query groups 0: one per head; head width
// hidden / heads). InvalidArgument for a module without a model or with sizes that do not divide.
absl::StatusOr<QkvShape> QkvShapeOf(const v1::Module& module);

// Megatron's row of mimo's row `row` (in [0, rows())).
int64_t MegatronRow(const QkvShape& s, int64_t row);

// Mimo's rows [first, first + count) as runs (first Megatron row, count) of consecutive Megatron
// rows, in mimo's order.
std::vector<std::pair<int64_t, int64_t>> MegatronRuns(const QkvShape& s, int64_t first,
                                                      int64_t count);

// `in` (rows() rows of `row_bytes`) in mimo's order, written to `out` in Megatron's.
void ToMegatronOrder(const QkvShape& s, size_t row_bytes, const char* in, char* out);

}  // namespace mimo::tools
