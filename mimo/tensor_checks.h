// Small helpers shared by the blocks: argument checks on activations, row addressing and in-place
// accumulation.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace mimo {

// InvalidArgument unless x is a defined, contiguous (tokens, features) tensor of `dtype` on the
// ops' device.
absl::Status CheckActivation(const kernels::Tensor& x, int64_t features, kernels::DType dtype,
                             const char* block);
// InvalidArgument unless a and b have the same shape and dtype (a is contiguous).
absl::Status CheckSameShape(const kernels::Tensor& a, const kernels::Tensor& b, const char* what);
// The address of row `row` of a contiguous (rows, width) matrix held by `t` (a row block of a
// weight, an expert's slice of a stacked one, a range of activation rows).
void* RowAt(const kernels::Tensor& t, int64_t row, int64_t width);
// dst += src, elementwise (same dtype and element count, contiguous).
absl::Status AddInto(kernels::Ops& ops, const kernels::Tensor& dst, const kernels::Tensor& src);

}  // namespace mimo
