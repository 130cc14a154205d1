// The whole MIMO model on one rank: the modality encoders' outputs (each through its projector)
// spliced into the language model's token stream at their placeholder tokens, the loss on the
// text, and the gradients back through the language model into the encoders. The single-rank
// reference the distributed layouts are measured against.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"
#include "mimo/language_model.h"
#include "mimo/modality_encoder.h"

namespace mimo {

struct MimoModelConfig {
  LanguageModelConfig language;
  // Optional encoders; their output_size must be the language model's hidden size.
  std::optional<ModalityEncoderConfig> vision;
  std::optional<ModalityEncoderConfig> audio;
};

// InvalidArgument naming the module and field at fault.
absl::Status ValidateMimoModelConfig(const MimoModelConfig& config);

struct MimoBatch {
  // Tokens and labels of the packed text (the StepContext's sequences); text.embeddings and
  // text.embedding_positions are filled by the model.
  LanguageModelBatch text;
  EncoderBatch vision;  // Used when the model has a vision encoder and vision_positions is set.
  EncoderBatch audio;
  // (host) The placeholder token each encoder output token replaces, in the encoders' output
  // order: as many as that encoder makes for its batch.
  std::vector<int32_t> vision_positions;
  std::vector<int32_t> audio_positions;
};

struct MimoOutput {
  kernels::Tensor loss_sum;    // (1,) fp32
  kernels::Tensor token_loss;  // (T,) fp32
  std::unique_ptr<SavedActivations> saved;
};

class MimoModel {
 public:
  // Parameters: vision.*, audio.* (modality_encoder.h) and language.* (language_model.h) under
  // ctx.prefix.
  static absl::StatusOr<std::unique_ptr<MimoModel>> Create(const BuildContext& ctx,
                                                           const MimoModelConfig& config);

  absl::StatusOr<MimoOutput> Forward(const StepContext& ctx, const MimoBatch& batch);
  // With d(objective)/d(loss_sum) = loss_sum_grad (the auxiliary losses' gradients follow
  // ctx.loss_scale): adds every parameter's gradient.
  absl::Status Backward(const StepContext& ctx, std::unique_ptr<SavedActivations> saved,
                        float loss_sum_grad);
  void AppendParameters(std::vector<Parameter*>& out) const;
  std::vector<MoeLayer*> moe_layers() const { return language_->moe_layers(); }

 private:
  MimoModel(std::unique_ptr<ModalityEncoder> vision, std::unique_ptr<ModalityEncoder> audio,
            std::unique_ptr<LanguageModel> language)
      : vision_(std::move(vision)), audio_(std::move(audio)), language_(std::move(language)) {}

  std::unique_ptr<ModalityEncoder> vision_;  // Null without one.
  std::unique_ptr<ModalityEncoder> audio_;   // Null without one.
  std::unique_ptr<LanguageModel> language_;
};

}  // namespace mimo
