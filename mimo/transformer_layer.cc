// TransformerLayer: the pre-norm residual structure around SelfAttention and the built MLP.
#include "mimo/transformer_layer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::Tensor;

struct LayerSaved final : SavedActivations {
  std::unique_ptr<SavedActivations> input_norm, attention, pre_mlp_norm, mlp;
};

// Dropout substreams of a layer: two per layer, after attention and after the MLP.
constexpr int kAttentionSite = 0;
constexpr int kMlpSite = 1;

}  // namespace

absl::StatusOr<std::unique_ptr<TransformerLayer>> TransformerLayer::Create(
    const BuildContext& ctx, const MlpBuilder& mlp_builder) {
  if (ctx.ops == nullptr || ctx.config == nullptr) {
    return absl::InvalidArgumentError("TransformerLayer: the build context needs ops and a config");
  }
  MIMO_RETURN_IF_ERROR(ValidateTransformerConfig(*ctx.config));
  if (ctx.layer_number < 0 || ctx.layer_number >= ctx.config->num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("TransformerLayer: layer ", ctx.layer_number, " of ", ctx.config->num_layers));
  }
  comm::Communicator* tp = ModelGroups::Size(ctx.groups.tp) > 1 ? ctx.groups.tp : nullptr;
  const int64_t hidden = ctx.config->hidden_size;
  MIMO_ASSIGN_OR_RETURN(auto input_norm, Norm::Create(ctx.Child("input_layernorm"), hidden));
  MIMO_ASSIGN_OR_RETURN(auto attention, SelfAttention::Create(ctx.Child("self_attention")));
  MIMO_ASSIGN_OR_RETURN(auto pre_mlp_norm, Norm::Create(ctx.Child("pre_mlp_layernorm"), hidden));
  MIMO_ASSIGN_OR_RETURN(auto mlp, mlp_builder.Build(ctx.Child("mlp")));
  if (mlp == nullptr) return absl::InternalError("TransformerLayer: the MLP builder built nothing");
  return std::unique_ptr<TransformerLayer>(
      new TransformerLayer(*ctx.config, ctx.layer_number, tp, std::move(input_norm),
                           std::move(attention), std::move(pre_mlp_norm), std::move(mlp)));
}

absl::Status TransformerLayer::HiddenDropout(const StepContext& ctx, const Tensor& x,
                                             int site) const {
  // Sequence parallel: x is this member's block of the rows, which take the mask the same rows
  // take on one rank (element indices counted from the first row of the whole batch); context
  // parallel, each of the rank's runs of rows takes the mask of the tokens it holds.
  const int64_t c = config_.hidden_size, rows = x.size(0);
  const int64_t row0 = ModelGroups::Rank(tp_) * rows;  // In the rank's rows.
  auto masked = [&](int64_t local, int64_t global, int64_t n) {
    return ctx.ops->Dropout({.dtype = x.dtype(),
                             .x = RowAt(x, local - row0, c),
                             .y = RowAt(x, local - row0, c),
                             .n = n * c,
                             .p = config_.hidden_dropout,
                             .seed = ctx.dropout_seed,
                             .substream = static_cast<uint32_t>(2 * layer_number_ + site),
                             .kind = static_cast<uint32_t>(ctx.dropout_kind),
                             .offset = ctx.dropout_offset + static_cast<uint64_t>(global * c)});
  };
  if (ctx.sequences == nullptr || ctx.sequences->context_size() == 1) {
    return masked(row0, row0, rows);
  }
  for (const parallel::TokenRun& r : ctx.sequences->runs()) {
    const int64_t begin = std::max(r.local, row0), end = std::min(r.local + r.length, row0 + rows);
    if (begin < end) MIMO_RETURN_IF_ERROR(masked(begin, r.global + begin - r.local, end - begin));
  }
  return absl::OkStatus();
}

