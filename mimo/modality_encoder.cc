// ModalityEncoder: patches or stacked frames -> input projection + position embeddings -> the
// transformer -> the projector; the backward in reverse.
#include "mimo/modality_encoder.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/dense_mlp.h"
#include "mimo/sequence_parallel.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

struct EncoderSaved final : SavedActivations {
  std::unique_ptr<PackedSequences> sequences;  // The samples' tokens, then the padding rows.
  Tensor rows;         // First stage: (span, token_features), what the input projection read.
  int64_t tokens = 0;  // Without the padding rows.
  std::unique_ptr<SavedActivations> encoder, projector;
};

// Where a member's rows lie: the tokens (padding included) in cp equal spans, cp member c
// holding span c, tp member t block t of its span.
struct Rows {
  int64_t span = 0;   // Rows of a cp member.
  int64_t first = 0;  // Its span's first row.
  int64_t block = 0;  // Rows of a member (span / tp).
  int64_t own = 0;    // Its block's first row in the span.

  static int64_t PaddingOf(int64_t tokens, comm::Communicator* tp, comm::Communicator* cp) {
    const int64_t members = ModelGroups::Size(tp) * ModelGroups::Size(cp);
    return (members - tokens % members) % members;
  }
  static Rows Of(int64_t tokens, comm::Communicator* tp, comm::Communicator* cp) {
    Rows r;
    r.span = tokens / ModelGroups::Size(cp);
    r.first = ModelGroups::Rank(cp) * r.span;
    r.block = r.span / ModelGroups::Size(tp);
    r.own = ModelGroups::Rank(tp) * r.block;
    return r;
  }
};

// The layers' context: the encoder's sequences, and the dropout masks of the member's span.
StepContext Inner(const StepContext& ctx, const EncoderSaved& saved, const Rows& r, int64_t width) {
  StepContext inner = ctx;
  inner.sequences = saved.sequences.get();
  inner.padding_rows = saved.sequences->tokens() - saved.tokens;
  inner.dropout_offset += static_cast<uint64_t>(r.first * width);
  return inner;
}

}  // namespace

int64_t ModalityEncoderConfig::max_tokens() const {
  if (input == EncoderInput::kImages) {
    return patch_size > 0 ? (image_size / patch_size) * (image_size / patch_size) : 0;
  }
  return frames_per_token > 0 ? max_frames / frames_per_token : 0;
}

int64_t ModalityEncoderConfig::token_features() const {
  return input == EncoderInput::kImages ? num_channels * patch_size * patch_size
                                        : num_mel_bins * frames_per_token;
}

