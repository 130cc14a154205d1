// Tensors: a shape, a dtype and strides over shared storage on one device; views share storage.
#include "kernels/tensor.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mimo::kernels {
namespace {

constexpr int64_t kMaxBytes = int64_t{1} << 62;

}  // namespace

Strides ContiguousStrides(const Shape& shape) {
  Strides strides(shape.size());
  int64_t stride = 1;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    strides[d] = stride;
    stride *= shape[d];
  }
  return strides;
}

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string ShapeToString(const Shape& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<Tensor> Tensor::Empty(const Shape& shape, DType dtype, Allocator& allocator,
                                     StreamHandle stream) {
  const int64_t element = static_cast<int64_t>(DTypeSize(dtype));
  if (element == 0) return absl::InvalidArgumentError("Tensor::Empty: unknown dtype");
  int64_t bytes = element;
  for (int64_t s : shape) {
    if (s < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Tensor::Empty: negative size in shape ", ShapeToString(shape)));
    }
    if (s > 0 && bytes > kMaxBytes / s) {
      return absl::InvalidArgumentError(absl::StrCat("Tensor::Empty: shape ", ShapeToString(shape),
                                                     " of ", DTypeName(dtype),
                                                     " needs more than 2^62 bytes"));
    }
    bytes *= s;
  }
  Tensor t;
  t.defined_ = true;
  t.dtype_ = dtype;
  t.device_ = allocator.device();
  t.shape_ = shape;
  t.strides_ = ContiguousStrides(shape);
  if (bytes > 0) {
    absl::StatusOr<void*> data = allocator.Allocate(static_cast<size_t>(bytes), stream);
    if (!data.ok()) return data.status();
    t.storage_ =
        std::make_shared<Storage>(*data, static_cast<size_t>(bytes), t.device_, &allocator);
  }
  return t;
}

Tensor Tensor::Wrap(void* data, const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.defined_ = true;
  t.dtype_ = dtype;
  t.device_ = device;
  t.shape_ = shape;
  t.strides_ = ContiguousStrides(shape);
  t.storage_ = std::make_shared<Storage>(
      data, static_cast<size_t>(NumElements(shape)) * DTypeSize(dtype), device, nullptr);
  return t;
}

absl::StatusOr<int> Tensor::Dim(int d, const char* op) const {
  const int n = dim();
  const int resolved = d < 0 ? d + n : d;
  if (resolved < 0 || resolved >= n) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": dimension ", d, " is out of range for ",
                                                   n, "-d tensor ", ShapeToString(shape_)));
  }
  return resolved;
}

int64_t Tensor::size(int d) const { return shape_[d < 0 ? d + dim() : d]; }
int64_t Tensor::stride(int d) const { return strides_[d < 0 ? d + dim() : d]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int d = dim() - 1; d >= 0; --d) {
    if (shape_[d] == 1) continue;
    if (strides_[d] != expected) return false;
    expected *= shape_[d];
  }
  return true;
}

void* Tensor::data() const {
  if (storage_ == nullptr) return nullptr;
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(DTypeSize(dtype_));
}

absl::StatusOr<Tensor> Tensor::Slice(int d, int64_t start, int64_t end) const {
  absl::StatusOr<int> dd = Dim(d, "Slice");
  if (!dd.ok()) return dd.status();
  if (start < 0 || start > end || end > shape_[*dd]) {
    return absl::InvalidArgumentError(absl::StrCat("Slice: [", start, ", ", end,
                                                   ") is not within dimension ", d, " of size ",
                                                   shape_[*dd], " of ", ShapeToString(shape_)));
  }
  Tensor t = *this;
  t.offset_ += start * strides_[*dd];
  t.shape_[*dd] = end - start;
  return t;
}

absl::StatusOr<Tensor> Tensor::Select(int d, int64_t index) const {
  absl::StatusOr<int> dd = Dim(d, "Select");
  if (!dd.ok()) return dd.status();
  if (index < 0 || index >= shape_[*dd]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Select: index ", index, " is out of range for dimension ", d, " of size ", shape_[*dd]));
  }
  Tensor t = *this;
  t.offset_ += index * strides_[*dd];
  t.shape_.erase(t.shape_.begin() + *dd);
  t.strides_.erase(t.strides_.begin() + *dd);
  return t;
}

absl::StatusOr<Tensor> Tensor::Transpose(int d0, int d1) const {
  absl::StatusOr<int> a = Dim(d0, "Transpose");
  if (!a.ok()) return a.status();
  absl::StatusOr<int> b = Dim(d1, "Transpose");
  if (!b.ok()) return b.status();
  Tensor t = *this;
  std::swap(t.shape_[*a], t.shape_[*b]);
  std::swap(t.strides_[*a], t.strides_[*b]);
  return t;
}

absl::StatusOr<Tensor> Tensor::View(const Shape& shape) const {
  if (!is_contiguous()) {
    return absl::FailedPreconditionError(
        absl::StrCat("View: ", ToString(), " is not contiguous; copy it first"));
  }
  Shape resolved = shape;
  int inferred = -1;
  int64_t known = 1;
  for (int d = 0; d < static_cast<int>(shape.size()); ++d) {
    if (shape[d] == -1 && inferred < 0) {
      inferred = d;
    } else if (shape[d] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("View: bad shape ", ShapeToString(shape), " (one size may be -1)"));
    } else {
      known *= shape[d];
    }
  }
  if (inferred >= 0) {
    if (known == 0 || numel() % known != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "View: cannot infer the -1 in ", ShapeToString(shape), " for ", numel(), " elements"));
    }
    resolved[inferred] = numel() / known;
  }
  if (NumElements(resolved) != numel()) {
    return absl::InvalidArgumentError(absl::StrCat("View: shape ", ShapeToString(shape), " has ",
                                                   NumElements(resolved), " elements, not ",
                                                   numel(), " as ", ShapeToString(shape_)));
  }
  Tensor t = *this;
  t.shape_ = resolved;
  t.strides_ = ContiguousStrides(resolved);
  return t;
}

std::string Tensor::ToString() const {
  if (!defined_) return "Tensor(undefined)";
  return absl::StrCat("Tensor(", DTypeName(dtype_), ", ", device_.ToString(), ", ",
                      ShapeToString(shape_), ", strides ", ShapeToString(strides_), ")");
}

}  // namespace mimo::kernels
