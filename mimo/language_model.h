// The MIMO language model: token embedding with modality embeddings spliced in at their
// placeholder tokens, a stack of transformer layers (MoE or dense MLPs), the final norm, the
// output layer and the cross-entropy loss on the tokens that have a label; forward and backward
// (the backward also returns the modality embeddings' gradient, for the encoders).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"
#include "mimo/linear_weights.h"
#include "mimo/moe_config.h"
#include "mimo/parameter.h"
#include "mimo/transformer_block.h"

namespace mimo {

struct LanguageModelConfig {
  TransformerConfig transformer;  // The decoder's layers (causal, usually RoPE and RMSNorm).
  int64_t vocab_size = 0;         // > 0.
  // Layers whose number (from 0) is a multiple of moe_layer_freq (Megatron's moe_layer_freq; 1:
  // every layer) get a MoE MLP with this configuration, the others a dense MLP; without it, every
  // layer is dense.
  std::optional<MoeConfig> moe;
  int moe_layer_freq = 1;  // >= 1.

  // The output layer's logits are made and consumed this many vocabulary entries at a time, so
  // only (tokens, vocab_chunk) of them exist at once (a 128k vocabulary in 4 chunks); 0: the
  // whole vocabulary in one piece.
  int64_t vocab_chunk = 32768;

  // Megatron's share_embeddings_and_output_weights: the output layer multiplies by the word
  // embeddings (one parameter, its gradient from both uses). With pipeline stages the first
  // and the last stage each hold a copy (same name, same initial values) whose gradients the
  // caller sums over the two (Megatron's embedding group) before the update.
  bool share_embeddings_and_output_weights = false;
};

// InvalidArgument naming the field at fault.
absl::Status ValidateLanguageModelConfig(const LanguageModelConfig& config);

// One micro-batch: T packed tokens (the StepContext's sequences) and M modality embeddings.
struct LanguageModelBatch {
  // (T,) int32 ids in [0, vocab_size); a placeholder's embedding row is replaced (its id's
  // embedding gets no gradient from it).
  kernels::Tensor tokens;
  kernels::Tensor labels;      // (T,) int32: each token's target (the next token), -1 for no loss.
  kernels::Tensor embeddings;  // (M, C) in the compute dtype: projected encoder outputs.
  // (M,) on the host: the token embeddings row m replaces; distinct, in [0, T), or -1 for a row
  // whose token is not among this rank's (context parallelism: every member gets all M rows,
  // its gradient of the others is 0).
  std::vector<int32_t> embedding_positions;
  // Stages after the first: the previous stage's output, this tp member's block of the rows
  // (T / tp, C) in the compute dtype (embeddings and positions are then unused).
  kernels::Tensor hidden;
};

struct LanguageModelOutput {
  kernels::Tensor loss_sum;    // Last stage: (1,) fp32, the summed loss of the labelled tokens.
  kernels::Tensor token_loss;  // Last stage: (T,) fp32, each token's loss, 0 without a label.
  // Stages before the last: the stage's output for the next stage (T / tp, C).
  kernels::Tensor hidden;
  std::unique_ptr<SavedActivations> saved;
};

class LanguageModel {
 public:
  // Parameters (Megatron's names under ctx.prefix): embedding.word_embeddings.weight (V, C),
  // decoder.layers.<i>.*, decoder.final_layernorm.*, output_layer.weight (V, C) (untied; tied,
  // the output layer uses the word embeddings).
  //
  // With a tensor-parallel group of n > 1 members (ctx.groups.tp) the model is tensor, sequence
  // and vocabulary parallel like Megatron's: member r holds vocabulary rows [r V / n,
  // (r + 1) V / n) of the embedding and the output layer (V must divide by n), looks up the ids
  // in its part (zeros for the rest) and the sum over the members is reduce-scattered into row
  // blocks of T / n (T must divide by n); the decoder's layers split as TransformerLayer says;
  // the final rows are gathered, each member makes the logits of its vocabulary, and the
  // cross-entropy's running maxima and sums are folded over the group, so every member gets
  // every token's loss. Modality rows are taken from member 0's batch.embeddings; the returned
  // gradient of them is the same on every member.
  //
  // With a pipeline `stage` of count > 1 the model holds that stage's part (PipelineStage: its
  // layers; the first stage also the embedding, the last the final norm, output layer and loss);
  // parameters keep their names in the whole model (layers numbered in the whole stack).
  // InvalidArgument when the layers do not divide by the stages.
  static absl::StatusOr<std::unique_ptr<LanguageModel>> Create(const BuildContext& ctx,
                                                               const LanguageModelConfig& config,
                                                               const PipelineStage& stage = {});

