// NumPy .npy arrays of float32 or float16 (little-endian, C order), as float32: how a sample's
// log-mel features are stored in a WebDataset shard; and the writer of float32 ones.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace mimo::data {

struct NpyArray {
  std::vector<int64_t> shape;  // () for a scalar.
  std::vector<float> data;     // Row-major; float16 values widened exactly.
};

// Parses format versions 1.0, 2.0 and 3.0 (the header's dict: 'descr', 'fortran_order',
// 'shape'). InvalidArgument naming `name` for a bad magic string or header, a dtype other than
// '<f4' and '<f2' (big-endian and integer arrays among them), fortran_order True, or data whose
// size does not match the shape.
absl::StatusOr<NpyArray> ParseNpy(absl::string_view bytes, absl::string_view name);

// An IEEE binary16 value as float (subnormals, infinities and NaN included).
float HalfToFloat(uint16_t half);

// `values` (row-major, shape `shape`; () for a scalar) as a float32 .npy file, format 1.0.
// InvalidArgument for a negative dimension or a value count that is not the shape's.
absl::StatusOr<std::string> EncodeNpy(const std::vector<int64_t>& shape,
                                      absl::Span<const float> values);

// The pieces of EncodeNpy, for writers of other dtypes or headers. The header dict numpy writes
// for a C-order array: "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }" ("(3,)"
// for one dimension).
std::string NpyHeaderDict(absl::string_view descr, const std::vector<int64_t>& shape);
// Everything before the data: the magic string, format `version` (1: a 2-byte header length,
// 2 or 3: a 4-byte one), then `dict` padded with spaces and a newline so the data starts at a
// multiple of 64 bytes.
std::string NpyPreamble(absl::string_view dict, int version = 1);

}  // namespace mimo::data
