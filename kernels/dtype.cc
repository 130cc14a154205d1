// Element types of tensors: bf16 storage, fp32 accumulation and masters, int32/int64 indices.
#include "kernels/dtype.h"

namespace mimo::kernels {

size_t DTypeSize(DType type) {
  switch (type) {
    case DType::kBF16:
      return 2;
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

absl::string_view DTypeName(DType type) {
  switch (type) {
    case DType::kBF16:
      return "bf16";
    case DType::kF32:
      return "f32";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
  }
  return "dtype(?)";
}

}  // namespace mimo::kernels
