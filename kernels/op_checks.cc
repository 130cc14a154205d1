// Argument checks shared by the ops, so that each rejects a bad call the same way on both devices.
#include "kernels/op_checks.h"

#include "absl/strings/str_cat.h"

namespace mimo::kernels {

absl::Status CheckFloatDType(const char* op, DType dtype) {
  if (dtype == DType::kBF16 || dtype == DType::kF32) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": dtype ", DTypeName(dtype), " is not supported (bf16 or f32)"));
}

absl::Status CheckRowsCols(const char* op, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0 || (rows > 0 && cols == 0)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": bad shape (", rows, ", ", cols, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckBuffers(const char* op, bool used,
                          std::initializer_list<std::pair<const void*, const char*>> buffers) {
  if (!used) return absl::OkStatus();
  for (const auto& [ptr, name] : buffers) {
    if (ptr == nullptr) return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " is null"));
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
