// NumPy .npy arrays of float32 or float16 (little-endian, C order), as float32: how a sample's
// log-mel features are stored in a WebDataset shard.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

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

}  // namespace mimo::data
