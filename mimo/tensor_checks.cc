// Argument checks on activations, row addressing and in-place accumulation.
#include "mimo/tensor_checks.h"

#include "absl/strings/str_cat.h"

namespace mimo {

absl::Status CheckActivation(const kernels::Tensor& x, int64_t features, kernels::DType dtype,
                             const char* block) {
  if (!x.defined() || x.dim() != 2 || x.size(1) != features || x.dtype() != dtype ||
      !x.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        block, ": expected a contiguous (tokens, ", features, ") ", kernels::DTypeName(dtype),
        " tensor, got ", x.defined() ? x.ToString() : "an undefined tensor"));
  }
  return absl::OkStatus();
}

absl::Status CheckSameShape(const kernels::Tensor& a, const kernels::Tensor& b, const char* what) {
  if (!a.defined() || !b.defined() || a.shape() != b.shape() || a.dtype() != b.dtype() ||
      !a.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": expected a contiguous tensor like ", b.defined() ? b.ToString() : "?",
                     ", got ", a.defined() ? a.ToString() : "an undefined tensor"));
  }
  return absl::OkStatus();
}

void* RowAt(const kernels::Tensor& t, int64_t row, int64_t width) {
  return static_cast<char*>(t.data()) + row * width * kernels::DTypeSize(t.dtype());
}

absl::Status AddInto(kernels::Ops& ops, const kernels::Tensor& dst, const kernels::Tensor& src) {
  if (dst.numel() != src.numel() || dst.dtype() != src.dtype() || !dst.is_contiguous() ||
      !src.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat("AddInto: ", dst.ToString(), " += ", src.ToString()));
  }
  return ops.Add({.dtype = dst.dtype(),
                  .a = dst.data(),
                  .b = src.data(),
                  .out = dst.data(),
                  .n = dst.numel()});
}

}  // namespace mimo
