// A stack of transformer layers and its final norm (Megatron's TransformerBlock): the body of the
// language model and of each modality encoder.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"
#include "mimo/mlp_builder.h"
#include "mimo/moe_layer.h"
#include "mimo/norm.h"
#include "mimo/transformer_layer.h"

namespace mimo {

// The part of the stack a block holds (a pipeline stage's): layers [first_layer, first_layer +
// num_layers) of the config's, and the final norm or not.
struct TransformerBlockPart {
  int first_layer = 0;
  int num_layers = -1;  // -1: to the end of the stack.
  bool final_norm = true;
};

// A module's pipeline stage: stage `index` of `count` (Megatron's pp rank and size) holds layers
// [index L / count, (index + 1) L / count) of its L layers (L must divide by count), the last one
// also the final norm.
struct PipelineStage {
  int index = 0;
  int count = 1;
  bool first() const { return index == 0; }
  bool last() const { return index == count - 1; }
  // This stage's part of a stack of `num_layers`; InvalidArgument naming `module` when the stage
  // is not one of count >= 1 or the layers do not divide by the stages.
  absl::StatusOr<TransformerBlockPart> Part(int num_layers, const char* module) const;
};

class TransformerBlock final : public Block {
 public:
  // The part's layers of ctx.config->num_layers (all of them by default), numbered in the whole
  // stack, each with an MLP from `mlp`. Parameters ctx.prefix.layers.<i>.* and (with the final
  // norm) ctx.prefix.final_layernorm.*. InvalidArgument for a part outside the stack.
  static absl::StatusOr<std::unique_ptr<TransformerBlock>> Create(
      const BuildContext& ctx, const MlpBuilder& mlp, const TransformerBlockPart& part = {});

  // x (T, C) -> final_norm(layer_{L-1}(... layer_0(x))) over the part's layers.
  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const kernels::Tensor& x) override;
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           const kernels::Tensor& dy) override;
  void AppendParameters(std::vector<Parameter*>& out) const override;

  // The layers whose MLP is a MoeLayer, in order (for the per-step expert load).
  std::vector<MoeLayer*> moe_layers() const;

 private:
  TransformerBlock(std::vector<std::unique_ptr<TransformerLayer>> layers,
                   std::unique_ptr<Norm> final_norm)
      : layers_(std::move(layers)), final_norm_(std::move(final_norm)) {}

  std::vector<std::unique_ptr<TransformerLayer>> layers_;
  std::unique_ptr<Norm> final_norm_;  // Null without the final norm.
};

}  // namespace mimo
