// LanguageModel: embedding lookup, the modality rows gathered over their placeholders (one row
// gather from [token embeddings; modality embeddings]), the decoder, and the output layer fused
// with the cross-entropy one vocabulary chunk at a time (its logits recomputed in the backward).
#include "mimo/language_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/comm_type.h"
#include "mimo/dense_mlp.h"
#include "mimo/moe_layer.h"
#include "mimo/sequence_parallel.h"
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

namespace {

// Vocabulary parallel: folds the members' cross-entropy states (each over its part of the
// vocabulary) into the whole vocabulary's, the same on every member: the largest logit, the sum
// of exp(logit - that) (each member's rescaled), and the target's logit (only its owner's is not
// 0). A null group has nothing to fold.
absl::Status CombineCrossEntropyState(kernels::Ops& ops, comm::Communicator* tp,
                                      const kernels::CrossEntropyState& state, int64_t t) {
  if (tp == nullptr || t == 0) return absl::OkStatus();
  const size_t bytes = sizeof(float) * static_cast<size_t>(t);
  std::vector<float> max(t), global(t), sum(t);
  MIMO_RETURN_IF_ERROR(ops.CopyToHost(max.data(), state.max, bytes));
  MIMO_RETURN_IF_ERROR(ops.CopyToHost(sum.data(), state.sum, bytes));
  MIMO_ASSIGN_OR_RETURN(const comm::DataType f32, CommType(DType::kF32));
  // max is done with (copied to the host): it becomes the group's.
  MIMO_RETURN_IF_ERROR(tp->AllReduce(state.max, t, f32, comm::ReduceOp::kMax));
  MIMO_RETURN_IF_ERROR(ops.CopyToHost(global.data(), state.max, bytes));
  for (int64_t i = 0; i < t; ++i) {
    sum[i] = max[i] == -std::numeric_limits<float>::infinity()
                 ? 0.0f
                 : sum[i] * std::exp(max[i] - global[i]);
  }
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(state.sum, sum.data(), bytes));
  MIMO_RETURN_IF_ERROR(ops.Synchronize());  // The communicator works on its own stream.
  MIMO_RETURN_IF_ERROR(tp->AllReduce(state.sum, t, f32, comm::ReduceOp::kSum));
  return tp->AllReduce(state.target_logit, t, f32, comm::ReduceOp::kSum);
}

}  // namespace

absl::StatusOr<std::unique_ptr<LanguageModel>> LanguageModel::Create(
    const BuildContext& ctx, const LanguageModelConfig& config, const PipelineStage& stage) {
  MIMO_RETURN_IF_ERROR(ValidateLanguageModelConfig(config));
  const TransformerConfig& t = config.transformer;
  MIMO_ASSIGN_OR_RETURN(const TransformerBlockPart layers,
                        stage.Part(t.num_layers, "LanguageModel"));
  const int64_t n = ModelGroups::Size(ctx.groups.tp), r = ModelGroups::Rank(ctx.groups.tp);
  comm::Communicator* tp = n > 1 ? ctx.groups.tp : nullptr;
  if (config.vocab_size % n != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LanguageModel: the vocabulary (vocab_size ", config.vocab_size,
                     ") splits over tensor parallelism of ", n, " ranks only if it divides by it"));
  }
  const int64_t part = config.vocab_size / n;  // This member's vocabulary rows.
  std::vector<ParameterShard> rows;
  if (tp != nullptr) rows = {{.dim = 0, .offset = r * part, .full_size = config.vocab_size}};
  BuildContext inner = ctx;
  inner.config = &config.transformer;
  const bool shared = config.share_embeddings_and_output_weights;
  std::unique_ptr<Parameter> embedding;
  if (stage.first() && !(shared && stage.last())) {
    MIMO_ASSIGN_OR_RETURN(embedding, inner.Child("embedding.word_embeddings")
                                         .NewParameter("weight", {part, t.hidden_size},
                                                       InitKind::kNormal, t.init_std, true, rows));
  }
  std::unique_ptr<TransformerBlock> decoder;
  if (config.moe.has_value()) {
    MIMO_ASSIGN_OR_RETURN(
        decoder, TransformerBlock::Create(inner.Child("decoder"),
                                          InterleavedMlpBuilder(*config.moe, config.moe_layer_freq),
                                          layers));
  } else {
    MIMO_ASSIGN_OR_RETURN(
        decoder, TransformerBlock::Create(inner.Child("decoder"), DenseMlpBuilder(), layers));
  }
  std::optional<LinearWeights> output;
  if (stage.last()) {
    // Shared: the word embeddings themselves, or the last stage's copy of them (same name, so
    // the same initial values as the first stage's).
    MIMO_ASSIGN_OR_RETURN(
        output,
        LinearWeights::Create(inner.Child(shared ? "embedding.word_embeddings" : "output_layer"),
                              part, t.hidden_size, /*bias=*/false, t.init_std, rows));
  }
  return std::unique_ptr<LanguageModel>(new LanguageModel(
      config, stage, tp, part, std::move(embedding), std::move(decoder), std::move(output)));
}

