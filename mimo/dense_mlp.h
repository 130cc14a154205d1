// The dense MLP of a transformer layer: fc1, the activation (SwiGLU or GELU), fc2.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"
#include "mimo/linear_weights.h"
#include "mimo/mlp_builder.h"

namespace mimo {

class DenseMlp final : public Block {
 public:
  // Parameters (C hidden, F ffn_hidden_size): linear_fc1.weight (2F, C) for SwiGLU (gate rows,
  // then up rows) or (F, C) for GELU; linear_fc2.weight (C, F) with std init_std /
  // sqrt(2 * num_layers); biases with add_bias_linear. Width `ffn` overrides F (0: the config's).
  //
  // With a tensor-parallel group of n > 1 members (ctx.groups.tp), member r holds slice r of the
  // width: fc1 is column parallel (its F / n rows of the gate and of the up block), fc2 row
  // parallel (its F / n columns), so each weight is its slice of the one-rank weight with the
  // same initial values; and the layer is sequence parallel: its input and output are the
  // member's block of the rows (T / n, C), gathered before fc1 (and again in the backward: only
  // the member's rows are kept) and reduce-scattered after fc2.
  // fc1's bias is split with its rows; fc2's is whole on every member, added to the product by
  // member 0 only, and its gradient (from the gathered output gradient) is the same on all.
  // InvalidArgument when n does not divide F.
  static absl::StatusOr<std::unique_ptr<DenseMlp>> Create(const BuildContext& ctx, int64_t ffn = 0);

  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const kernels::Tensor& x) override;
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           const kernels::Tensor& dy) override;
  void AppendParameters(std::vector<Parameter*>& out) const override;

 private:
  DenseMlp(const TransformerConfig& config, int64_t ffn, comm::Communicator* tp, bool add_fc2_bias,
           LinearWeights fc1, LinearWeights fc2)
      : config_(config),
        ffn_(ffn),
        tp_(tp),
        add_fc2_bias_(add_fc2_bias),
        fc1_(std::move(fc1)),
        fc2_(std::move(fc2)) {}

  const TransformerConfig config_;
  const int64_t ffn_;             // This member's part of the width: F / tp.
  comm::Communicator* const tp_;  // Null: no tensor parallelism. Not owned.
  const bool add_fc2_bias_;       // This member adds fc2's bias (member 0 of tp).
  LinearWeights fc1_;
  LinearWeights fc2_;
};

// Builds DenseMlp (the config's ffn_hidden_size, or `ffn` when it is not 0).
class DenseMlpBuilder final : public MlpBuilder {
 public:
  explicit DenseMlpBuilder(int64_t ffn = 0) : ffn_(ffn) {}
  absl::StatusOr<std::unique_ptr<Block>> Build(const BuildContext& ctx) const override;

 private:
  int64_t ffn_;
};

}  // namespace mimo