absl::Status ValidateModalityEncoderConfig(const ModalityEncoderConfig& c) {
  MIMO_RETURN_IF_ERROR(ValidateTransformerConfig(c.transformer));
  if (c.input == EncoderInput::kImages) {
    if (c.patch_size < 1 || c.image_size < c.patch_size || c.image_size % c.patch_size != 0 ||
        c.num_channels < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ModalityEncoderConfig: image_size ", c.image_size, " must be a positive multiple of ",
          "patch_size ", c.patch_size, ", with num_channels ", c.num_channels, " >= 1"));
    }
  } else if (c.num_mel_bins < 1 || c.frames_per_token < 1 || c.max_frames < c.frames_per_token ||
             c.max_frames % c.frames_per_token != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ModalityEncoderConfig: needs num_mel_bins >= 1 and max_frames a positive multiple of ",
        "frames_per_token, got ", c.num_mel_bins, ", ", c.max_frames, " and ", c.frames_per_token));
  }
  if (c.output_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ModalityEncoderConfig: output_size ", c.output_size, " < 1"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ModalityEncoder>> ModalityEncoder::Create(
    const BuildContext& ctx, const ModalityEncoderConfig& config, const PipelineStage& stage) {
  MIMO_RETURN_IF_ERROR(ValidateModalityEncoderConfig(config));
  MIMO_ASSIGN_OR_RETURN(const TransformerBlockPart layers,
                        stage.Part(config.transformer.num_layers, "ModalityEncoder"));
  comm::Communicator* tp = ModelGroups::Size(ctx.groups.tp) > 1 ? ctx.groups.tp : nullptr;
  comm::Communicator* cp = ModelGroups::Size(ctx.groups.cp) > 1 ? ctx.groups.cp : nullptr;
  const int members = ModelGroups::Size(tp) * ModelGroups::Size(cp);
  if (config.max_tokens() < members - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ModalityEncoder: tp ", ModelGroups::Size(tp), " x cp ", ModelGroups::Size(cp),
                     " pads up to ", members - 1, " rows, more than the position embeddings' ",
                     config.max_tokens(), " tokens"));
  }
  const TransformerConfig& tc = config.transformer;
  if (cp != nullptr &&
      (tc.num_attention_heads % members != 0 || tc.query_groups() % members != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ModalityEncoder: context parallelism trades head shares over the cp group: tp ",
        ModelGroups::Size(tp), " x cp ", cp->size(), " must divide num_attention_heads (",
        tc.num_attention_heads, ") and num_query_groups (", tc.query_groups(), ")"));
  }
  BuildContext inner = ctx;
  inner.config = &config.transformer;
  BuildContext whole = inner;  // The embeddings and projector: whole on every tp member.
  whole.groups.tp = nullptr;
  whole.groups.cp = nullptr;
  whole.groups.tp_cp = nullptr;
  const TransformerConfig& t = config.transformer;
  std::optional<LinearWeights> input_projection;
  std::unique_ptr<Parameter> positions;
  if (stage.first()) {
    MIMO_ASSIGN_OR_RETURN(
        input_projection,
        LinearWeights::Create(whole.Child("embeddings.input_projection"), t.hidden_size,
                              config.token_features(), /*bias=*/true, t.init_std));
    MIMO_ASSIGN_OR_RETURN(positions,
                          whole.Child("embeddings.position_embedding")
                              .NewParameter("weight", {config.max_tokens(), t.hidden_size},
                                            InitKind::kNormal, t.init_std, true));
  }
  MIMO_ASSIGN_OR_RETURN(
      auto encoder, TransformerBlock::Create(inner.Child("encoder"), DenseMlpBuilder(), layers));
  std::unique_ptr<Projector> projector;
  if (stage.last()) {
    MIMO_ASSIGN_OR_RETURN(projector, Projector::Create(whole.Child("projector"), config.projector,
                                                       t.hidden_size, config.output_size));
  }
  return std::unique_ptr<ModalityEncoder>(
      new ModalityEncoder(config, stage, tp, cp, std::move(input_projection), std::move(positions),
                          std::move(encoder), std::move(projector)));
}