absl::StatusOr<BlockOutput> TransformerLayer::Forward(const StepContext& ctx, const Tensor& x) {
  MIMO_RETURN_IF_ERROR(CheckActivation(x, config_.hidden_size, config_.dtype, "TransformerLayer"));
  const bool dropout = config_.hidden_dropout > 0.0f;
  auto saved = std::make_unique<LayerSaved>();
  // h = x + dropout(attention(norm1(x)))
  MIMO_ASSIGN_OR_RETURN(BlockOutput n1, input_norm_->Forward(ctx, x));
  saved->input_norm = std::move(n1.saved);
  MIMO_ASSIGN_OR_RETURN(BlockOutput attn, attention_->Forward(ctx, n1.y));
  saved->attention = std::move(attn.saved);
  if (dropout) MIMO_RETURN_IF_ERROR(HiddenDropout(ctx, attn.y, kAttentionSite));
  MIMO_RETURN_IF_ERROR(AddInto(*ctx.ops, attn.y, x));
  const Tensor h = std::move(attn.y);
  // y = h + dropout(mlp(norm2(h)))
  MIMO_ASSIGN_OR_RETURN(BlockOutput n2, pre_mlp_norm_->Forward(ctx, h));
  saved->pre_mlp_norm = std::move(n2.saved);
  MIMO_ASSIGN_OR_RETURN(BlockOutput mlp, mlp_->Forward(ctx, n2.y));
  saved->mlp = std::move(mlp.saved);
  MIMO_RETURN_IF_ERROR(CheckSameShape(mlp.y, x, "TransformerLayer: the MLP's output"));
  if (dropout) MIMO_RETURN_IF_ERROR(HiddenDropout(ctx, mlp.y, kMlpSite));
  MIMO_RETURN_IF_ERROR(AddInto(*ctx.ops, mlp.y, h));
  return BlockOutput{std::move(mlp.y), std::move(saved)};
}

absl::StatusOr<Tensor> TransformerLayer::Backward(const StepContext& ctx,
                                                  std::unique_ptr<SavedActivations> saved_base,
                                                  const Tensor& dy) {
  MIMO_ASSIGN_OR_RETURN(auto saved, SavedAs<LayerSaved>(std::move(saved_base), "TransformerLayer"));
  MIMO_RETURN_IF_ERROR(
      CheckActivation(dy, config_.hidden_size, config_.dtype, "TransformerLayer backward"));
  const bool dropout = config_.hidden_dropout > 0.0f;
  // dh = dy + norm2'(mlp'(dropout'(dy)))
  Tensor dm = dy;
  if (dropout) {
    MIMO_ASSIGN_OR_RETURN(dm, NewTensor(ctx, dy.shape(), dy.dtype()));
    MIMO_RETURN_IF_ERROR(ctx.ops->Copy(dm.data(), dy.data(), dy.nbytes()));
    MIMO_RETURN_IF_ERROR(HiddenDropout(ctx, dm, kMlpSite));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor dn2, mlp_->Backward(ctx, std::move(saved->mlp), dm));
  MIMO_ASSIGN_OR_RETURN(Tensor dh,
                        pre_mlp_norm_->Backward(ctx, std::move(saved->pre_mlp_norm), dn2));
  MIMO_RETURN_IF_ERROR(AddInto(*ctx.ops, dh, dy));
  // dx = dh + norm1'(attention'(dropout'(dh)))
  Tensor da = dh;
  if (dropout) {
    MIMO_ASSIGN_OR_RETURN(da, NewTensor(ctx, dh.shape(), dh.dtype()));
    MIMO_RETURN_IF_ERROR(ctx.ops->Copy(da.data(), dh.data(), dh.nbytes()));
    MIMO_RETURN_IF_ERROR(HiddenDropout(ctx, da, kAttentionSite));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor dn1, attention_->Backward(ctx, std::move(saved->attention), da));
  MIMO_ASSIGN_OR_RETURN(Tensor dx, input_norm_->Backward(ctx, std::move(saved->input_norm), dn1));
  MIMO_RETURN_IF_ERROR(AddInto(*ctx.ops, dx, dh));
  return dx;
}

void TransformerLayer::AppendParameters(std::vector<Parameter*>& out) const {
  input_norm_->AppendParameters(out);
  attention_->AppendParameters(out);
  pre_mlp_norm_->AppendParameters(out);
  mlp_->AppendParameters(out);
}

}  // namespace mimo
