// ExchangeSlots (an all-to-all of equal slots) and InterleaveSlots (a row permutation).
#include "mimo/head_exchange.h"

#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/comm_type.h"

namespace mimo {

using kernels::Tensor;

absl::StatusOr<Tensor> ExchangeSlots(kernels::Ops& ops, comm::Communicator& group,
                                     const Tensor& slots) {
  const int n = group.size();
  if (!slots.defined() || slots.dim() != 3 || slots.size(0) != n || !slots.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExchangeSlots: needs contiguous (", n, ", rows, width) slots, got ",
                     slots.defined() ? slots.ToString() : std::string("an undefined tensor")));
  }
  MIMO_ASSIGN_OR_RETURN(const comm::DataType type, CommType(slots.dtype()));
  MIMO_ASSIGN_OR_RETURN(Tensor out,
                        Tensor::Empty(slots.shape(), slots.dtype(), ops.allocator(), ops.stream()));
  if (n == 1) {
    MIMO_RETURN_IF_ERROR(ops.Copy(out.data(), slots.data(), slots.nbytes()));
    return out;
  }
  const std::vector<size_t> counts(n, static_cast<size_t>(slots.numel() / n));
  // The communicator works on its own stream: the slots must be written first.
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  MIMO_RETURN_IF_ERROR(group.AllToAll(slots.data(), counts, out.data(), counts, type));
  return out;
}

absl::StatusOr<Tensor> InterleaveSlots(kernels::Ops& ops, const Tensor& x, int n, bool inverse) {
  const bool ok = x.defined() && x.is_contiguous() && n >= 1 &&
                  (inverse ? x.dim() == 2 && x.size(1) % n == 0 : x.dim() == 3 && x.size(0) == n);
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "InterleaveSlots: needs contiguous ", inverse ? "(rows, n * width)" : "(n, rows, width)",
        " for n = ", n, ", got ", x.defined() ? x.ToString() : std::string("an undefined tensor")));
  }
  const int64_t rows = inverse ? x.size(0) : x.size(1);
  const int64_t width = inverse ? x.size(1) / n : x.size(2);
  // Both as (n R, E) row tables: slot-major s * R + r and row-major r * n + s.
  std::vector<int32_t> ids(static_cast<size_t>(n * rows));
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t slot_major = s * rows + r, row_major = r * n + s;
      if (inverse) {
        ids[slot_major] = static_cast<int32_t>(row_major);
      } else {
        ids[row_major] = static_cast<int32_t>(slot_major);
      }
    }
  }
  MIMO_ASSIGN_OR_RETURN(Tensor device_ids, Tensor::Empty({n * rows}, kernels::DType::kI32,
                                                         ops.allocator(), ops.stream()));
  MIMO_RETURN_IF_ERROR(
      ops.CopyFromHost(device_ids.data(), ids.data(), ids.size() * sizeof(int32_t)));
  const kernels::Shape shape =
      inverse ? kernels::Shape{n, rows, width} : kernels::Shape{rows, n * width};
  MIMO_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty(shape, x.dtype(), ops.allocator(), ops.stream()));
  MIMO_RETURN_IF_ERROR(ops.Embedding({.dtype = x.dtype(),
                                      .table = x.data(),
                                      .ids = device_ids.data<int32_t>(),
                                      .out = out.data(),
                                      .vocab = n * rows,
                                      .tokens = n * rows,
                                      .dim = width}));
  return out;
}

}  // namespace mimo
