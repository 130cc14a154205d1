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
  // only (tokens, vocab_chunk) of them exist at once; 0: the whole vocabulary in one piece.
  int64_t vocab_chunk = 0;
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
  // (M,) on the host: the token embeddings row m replaces; distinct, in [0, T).
  std::vector<int32_t> embedding_positions;
};

struct LanguageModelOutput {
  kernels::Tensor loss_sum;    // (1,) fp32: the summed loss of the labelled tokens.
  kernels::Tensor token_loss;  // (T,) fp32: each token's loss, 0 without a label.
  std::unique_ptr<SavedActivations> saved;
};

class LanguageModel {
 public:
  // Parameters (Megatron's names under ctx.prefix): embedding.word_embeddings.weight (V, C),
  // decoder.layers.<i>.*, decoder.final_layernorm.*, output_layer.weight (V, C) (untied).
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
  static absl::StatusOr<std::unique_ptr<LanguageModel>> Create(const BuildContext& ctx,
                                                               const LanguageModelConfig& config);

  // The MoE layers append their auxiliary losses to ctx.aux_losses.
  absl::StatusOr<LanguageModelOutput> Forward(const StepContext& ctx,
                                              const LanguageModelBatch& batch);
  // With d(objective)/d(loss_sum) = loss_sum_grad (e.g. 1 / the step's labelled tokens; the
  // MoE auxiliary losses' gradients follow ctx.loss_scale): adds every parameter's gradient and
  // returns the gradient of batch.embeddings (M, C) (undefined when M = 0).
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           float loss_sum_grad);
  void AppendParameters(std::vector<Parameter*>& out) const;
  std::vector<MoeLayer*> moe_layers() const { return decoder_->moe_layers(); }
  const LanguageModelConfig& config() const { return config_; }

 private:
  LanguageModel(const LanguageModelConfig& config, comm::Communicator* tp,
                std::unique_ptr<Parameter> embedding, std::unique_ptr<TransformerBlock> decoder,
                LinearWeights output)
      : config_(config),
        tp_(tp),
        embedding_(std::move(embedding)),
        decoder_(std::move(decoder)),
        output_(std::move(output)) {}

  // The first vocabulary id of this member's rows.
  int64_t FirstId() const { return ModelGroups::Rank(tp_) * output_.out(); }

  const LanguageModelConfig config_;
  comm::Communicator* const tp_;          // Null: no tensor parallelism. Not owned.
  std::unique_ptr<Parameter> embedding_;  // (V, C); (V / tp, C), this member's rows.
  std::unique_ptr<TransformerBlock> decoder_;
  LinearWeights output_;  // (V, C), no bias; (V / tp, C), this member's rows.
};

}  // namespace mimo
