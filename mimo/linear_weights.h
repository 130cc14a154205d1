// A linear layer's parameters (weight (out, in), optional bias (out,)) and its forward and
// backward over a range of output rows (how the fused query/key/value weight is used in parts).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/gemm.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "mimo/build_context.h"
#include "mimo/parameter.h"

namespace mimo {

struct LinearWeights {
  std::unique_ptr<Parameter> weight;  // (out, in), N(0, std^2), weight decay.
  std::unique_ptr<Parameter> bias;    // (out,), zeros, no weight decay; null without a bias.

  // Parameters ctx.prefix.weight and (with `bias`) ctx.prefix.bias, of this rank's shape (out,
  // in); `shards` place the weight in the full tensor split across ranks (a shard of dim 0 also
  // places the bias).
  static absl::StatusOr<LinearWeights> Create(const BuildContext& ctx, int64_t out, int64_t in,
                                              bool bias, float std,
                                              std::vector<ParameterShard> shards = {});

  int64_t out() const { return weight->spec().shape[0]; }
  int64_t in() const { return weight->spec().shape[1]; }
};

// Output rows [row0, row0 + rows) of a linear layer: y (tokens, rows) = act(x w[rows]^T + b[rows])
// over x (tokens, in); `pre_activation` (tokens, rows) with an activation. `add_bias` false leaves
// the bias out (a row-parallel layer's members but one: the sum of their products gets it once).
absl::Status LinearRowsForward(kernels::Ops& ops, const LinearWeights& lw, int64_t row0,
                               int64_t rows, const kernels::Tensor& x, const kernels::Tensor& y,
                               kernels::GemmActivation activation = kernels::GemmActivation::kNone,
                               const kernels::Tensor* pre_activation = nullptr,
                               bool add_bias = true);

struct LinearRowsBackward {
  int64_t row0 = 0;
  int64_t rows = 0;
  const kernels::Tensor* dy = nullptr;  // (tokens, rows)
  const kernels::Tensor* x = nullptr;   // (tokens, in) from the forward.
  // Optional (tokens, in): written, or added to with accumulate_dx.
  const kernels::Tensor* dx = nullptr;
  bool accumulate_dx = false;
  kernels::GemmActivation activation = kernels::GemmActivation::kNone;
  const kernels::Tensor* pre_activation = nullptr;   // (tokens, rows) with an activation.
  const kernels::Tensor* dpre_activation = nullptr;  // (tokens, rows) scratch, ditto.
  // Optional (rows, in) fp32: the rows' weight gradient written here instead of added to the
  // parameter's (to be summed over a group first); not for a layer with a bias.
  const kernels::Tensor* dw = nullptr;
};

// The backward of LinearRowsForward: adds dw and dbias of the rows to the parameters' grads (dw
// to b.dw instead when given).
absl::Status LinearRowsBackwardRun(kernels::Ops& ops, const LinearWeights& lw,
                                   const LinearRowsBackward& b);

}  // namespace mimo
