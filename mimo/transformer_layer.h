// A pre-norm transformer layer: y = h + mlp(norm2(h)) with h = x + attention(norm1(x)), hidden
// dropout before each residual add; the MLP comes from an MlpBuilder (dense or MoE).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"
#include "mimo/mlp_builder.h"
#include "mimo/norm.h"
#include "mimo/self_attention.h"

namespace mimo {

class TransformerLayer final : public Block {
 public:
  // Validates *ctx.config. Parameters under ctx.prefix (Megatron's names):
  // input_layernorm.*, self_attention.*, pre_mlp_layernorm.*, mlp.* (the builder's).
  // With a tensor-parallel group (ctx.groups.tp of n > 1) the layer is tensor + sequence
  // parallel: x and y are this member's block of the rows (T / n, C; member r rows
  // [r T / n, (r + 1) T / n)), the norms, residual adds and dropout work on that block
  // (dropout with the one-rank mask of those rows), attention and the MLP split their widths
  // (SelfAttention, DenseMlp); the same losses and gradients as on one rank.
  static absl::StatusOr<std::unique_ptr<TransformerLayer>> Create(const BuildContext& ctx,
                                                                  const MlpBuilder& mlp);

  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const kernels::Tensor& x) override;
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           const kernels::Tensor& dy) override;
  void AppendParameters(std::vector<Parameter*>& out) const override;
  // The MLP its builder made (a MoeLayer for MoeMlpBuilder).
  Block& mlp() const { return *mlp_; }

 private:
  TransformerLayer(const TransformerConfig& config, int layer_number, comm::Communicator* tp,
                   std::unique_ptr<Norm> input_norm, std::unique_ptr<SelfAttention> attention,
                   std::unique_ptr<Norm> pre_mlp_norm, std::unique_ptr<Block> mlp)
      : config_(config),
        layer_number_(layer_number),
        tp_(tp),
        input_norm_(std::move(input_norm)),
        attention_(std::move(attention)),
        pre_mlp_norm_(std::move(pre_mlp_norm)),
        mlp_(std::move(mlp)) {}

  // y = dropout(x) in place, or its backward (the same mask), on substream `site` of the layer.
  absl::Status HiddenDropout(const StepContext& ctx, const kernels::Tensor& x, int site) const;

  const TransformerConfig config_;
  const int layer_number_;
  comm::Communicator* const tp_;  // Sequence parallel over it when not null. Not owned.
  std::unique_ptr<Norm> input_norm_;
  std::unique_ptr<SelfAttention> attention_;
  std::unique_ptr<Norm> pre_mlp_norm_;
  std::unique_ptr<Block> mlp_;
};

}  // namespace mimo
