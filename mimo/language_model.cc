// LanguageModel: embedding lookup, the modality rows gathered over their placeholders (one row
// gather from [token embeddings; modality embeddings]), the decoder, and the output layer fused
// with the cross-entropy one vocabulary chunk at a time (its logits recomputed in the backward).
#include "mimo/language_model.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/dense_mlp.h"
#include "mimo/moe_layer.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

struct LanguageModelSaved final : SavedActivations {
  Tensor tokens;        // (T,) int32
  Tensor labels;        // (T,) int32
  Tensor source_rows;   // (T + M, 1) int32: the row of x each embedding row went to, or -1.
  int64_t splices = 0;  // M
  std::unique_ptr<SavedActivations> decoder;
  Tensor h;    // (T, C): the decoder's output.
  Tensor lse;  // (T,) fp32: each token's log-sum-exp of the logits.
};

// MoE MLPs in every freq-th layer (from layer 0), dense ones between.
class InterleavedMlpBuilder final : public MlpBuilder {
 public:
  InterleavedMlpBuilder(const MoeConfig& moe, int freq) : moe_(moe), freq_(freq) {}
  absl::StatusOr<std::unique_ptr<Block>> Build(const BuildContext& ctx) const override {
    if (ctx.layer_number % freq_ == 0) return moe_.Build(ctx);
    return dense_.Build(ctx);
  }

 private:
  MoeMlpBuilder moe_;
  DenseMlpBuilder dense_;
  int freq_;
};

absl::StatusOr<Tensor> Upload(const StepContext& ctx, const std::vector<int32_t>& host) {
  MIMO_ASSIGN_OR_RETURN(Tensor t, NewTensor(ctx, {static_cast<int64_t>(host.size())}, DType::kI32));
  if (!host.empty()) {
    MIMO_RETURN_IF_ERROR(
        ctx.ops->CopyFromHost(t.data(), host.data(), sizeof(int32_t) * host.size()));
  }
  return t;
}

absl::StatusOr<Tensor> Filled(const StepContext& ctx, int64_t n, float value) {
  MIMO_ASSIGN_OR_RETURN(Tensor t, NewTensor(ctx, {n}, DType::kF32));
  const std::vector<float> host(n, value);
  if (n > 0) MIMO_RETURN_IF_ERROR(ctx.ops->CopyFromHost(t.data(), host.data(), t.nbytes()));
  return t;
}

}  // namespace

absl::Status ValidateLanguageModelConfig(const LanguageModelConfig& c) {
  MIMO_RETURN_IF_ERROR(ValidateTransformerConfig(c.transformer));
  if (c.vocab_size < 1 || c.vocab_size > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("LanguageModelConfig: vocab_size ", c.vocab_size, " is not in [1, 2^31)"));
  }
  if (c.vocab_chunk < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LanguageModelConfig: vocab_chunk ", c.vocab_chunk, " is negative"));
  }
  if (c.moe_layer_freq < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("LanguageModelConfig: moe_layer_freq ", c.moe_layer_freq, " < 1"));
  }
  if (c.moe.has_value()) MIMO_RETURN_IF_ERROR(ValidateMoeConfig(*c.moe));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LanguageModel>> LanguageModel::Create(
    const BuildContext& ctx, const LanguageModelConfig& config) {
  MIMO_RETURN_IF_ERROR(ValidateLanguageModelConfig(config));
  const TransformerConfig& t = config.transformer;
  if (ModelGroups::Size(ctx.groups.tp) > 1) {
    // The transformer layers split over tp; the embedding and output layer do not yet.
    return absl::InvalidArgumentError(
        "LanguageModel: tensor parallelism (tp > 1) is not supported yet");
  }
  BuildContext inner = ctx;
  inner.config = &config.transformer;
  MIMO_ASSIGN_OR_RETURN(auto embedding,
                        inner.Child("embedding.word_embeddings")
                            .NewParameter("weight", {config.vocab_size, t.hidden_size},
                                          InitKind::kNormal, t.init_std, true));
  std::unique_ptr<TransformerBlock> decoder;
  if (config.moe.has_value()) {
    MIMO_ASSIGN_OR_RETURN(decoder, TransformerBlock::Create(
                                       inner.Child("decoder"),
                                       InterleavedMlpBuilder(*config.moe, config.moe_layer_freq)));
  } else {
    MIMO_ASSIGN_OR_RETURN(decoder,
                          TransformerBlock::Create(inner.Child("decoder"), DenseMlpBuilder()));
  }
  MIMO_ASSIGN_OR_RETURN(LinearWeights output,
                        LinearWeights::Create(inner.Child("output_layer"), config.vocab_size,
                                              t.hidden_size, /*bias=*/false, t.init_std));
  return std::unique_ptr<LanguageModel>(
      new LanguageModel(config, std::move(embedding), std::move(decoder), std::move(output)));
}

