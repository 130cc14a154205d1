// Element types of tensors: bf16 storage, fp32 accumulation and masters, int32/int64 indices.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace mimo::kernels {

enum class DType : uint8_t { kBF16, kF32, kI32, kI64 };

// Bytes per element: 2, 4, 4, 8; 0 for a value outside the enum.
size_t DTypeSize(DType type);
// "bf16", "f32", "i32", "i64"; "dtype(N)" for a value outside the enum.
absl::string_view DTypeName(DType type);

}  // namespace mimo::kernels