absl::StatusOr<Tensor> LanguageModel::Embed(const StepContext& ctx, const LanguageModelBatch& batch,
                                            SavedActivations& saved_base) {
  auto& saved = static_cast<LanguageModelSaved&>(saved_base);
  kernels::Ops& ops = *ctx.ops;
  const TransformerConfig& tc = config_.transformer;
  const int64_t c = tc.hidden_size, v = vocab_part_, first = FirstId();
  const int64_t t = ctx.sequences->tokens(), m = saved.splices;
  // Token embeddings, then the modality rows over their placeholders: x[r] = src[row_of[r]] over
  // src = [token embeddings; modality embeddings].
  MIMO_ASSIGN_OR_RETURN(Tensor src, NewTensor(ctx, {t + m, c}, tc.dtype));
  MIMO_RETURN_IF_ERROR(ops.Embedding({.dtype = tc.dtype,
                                      .table = word_embeddings().weight().data(),
                                      .ids = batch.tokens.data<int32_t>(),
                                      .out = src.data(),
                                      .vocab = v,
                                      .tokens = t,
                                      .dim = c,
                                      .first_id = first}));
  Tensor x = src;
  if (m > 0) {
    std::vector<int32_t> row_of(t), source_row(t + m);
    for (int64_t r = 0; r < t; ++r) row_of[r] = static_cast<int32_t>(r), source_row[r] = r;
    for (int64_t i = 0; i < m; ++i) {
      const int32_t p = batch.embedding_positions[i];
      if (p == -1) {  // Not one of this rank's rows (context parallelism): no gradient.
        source_row[t + i] = -1;
        continue;
      }
      if (p < 0 || p >= t || row_of[p] >= t) {
        return absl::InvalidArgumentError(absl::StrCat("LanguageModel: embedding position ", p,
                                                       " is outside [0, ", t, ") or repeated"));
      }
      row_of[p] = static_cast<int32_t>(t + i);
      source_row[p] = -1;
      source_row[t + i] = p;
    }
    // Vocabulary parallel, the members' rows are summed: member 0 alone brings the modality rows.
    if (ModelGroups::Rank(tp_) == 0) {
      MIMO_RETURN_IF_ERROR(
          ops.Copy(RowAt(src, t, c), batch.embeddings.data(), batch.embeddings.nbytes()));
    } else {
      MIMO_RETURN_IF_ERROR(ops.SetZero(RowAt(src, t, c), batch.embeddings.nbytes()));
    }
    MIMO_ASSIGN_OR_RETURN(Tensor rows, Upload(ctx, row_of));
    MIMO_ASSIGN_OR_RETURN(saved.source_rows, Upload(ctx, source_row));
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
  // Each member's part of every row's embedding summed, this member's block of the rows kept.
  return ReduceScatterRows(ops, tp_, x);
}

absl::StatusOr<LanguageModelOutput> LanguageModel::Forward(const StepContext& ctx,
                                                           const LanguageModelBatch& batch) {
  kernels::Ops& ops = *ctx.ops;
  const TransformerConfig& tc = config_.transformer;
  const int64_t c = tc.hidden_size, v = vocab_part_, first = FirstId();
  if (ctx.sequences == nullptr) {
    return absl::InvalidArgumentError("LanguageModel: needs the micro-batch's packed sequences");
  }
  const int64_t t = ctx.sequences->tokens();
  const int members = ModelGroups::Size(tp_);
  if (t % members != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LanguageModel: ", t, " packed tokens do not split into the row blocks of ",
                     members, " sequence-parallel ranks (pad the micro-batch to a multiple)"));
  }
  const int64_t m =
      stage_.first() ? static_cast<int64_t>(batch.embedding_positions.size()) : int64_t{0};
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
  Tensor own;  // This member's rows of the decoder's input.
  if (stage_.first()) {
    MIMO_ASSIGN_OR_RETURN(own, Embed(ctx, batch, *saved));
  } else {
    MIMO_RETURN_IF_ERROR(
        CheckActivation(batch.hidden, c, tc.dtype, "LanguageModel: the stage's input"));
    if (batch.hidden.size(0) != t / members) {
      return absl::InvalidArgumentError(absl::StrCat("LanguageModel: stage ", stage_.index, " got ",
                                                     batch.hidden.size(0), " input rows for ", t,
                                                     " tokens over ", members, " tp members"));
    }
    own = batch.hidden;
  }
  MIMO_ASSIGN_OR_RETURN(BlockOutput decoded, decoder_->Forward(ctx, own));
  saved->decoder = std::move(decoded.saved);
  LanguageModelOutput out;
  if (!stage_.last()) {
    out.hidden = std::move(decoded.y);
    out.saved = std::move(saved);
    return out;
  }
  MIMO_ASSIGN_OR_RETURN(saved->h, GatherRows(ops, tp_, decoded.y));
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
    MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, *output_, v0, n, saved->h, part));
    MIMO_RETURN_IF_ERROR(ops.CrossEntropyChunk({.dtype = tc.dtype,
                                                .logits = part.data(),
                                                .targets = batch.labels.data<int32_t>(),
                                                .tokens = t,
                                                .chunk = n,
                                                .vocab_offset = first + v0,
                                                .state = state}));
  }
  MIMO_RETURN_IF_ERROR(CombineCrossEntropyState(ops, tp_, state, t));
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
                                               float loss_sum_grad, const Tensor& dhidden) {
  MIMO_ASSIGN_OR_RETURN(auto saved,
                        SavedAs<LanguageModelSaved>(std::move(saved_base), "LanguageModel"));
  kernels::Ops& ops = *ctx.ops;
  const TransformerConfig& tc = config_.transformer;
  const int64_t c = tc.hidden_size, v = vocab_part_, first = FirstId();
  const int64_t t = saved->tokens.size(0), m = saved->splices;
  Tensor dh_own;  // The gradient of this member's rows of the decoder's output.
  if (stage_.last()) {
    // Through the loss and the output layer, chunk by chunk (logits recomputed).
    const int64_t chunk = config_.vocab_chunk > 0 ? std::min(config_.vocab_chunk, v) : v;
    MIMO_ASSIGN_OR_RETURN(Tensor dloss, Filled(ctx, t, loss_sum_grad));
    MIMO_ASSIGN_OR_RETURN(Tensor dh, NewTensor(ctx, {t, c}, tc.dtype));
    for (int64_t v0 = 0; v0 < v; v0 += chunk) {
      const int64_t n = std::min(chunk, v - v0);
      MIMO_ASSIGN_OR_RETURN(Tensor logits, NewTensor(ctx, {t, n}, tc.dtype));
      MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, *output_, v0, n, saved->h, logits));
      MIMO_RETURN_IF_ERROR(ops.CrossEntropyBackward({.dtype = tc.dtype,
                                                     .logits = logits.data(),
                                                     .targets = saved->labels.data<int32_t>(),
                                                     .lse = saved->lse.data<float>(),
                                                     .dloss = dloss.data<float>(),
                                                     .dlogits = logits.data(),
                                                     .tokens = t,
                                                     .chunk = n,
                                                     .vocab_offset = first + v0}));
      MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(ops, *output_,
                                                 {.row0 = v0,
                                                  .rows = n,
                                                  .dy = &logits,
                                                  .x = &saved->h,
                                                  .dx = &dh,
                                                  .accumulate_dx = v0 > 0}));
    }
    // Shared with the word embeddings on this stage: their gradient is not complete yet.
    if (embedding_ != nullptr || !stage_.first()) {
      MIMO_RETURN_IF_ERROR(ReportGradientsReady(ctx, {output_->weight.get()}));
    }
    saved->h = Tensor();
    // dh holds this member's vocabulary's part of every row's gradient: the rows' owners get
    // the sums.
    MIMO_ASSIGN_OR_RETURN(dh_own, ReduceScatterRows(ops, tp_, dh));
  } else {
    const int members = ModelGroups::Size(tp_);
    MIMO_RETURN_IF_ERROR(
        CheckActivation(dhidden, c, tc.dtype, "LanguageModel: the stage's output gradient"));
    if (dhidden.size(0) != t / members) {
      return absl::InvalidArgumentError(absl::StrCat("LanguageModel: stage ", stage_.index, " got ",
                                                     dhidden.size(0), " output gradient rows for ",
                                                     t, " tokens over ", members, " tp members"));
    }
    dh_own = dhidden;
  }
  // The decoder's input gradient comes back as this member's rows.
  MIMO_ASSIGN_OR_RETURN(const Tensor dx_own,
                        decoder_->Backward(ctx, std::move(saved->decoder), dh_own));
  if (!stage_.first()) return dx_own;
  MIMO_ASSIGN_OR_RETURN(const Tensor dx, GatherRows(ops, tp_, dx_own));
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
                                              .dtable = word_embeddings().grad().data<float>(),
                                              .vocab = v,
                                              .tokens = t,
                                              .dim = c,
                                              .first_id = first,
                                              .accumulate = true}));
  MIMO_RETURN_IF_ERROR(ReportGradientsReady(ctx, {&word_embeddings()}));
  if (m == 0) return Tensor();
  return dsrc.Slice(0, t, t + m);
}

void LanguageModel::AppendParameters(std::vector<Parameter*>& out) const {
  // The word embeddings first wherever this stage holds them (the output layer's weight when
  // shared), so the backward order reversed from this list has them where they finish.
  if (embedding_ != nullptr ||
      (output_.has_value() && config_.share_embeddings_and_output_weights)) {
    out.push_back(&word_embeddings());
  }
  decoder_->AppendParameters(out);
  if (output_.has_value() && !config_.share_embeddings_and_output_weights) {
    out.push_back(output_->weight.get());
  }
}

}  // namespace mimo