absl::StatusOr<LanguageModelOutput> LanguageModel::Forward(const StepContext& ctx,
                                                           const LanguageModelBatch& batch) {
  kernels::Ops& ops = *ctx.ops;
  const TransformerConfig& tc = config_.transformer;
  const int64_t c = tc.hidden_size, v = config_.vocab_size;
  if (ctx.sequences == nullptr) {
    return absl::InvalidArgumentError("LanguageModel: needs the micro-batch's packed sequences");
  }
  const int64_t t = ctx.sequences->tokens();
  const int64_t m = static_cast<int64_t>(batch.embedding_positions.size());
  if (batch.tokens.shape() != kernels::Shape{t} || batch.tokens.dtype() != DType::kI32 ||
      batch.labels.shape() != kernels::Shape{t} || batch.labels.dtype() != DType::kI32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LanguageModel: needs tokens and labels (", t, ",) int32 for the packed sequences, got ",
        batch.tokens.ToString(), " and ", batch.labels.ToString()));
  }
  if (m > 0) {
    MIMO_RETURN_IF_ERROR(CheckActivation(batch.embeddings, c, tc.dtype, "LanguageModel"));
    if (batch.embeddings.size(0) != m) {
      return absl::InvalidArgumentError(absl::StrCat("LanguageModel: ", m, " positions for ",
                                                     batch.embeddings.size(0),
                                                     " modality embeddings"));
    }
  }
  auto saved = std::make_unique<LanguageModelSaved>();
  saved->tokens = batch.tokens;
  saved->labels = batch.labels;
  saved->splices = m;
  // Token embeddings, then the modality rows over their placeholders: x[r] = src[row_of[r]] over
  // src = [token embeddings; modality embeddings].
  MIMO_ASSIGN_OR_RETURN(Tensor src, NewTensor(ctx, {t + m, c}, tc.dtype));
  MIMO_RETURN_IF_ERROR(ops.Embedding({.dtype = tc.dtype,
                                      .table = embedding_->weight().data(),
                                      .ids = batch.tokens.data<int32_t>(),
                                      .out = src.data(),
                                      .vocab = v,
                                      .tokens = t,
                                      .dim = c}));
  Tensor x = src;
  if (m > 0) {
    std::vector<int32_t> row_of(t), source_row(t + m);
    for (int64_t r = 0; r < t; ++r) row_of[r] = static_cast<int32_t>(r), source_row[r] = r;
    for (int64_t i = 0; i < m; ++i) {
      const int32_t p = batch.embedding_positions[i];
      if (p < 0 || p >= t || row_of[p] >= t) {
        return absl::InvalidArgumentError(absl::StrCat("LanguageModel: embedding position ", p,
                                                       " is outside [0, ", t, ") or repeated"));
      }
      row_of[p] = static_cast<int32_t>(t + i);
      source_row[p] = -1;
      source_row[t + i] = p;
    }
    MIMO_RETURN_IF_ERROR(
        ops.Copy(RowAt(src, t, c), batch.embeddings.data(), batch.embeddings.nbytes()));
    MIMO_ASSIGN_OR_RETURN(Tensor rows, Upload(ctx, row_of));
    MIMO_ASSIGN_OR_RETURN(saved->source_rows, Upload(ctx, source_row));
    MIMO_ASSIGN_OR_RETURN(x, NewTensor(ctx, {t, c}, tc.dtype));
    MIMO_RETURN_IF_ERROR(ops.MoePermute({.dtype = tc.dtype,
                                         .x = src.data(),
                                         .pair_of_row = rows.data<int32_t>(),
                                         .out = x.data(),
                                         .tokens = t + m,
                                         .top_k = 1,
                                         .hidden = c,
                                         .capacity = t}));
  }
  MIMO_ASSIGN_OR_RETURN(BlockOutput decoded, decoder_->Forward(ctx, x));
  saved->decoder = std::move(decoded.saved);
  saved->h = std::move(decoded.y);
  // The loss, one vocabulary chunk of logits at a time.
  const int64_t chunk = config_.vocab_chunk > 0 ? std::min(config_.vocab_chunk, v) : v;
  MIMO_ASSIGN_OR_RETURN(Tensor max, NewTensor(ctx, {t}, DType::kF32));
  MIMO_ASSIGN_OR_RETURN(Tensor sum, NewTensor(ctx, {t}, DType::kF32));
  MIMO_ASSIGN_OR_RETURN(Tensor target, NewTensor(ctx, {t}, DType::kF32));
  const kernels::CrossEntropyState state{
      .max = max.data<float>(), .sum = sum.data<float>(), .target_logit = target.data<float>()};
  MIMO_RETURN_IF_ERROR(ops.CrossEntropyInit(state, t));
  for (int64_t v0 = 0; v0 < v; v0 += chunk) {
    const int64_t n = std::min(chunk, v - v0);
    MIMO_ASSIGN_OR_RETURN(Tensor part, NewTensor(ctx, {t, n}, tc.dtype));
    MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, output_, v0, n, saved->h, part));
    MIMO_RETURN_IF_ERROR(ops.CrossEntropyChunk({.dtype = tc.dtype,
                                                .logits = part.data(),
                                                .targets = batch.labels.data<int32_t>(),
                                                .tokens = t,
                                                .chunk = n,
                                                .vocab_offset = v0,
                                                .state = state}));
  }
  LanguageModelOutput out;
  MIMO_ASSIGN_OR_RETURN(out.token_loss, NewTensor(ctx, {t}, DType::kF32));
  MIMO_ASSIGN_OR_RETURN(saved->lse, NewTensor(ctx, {t}, DType::kF32));
  MIMO_RETURN_IF_ERROR(ops.CrossEntropyFinish({.targets = batch.labels.data<int32_t>(),
                                               .tokens = t,
                                               .state = state,
                                               .loss = out.token_loss.data<float>(),
                                               .lse = saved->lse.data<float>()}));
  // loss_sum = ones (1, T) . token_loss (T, 1).
  MIMO_ASSIGN_OR_RETURN(Tensor ones, Filled(ctx, t, 1.0f));
  MIMO_ASSIGN_OR_RETURN(out.loss_sum, NewTensor(ctx, {1}, DType::kF32));
  MIMO_RETURN_IF_ERROR(ops.Gemm({.ab_dtype = DType::kF32,
                                 .d_dtype = DType::kF32,
                                 .a = ones.data(),
                                 .b = out.token_loss.data(),
                                 .d = out.loss_sum.data(),
                                 .m = 1,
                                 .n = 1,
                                 .k = t}));
  out.saved = std::move(saved);
  return out;
}

