// TransformerBlock: its layers in order, then the final norm; the backward in reverse.
#include "mimo/transformer_block.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mimo {
namespace {

struct BlockSaved final : SavedActivations {
  std::vector<std::unique_ptr<SavedActivations>> layers;
  std::unique_ptr<SavedActivations> final_norm;
};

}  // namespace

absl::StatusOr<TransformerBlockPart> PipelineStage::Part(int num_layers, const char* module) const {
  if (count < 1 || index < 0 || index >= count || num_layers % count != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(module, ": pipeline stage ", index, " of ", count, ": the ", num_layers,
                     " layers (num_layers) must split evenly over the stages"));
  }
  const int per_stage = num_layers / count;
  return TransformerBlockPart{
      .first_layer = index * per_stage, .num_layers = per_stage, .final_norm = last()};
}

absl::StatusOr<std::unique_ptr<TransformerBlock>> TransformerBlock::Create(
    const BuildContext& ctx, const MlpBuilder& mlp, const TransformerBlockPart& part) {
  MIMO_RETURN_IF_ERROR(ValidateTransformerConfig(*ctx.config));
  const int total = ctx.config->num_layers;
  const int count = part.num_layers < 0 ? total - part.first_layer : part.num_layers;
  if (part.first_layer < 0 || count < 0 || part.first_layer + count > total) {
    return absl::InvalidArgumentError(absl::StrCat("TransformerBlock: layers [", part.first_layer,
                                                   ", ", part.first_layer + count, ") of ", total));
  }
  std::vector<std::unique_ptr<TransformerLayer>> layers;
  for (int i = part.first_layer; i < part.first_layer + count; ++i) {
    BuildContext layer = ctx.Child(absl::StrCat("layers.", i));
    layer.layer_number = i;
    MIMO_ASSIGN_OR_RETURN(auto built, TransformerLayer::Create(layer, mlp));
    layers.push_back(std::move(built));
  }
  std::unique_ptr<Norm> final_norm;
  if (part.final_norm) {
    MIMO_ASSIGN_OR_RETURN(final_norm,
                          Norm::Create(ctx.Child("final_layernorm"), ctx.config->hidden_size));
  }
  return std::unique_ptr<TransformerBlock>(
      new TransformerBlock(std::move(layers), std::move(final_norm)));
}

absl::StatusOr<BlockOutput> TransformerBlock::Forward(const StepContext& ctx,
                                                      const kernels::Tensor& x) {
  auto saved = std::make_unique<BlockSaved>();
  kernels::Tensor h = x;
  for (const auto& layer : layers_) {
    MIMO_ASSIGN_OR_RETURN(BlockOutput out, layer->Forward(ctx, h));
    saved->layers.push_back(std::move(out.saved));
    h = std::move(out.y);
  }
  if (final_norm_ == nullptr) return BlockOutput{std::move(h), std::move(saved)};
  MIMO_ASSIGN_OR_RETURN(BlockOutput out, final_norm_->Forward(ctx, h));
  saved->final_norm = std::move(out.saved);
  return BlockOutput{std::move(out.y), std::move(saved)};
}

absl::StatusOr<kernels::Tensor> TransformerBlock::Backward(
    const StepContext& ctx, std::unique_ptr<SavedActivations> saved_base,
    const kernels::Tensor& dy) {
  MIMO_ASSIGN_OR_RETURN(auto saved, SavedAs<BlockSaved>(std::move(saved_base), "TransformerBlock"));
  kernels::Tensor dh = dy;
  if (final_norm_ != nullptr) {
    MIMO_ASSIGN_OR_RETURN(dh, final_norm_->Backward(ctx, std::move(saved->final_norm), dy));
    MIMO_RETURN_IF_ERROR(ReportGradientsReady(ctx, *final_norm_));
  }
  for (size_t i = layers_.size(); i-- > 0;) {
    MIMO_ASSIGN_OR_RETURN(dh, layers_[i]->Backward(ctx, std::move(saved->layers[i]), dh));
    MIMO_RETURN_IF_ERROR(ReportGradientsReady(ctx, *layers_[i]));
  }
  return dh;
}

void TransformerBlock::AppendParameters(std::vector<Parameter*>& out) const {
  for (const auto& layer : layers_) layer->AppendParameters(out);
  if (final_norm_ != nullptr) final_norm_->AppendParameters(out);
}

std::vector<MoeLayer*> TransformerBlock::moe_layers() const {
  std::vector<MoeLayer*> out;
  for (const auto& layer : layers_) {
    if (auto* moe = dynamic_cast<MoeLayer*>(&layer->mlp())) out.push_back(moe);
  }
  return out;
}

}  // namespace mimo