absl::StatusOr<EncoderOutput> ModalityEncoder::Forward(const StepContext& ctx,
                                                       const EncoderBatch& batch) {
  kernels::Ops& ops = *ctx.ops;
  const ModalityEncoderConfig& c = config_;
  const DType dtype = c.transformer.dtype;
  const int64_t width = c.transformer.hidden_size, features = c.token_features();
  const Tensor& in = batch.input;
  const bool first = stage_.first();
  if (first && (!in.defined() || in.dtype() != dtype || !in.is_contiguous())) {
    return absl::InvalidArgumentError(
        absl::StrCat("ModalityEncoder: needs a contiguous ", kernels::DTypeName(dtype), " input"));
  }
  EncoderOutput out;
  auto saved = std::make_unique<EncoderSaved>();
  if (c.input == EncoderInput::kImages) {
    const int64_t n = first ? (in.dim() == 4 ? in.size(0) : -1) : batch.images;
    const kernels::Shape want{n, c.num_channels, c.image_size, c.image_size};
    if (n < 0 || (first && in.shape() != want)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ModalityEncoder: needs images (N, ", c.num_channels, ", ", c.image_size, ", ",
          c.image_size, "), got ", first ? in.ToString() : absl::StrCat(n, " images")));
    }
    const int64_t p = c.max_tokens();
    out.tokens.assign(n, static_cast<int32_t>(p));
    saved->tokens = n * p;
    if (first) {
      MIMO_ASSIGN_OR_RETURN(saved->rows, NewTensor(ctx, {n * p, features}, dtype));
      MIMO_RETURN_IF_ERROR(ops.Patchify({.dtype = dtype,
                                         .in = in.data(),
                                         .out = saved->rows.data(),
                                         .batch = n,
                                         .channels = c.num_channels,
                                         .height = c.image_size,
                                         .width = c.image_size,
                                         .patch = c.patch_size}));
    }
  } else {
    if (first && (in.dim() != 2 || in.size(1) != c.num_mel_bins)) {
      return absl::InvalidArgumentError(absl::StrCat("ModalityEncoder: needs frames (F, ",
                                                     c.num_mel_bins, "), got ", in.ToString()));
    }
    int64_t total = 0;
    for (int32_t f : batch.frames) {
      if (f < c.frames_per_token || f > c.max_frames || f % c.frames_per_token != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ModalityEncoder: a sample of ", f, " frames (needs a positive multiple of ",
            c.frames_per_token, " up to ", c.max_frames, ")"));
      }
      out.tokens.push_back(static_cast<int32_t>(f / c.frames_per_token));
      total += f;
    }
    if (first && total != in.size(0)) {
      return absl::InvalidArgumentError(absl::StrCat("ModalityEncoder: samples of ", total,
                                                     " frames in all, input of ", in.size(0)));
    }
    saved->tokens = total / c.frames_per_token;
    // Stacking frames_per_token consecutive frames is a view.
    if (first) {
      MIMO_ASSIGN_OR_RETURN(saved->rows, in.View({saved->tokens, features}));
    }
  }
  // Tensor and context parallel: zero rows in a sequence of their own pad the tokens to equal
  // row blocks.
  const int64_t padding = Rows::PaddingOf(saved->tokens, tp_, cp_);
  const int64_t tokens = saved->tokens + padding;
  std::vector<int32_t> lengths = out.tokens;
  if (padding > 0) {
    lengths.push_back(static_cast<int32_t>(padding));
    if (first) {
      MIMO_ASSIGN_OR_RETURN(Tensor padded, NewTensor(ctx, {tokens, features}, dtype));
      MIMO_RETURN_IF_ERROR(ops.Copy(padded.data(), saved->rows.data(), saved->rows.nbytes()));
      MIMO_RETURN_IF_ERROR(
          ops.SetZero(RowAt(padded, saved->tokens, features),
                      static_cast<size_t>(padding * features) * kernels::DTypeSize(dtype)));
      saved->rows = std::move(padded);
    }
  }
  MIMO_ASSIGN_OR_RETURN(PackedSequences seqs, PackedSequences::Create(ops, lengths));
  saved->sequences = std::make_unique<PackedSequences>(std::move(seqs));
  const Rows r = Rows::Of(tokens, tp_, cp_);
  const StepContext inner = Inner(ctx, *saved, r, width);
  Tensor own;  // This member's block of the rows into the layers.
  if (first) {
    // Input projection plus each token's position embedding, over the cp member's span.
    if (r.span < tokens) {  // Context parallel: only the span's rows stay for the backward.
      MIMO_ASSIGN_OR_RETURN(const Tensor span, saved->rows.Slice(0, r.first, r.first + r.span));
      MIMO_ASSIGN_OR_RETURN(saved->rows, NewTensor(ctx, span.shape(), dtype));
      MIMO_RETURN_IF_ERROR(ops.Copy(saved->rows.data(), span.data(), span.nbytes()));
    }
    MIMO_ASSIGN_OR_RETURN(Tensor x, NewTensor(ctx, {r.span, width}, dtype));
    MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, *input_projection_, 0, width, saved->rows, x));
    MIMO_ASSIGN_OR_RETURN(Tensor pos, NewTensor(ctx, {r.span, width}, dtype));
    MIMO_RETURN_IF_ERROR(ops.Embedding({.dtype = dtype,
                                        .table = positions_->weight().data(),
                                        .ids = saved->sequences->positions() + r.first,
                                        .out = pos.data(),
                                        .vocab = c.max_tokens(),
                                        .tokens = r.span,
                                        .dim = width}));
    MIMO_RETURN_IF_ERROR(AddInto(ops, x, pos));
    MIMO_ASSIGN_OR_RETURN(own, x.Slice(0, r.own, r.own + r.block));
  } else {
    own = batch.hidden;
    MIMO_RETURN_IF_ERROR(CheckActivation(own, width, dtype, "ModalityEncoder stage input"));
    if (own.size(0) != r.block) {
      return absl::InvalidArgumentError(absl::StrCat("ModalityEncoder: stage input of ",
                                                     own.size(0), " rows, expected ", r.block));
    }
  }
  MIMO_ASSIGN_OR_RETURN(BlockOutput encoded, encoder_->Forward(inner, own));
  saved->encoder = std::move(encoded.saved);
  if (!stage_.last()) {
    out.hidden = std::move(encoded.y);
    out.saved = std::move(saved);
    return out;
  }
  // The span's rows again for the projector (the padding's outputs are dropped), then every
  // cp member's.
  MIMO_ASSIGN_OR_RETURN(const Tensor gathered, GatherRows(ops, tp_, encoded.y));
  MIMO_ASSIGN_OR_RETURN(BlockOutput projected, projector_->Forward(inner, gathered));
  saved->projector = std::move(projected.saved);
  MIMO_ASSIGN_OR_RETURN(const Tensor all, GatherRows(ops, cp_, projected.y));
  MIMO_ASSIGN_OR_RETURN(out.embeddings, all.Slice(0, 0, saved->tokens));
  out.saved = std::move(saved);
  return out;
}