absl::StatusOr<Tensor> LanguageModel::Backward(const StepContext& ctx,
                                               std::unique_ptr<SavedActivations> saved_base,
                                               float loss_sum_grad) {
  MIMO_ASSIGN_OR_RETURN(auto saved,
                        SavedAs<LanguageModelSaved>(std::move(saved_base), "LanguageModel"));
  kernels::Ops& ops = *ctx.ops;
  const TransformerConfig& tc = config_.transformer;
  const int64_t c = tc.hidden_size, v = config_.vocab_size, t = saved->h.size(0);
  const int64_t m = saved->splices;
  // Through the loss and the output layer, chunk by chunk (logits recomputed).
  const int64_t chunk = config_.vocab_chunk > 0 ? std::min(config_.vocab_chunk, v) : v;
  MIMO_ASSIGN_OR_RETURN(Tensor dloss, Filled(ctx, t, loss_sum_grad));
  MIMO_ASSIGN_OR_RETURN(Tensor dh, NewTensor(ctx, {t, c}, tc.dtype));
  for (int64_t v0 = 0; v0 < v; v0 += chunk) {
    const int64_t n = std::min(chunk, v - v0);
    MIMO_ASSIGN_OR_RETURN(Tensor logits, NewTensor(ctx, {t, n}, tc.dtype));
    MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, output_, v0, n, saved->h, logits));
    MIMO_RETURN_IF_ERROR(ops.CrossEntropyBackward({.dtype = tc.dtype,
                                                   .logits = logits.data(),
                                                   .targets = saved->labels.data<int32_t>(),
                                                   .lse = saved->lse.data<float>(),
                                                   .dloss = dloss.data<float>(),
                                                   .dlogits = logits.data(),
                                                   .tokens = t,
                                                   .chunk = n,
                                                   .vocab_offset = v0}));
    MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(ops, output_,
                                               {.row0 = v0,
                                                .rows = n,
                                                .dy = &logits,
                                                .x = &saved->h,
                                                .dx = &dh,
                                                .accumulate_dx = v0 > 0}));
  }
  MIMO_RETURN_IF_ERROR(ReportGradientsReady(ctx, {output_.weight.get()}));
  MIMO_ASSIGN_OR_RETURN(Tensor dx, decoder_->Backward(ctx, std::move(saved->decoder), dh));
  // Back through the gather: the token embeddings' rows, then the modality rows.
  Tensor dsrc = dx;
  if (m > 0) {
    MIMO_ASSIGN_OR_RETURN(dsrc, NewTensor(ctx, {t + m, c}, tc.dtype));
    MIMO_RETURN_IF_ERROR(ops.MoePermuteBackward({.dtype = tc.dtype,
                                                 .dout = dx.data(),
                                                 .rows = saved->source_rows.data<int32_t>(),
                                                 .dx = dsrc.data(),
                                                 .tokens = t + m,
                                                 .top_k = 1,
                                                 .hidden = c}));
  }
  MIMO_RETURN_IF_ERROR(ops.EmbeddingBackward({.dtype = tc.dtype,
                                              .dout = dsrc.data(),
                                              .ids = saved->tokens.data<int32_t>(),
                                              .dtable = embedding_->grad().data<float>(),
                                              .vocab = v,
                                              .tokens = t,
                                              .dim = c,
                                              .accumulate = true}));
  MIMO_RETURN_IF_ERROR(ReportGradientsReady(ctx, {embedding_.get()}));
  if (m == 0) return Tensor();
  return dsrc.Slice(0, t, t + m);
}

void LanguageModel::AppendParameters(std::vector<Parameter*>& out) const {
  out.push_back(embedding_.get());
  decoder_->AppendParameters(out);
  out.push_back(output_.weight.get());
}

}  // namespace mimo
