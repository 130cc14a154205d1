// Argument checks shared by the ops, so that each rejects a bad call the same way on both devices.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "absl/status/status.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// InvalidArgument unless `dtype` is bf16 or f32 (the storage types of activations).
absl::Status CheckFloatDType(const char* op, DType dtype);
// InvalidArgument for negative sizes, or rows without columns.
absl::Status CheckRowsCols(const char* op, int64_t rows, int64_t cols);
// InvalidArgument naming the first null buffer, unless nothing is to be read or written (`used`
// false).
absl::Status CheckBuffers(const char* op, bool used,
                          std::initializer_list<std::pair<const void*, const char*>> buffers);

}  // namespace mimo::kernels
