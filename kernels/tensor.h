// Tensors: a shape, a dtype and strides over shared storage on one device; views share storage.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/allocator.h"
#include "kernels/device.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// Sizes per dimension (outermost first), and strides in elements.
using Shape = absl::InlinedVector<int64_t, 6>;
using Strides = absl::InlinedVector<int64_t, 6>;

// Row-major strides of `shape` (the last dimension varies fastest).
Strides ContiguousStrides(const Shape& shape);
// Product of the sizes; 1 for a scalar (no dimensions).
int64_t NumElements(const Shape& shape);
// "[2, 3, 4]".
std::string ShapeToString(const Shape& shape);

// Memory a tensor's views share: freed through its allocator when the last view goes, unless
// it wraps memory owned elsewhere (no allocator).
class Storage {
 public:
  Storage(void* data, size_t bytes, Device device, Allocator* allocator)
      : data_(data), bytes_(bytes), device_(device), allocator_(allocator) {}
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (allocator_ != nullptr) allocator_->Free(data_);
  }
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* const data_;
  const size_t bytes_;
  const Device device_;
  Allocator* const allocator_;
};

// A view: element (i0, i1, ...) is at storage + (offset + sum(i_k * stride_k)) * DTypeSize.
// Copying a Tensor copies the view, not the data. A default-constructed Tensor is undefined.
// Dimension arguments may be negative, counting from the end (-1 is the last).
class Tensor {
 public:
  Tensor() = default;

  // A new contiguous tensor from `allocator` (memory left uninitialized), for work on `stream`.
  // InvalidArgument for a negative size or more than 2^62 bytes; the allocator's error when
  // memory runs out. A tensor of zero elements holds no memory.
  static absl::StatusOr<Tensor> Empty(const Shape& shape, DType dtype, Allocator& allocator,
                                      StreamHandle stream = nullptr);
  // A contiguous view of memory owned elsewhere (which must outlive every view of it).
  static Tensor Wrap(void* data, const Shape& shape, DType dtype, Device device);

  bool defined() const { return defined_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  const Shape& shape() const { return shape_; }
  const Strides& strides() const { return strides_; }
  int64_t size(int d) const;
  int64_t stride(int d) const;
  int64_t numel() const { return NumElements(shape_); }
  int64_t nbytes() const { return numel() * static_cast<int64_t>(DTypeSize(dtype_)); }
  int64_t offset() const { return offset_; }
  // Row-major without gaps (size-1 dimensions may have any stride).
  bool is_contiguous() const;

  // The first element; null when the tensor holds no memory.
  void* data() const;
  template <typename T>
  T* data() const {
    return static_cast<T*>(data());
  }

  // Elements [start, end) of dimension `d` (0 <= start <= end <= size).
  absl::StatusOr<Tensor> Slice(int d, int64_t start, int64_t end) const;
  // Element `index` of dimension `d`, which is removed.
  absl::StatusOr<Tensor> Select(int d, int64_t index) const;
  // Dimensions d0 and d1 swapped.
  absl::StatusOr<Tensor> Transpose(int d0, int d1) const;
  // The same elements under another shape (one size may be -1, inferred); the tensor must be
  // contiguous.
  absl::StatusOr<Tensor> View(const Shape& shape) const;

  // "Tensor(bf16, cuda:0, [2, 3], strides [3, 1])".
  std::string ToString() const;

 private:
  // The dimension `d` names, or InvalidArgument.
  absl::StatusOr<int> Dim(int d, const char* op) const;

  bool defined_ = false;
  std::shared_ptr<Storage> storage_;  // Null when the tensor holds no memory.
  DType dtype_ = DType::kF32;
  Device device_;
  Shape shape_;
  Strides strides_;
  int64_t offset_ = 0;  // Elements.
};

}  // namespace mimo::kernels