absl::StatusOr<Tensor> ModalityEncoder::Backward(const StepContext& ctx,
                                                 std::unique_ptr<SavedActivations> saved_base,
                                                 const Tensor& dy) {
  MIMO_ASSIGN_OR_RETURN(auto saved,
                        SavedAs<EncoderSaved>(std::move(saved_base), "ModalityEncoder"));
  kernels::Ops& ops = *ctx.ops;
  const DType dtype = config_.transformer.dtype;
  const int64_t width = config_.transformer.hidden_size;
  const Rows r = Rows::Of(saved->sequences->tokens(), tp_, cp_);
  const StepContext inner = Inner(ctx, *saved, r, width);
  Tensor dh_own;  // The gradient of this member's block of the layers' output rows.
  if (stage_.last()) {
    if (dy.shape() != kernels::Shape{saved->tokens, config_.output_size}) {
      return absl::InvalidArgumentError(absl::StrCat("ModalityEncoder: needs d(embeddings) (",
                                                     saved->tokens, ", ", config_.output_size,
                                                     "), got ", dy.ToString()));
    }
    // The projector ran on the cp member's span: its rows of dy, zero on the padding rows.
    MIMO_ASSIGN_OR_RETURN(Tensor dspan, NewTensor(ctx, {r.span, config_.output_size}, dy.dtype()));
    MIMO_RETURN_IF_ERROR(ops.SetZero(dspan.data(), dspan.nbytes()));
    const int64_t real = std::clamp<int64_t>(saved->tokens - r.first, 0, r.span);
    if (real > 0) {
      MIMO_RETURN_IF_ERROR(ops.Copy(
          dspan.data(), RowAt(dy, r.first, config_.output_size),
          static_cast<size_t>(real * config_.output_size) * kernels::DTypeSize(dy.dtype())));
    }
    MIMO_ASSIGN_OR_RETURN(const Tensor dh,
                          projector_->Backward(inner, std::move(saved->projector), dspan));
    MIMO_RETURN_IF_ERROR(ReportGradientsReady(ctx, *projector_));
    // Every tp member computed the projector on the span's rows: the gradient of its own rows
    // is its block of dh.
    MIMO_ASSIGN_OR_RETURN(dh_own, dh.Slice(0, r.own, r.own + r.block));
  } else {
    if (dy.shape() != kernels::Shape{r.block, width}) {
      return absl::InvalidArgumentError(
          absl::StrCat("ModalityEncoder: needs the gradient of the stage's output (", r.block, ", ",
                       width, "), got ", dy.ToString()));
    }
    dh_own = dy;
  }
  MIMO_ASSIGN_OR_RETURN(Tensor dx_own,
                        encoder_->Backward(inner, std::move(saved->encoder), dh_own));
  if (!stage_.first()) return dx_own;  // The previous stage's output rows' gradient.
  MIMO_ASSIGN_OR_RETURN(Tensor dx, GatherRows(ops, tp_, dx_own));  // (span, C)
  MIMO_RETURN_IF_ERROR(ops.EmbeddingBackward({.dtype = dtype,
                                              .dout = dx.data(),
                                              .ids = saved->sequences->positions() + r.first,
                                              .dtable = positions_->grad().data<float>(),
                                              .vocab = config_.max_tokens(),
                                              .tokens = r.span,
                                              .dim = width,
                                              .accumulate = true}));
  MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(
      ops, *input_projection_, {.row0 = 0, .rows = width, .dy = &dx, .x = &saved->rows}));
  MIMO_RETURN_IF_ERROR(ReportGradientsReady(
      ctx, {input_projection_->weight.get(), input_projection_->bias.get(), positions_.get()}));
  return Tensor();
}

void ModalityEncoder::AppendParameters(std::vector<Parameter*>& out) const {
  if (input_projection_.has_value()) {
    out.push_back(input_projection_->weight.get());
    out.push_back(input_projection_->bias.get());
    out.push_back(positions_.get());
  }
  encoder_->AppendParameters(out);
  if (projector_ != nullptr) projector_->AppendParameters(out);
}

}  // namespace mimo