  // The MoE layers append their auxiliary losses to ctx.aux_losses. Stages after the first read
  // batch.hidden instead of embedding the tokens; stages before the last return their output
  // rows (hidden) instead of the loss.
  absl::StatusOr<LanguageModelOutput> Forward(const StepContext& ctx,
                                              const LanguageModelBatch& batch);
  // Last stage: with d(objective)/d(loss_sum) = loss_sum_grad (e.g. 1 / the step's labelled
  // tokens; the MoE auxiliary losses' gradients follow ctx.loss_scale); stages before it: from
  // `dhidden`, the gradient of their output (T / tp, C). Adds every parameter's gradient and
  // returns, on the first stage, the gradient of batch.embeddings (M, C) (undefined when M = 0),
  // on later stages that of batch.hidden (T / tp, C).
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           float loss_sum_grad,
                                           const kernels::Tensor& dhidden = kernels::Tensor());
  void AppendParameters(std::vector<Parameter*>& out) const;
  std::vector<MoeLayer*> moe_layers() const { return decoder_->moe_layers(); }
  // With shared word embeddings over pipeline stages, the first and last stages' copy (whose
  // gradient, once summed over the stage's replicas, the caller sums over the two stages before
  // the update; on the last stage it is reported ready after the output layer's backward, its
  // only use there); null otherwise.
  Parameter* shared_embeddings_copy() const {
    const bool shared = config_.share_embeddings_and_output_weights && stage_.count > 1;
    return shared && (stage_.first() || stage_.last()) ? &word_embeddings() : nullptr;
  }
  const LanguageModelConfig& config() const { return config_; }
  const PipelineStage& stage() const { return stage_; }

 private:
  LanguageModel(const LanguageModelConfig& config, const PipelineStage& stage,
                comm::Communicator* tp, int64_t vocab_part, std::unique_ptr<Parameter> embedding,
                std::unique_ptr<TransformerBlock> decoder, std::optional<LinearWeights> output)
      : config_(config),
        stage_(stage),
        tp_(tp),
        vocab_part_(vocab_part),
        embedding_(std::move(embedding)),
        decoder_(std::move(decoder)),
        output_(std::move(output)) {}

  // The first vocabulary id of this member's rows.
  int64_t FirstId() const { return ModelGroups::Rank(tp_) * vocab_part_; }
  // The word embeddings: embedding_, or the output layer's weight when they are shared on a
  // stage that holds both.
  Parameter& word_embeddings() const {
    return embedding_ != nullptr ? *embedding_ : *output_->weight;
  }
  // First stage: the tokens' embeddings with the modality rows spliced in, this member's block
  // of the rows; keeps what the backward needs in `saved` (the model's saved activations).
  absl::StatusOr<kernels::Tensor> Embed(const StepContext& ctx, const LanguageModelBatch& batch,
                                        SavedActivations& saved);

  const LanguageModelConfig config_;
  const PipelineStage stage_;
  comm::Communicator* const tp_;  // Null: no tensor parallelism. Not owned.
  const int64_t vocab_part_;      // V / tp: this member's vocabulary rows.
  // First stage only: (V, C); (V / tp, C), this member's rows. Null on a stage that also holds
  // the output layer when the two are shared.
  std::unique_ptr<Parameter> embedding_;
  std::unique_ptr<TransformerBlock> decoder_;
  // Last stage only: (V, C), no bias; (V / tp, C), this member's rows. With shared embeddings:
  // the word embeddings (named so).
  std::optional<LinearWeights> output_;
};

}  // namespace mimo
