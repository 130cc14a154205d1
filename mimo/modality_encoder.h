// A modality encoder of the MIMO model: images cut into patches (vision) or stacked mel frames
// (audio) embedded by a linear layer plus learned position embeddings, a bidirectional
// transformer, and the projector to the language model's width; forward and backward.
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
#include "mimo/packed_sequences.h"
#include "mimo/parameter.h"
#include "mimo/projector.h"
#include "mimo/transformer_block.h"

namespace mimo {

enum class EncoderInput {
  kImages,  // (N, num_channels, image_size, image_size) -> (image_size / patch_size)^2 tokens each.
  kAudio,   // (frames, num_mel_bins), samples packed -> frames / frames_per_token tokens each.
};

struct ModalityEncoderConfig {
  EncoderInput input = EncoderInput::kImages;
  // kImages: square images, side a multiple of patch_size.
  int64_t image_size = 0;
  int64_t patch_size = 0;
  int64_t num_channels = 3;
  // kAudio: a sample's frames are a multiple of frames_per_token, at most max_frames.
  int64_t num_mel_bins = 0;
  int64_t frames_per_token = 1;
  int64_t max_frames = 0;
  // The encoder's layers: usually bidirectional (causal false), LayerNorm, GELU, biases, no RoPE.
  TransformerConfig transformer;
  ProjectorConfig projector;
  int64_t output_size = 0;  // The language model's hidden size.

  // Tokens of one sample at most (the position embeddings' rows), and features per token.
  int64_t max_tokens() const;
  int64_t token_features() const;
};

// InvalidArgument naming the field at fault.
absl::Status ValidateModalityEncoderConfig(const ModalityEncoderConfig& config);

struct EncoderBatch {
  kernels::Tensor input;  // In the compute dtype; shaped as EncoderInput says. First stage only.
  // kAudio: each sample's frames, summing to input's rows (host). kImages: unused.
  std::vector<int32_t> frames;
  // Pipeline stages after the first: the previous stage's output rows, this tp member's block
  // ((tokens + padding) / tp, hidden_size) in the compute dtype, and (kImages) the number of
  // images, which input gives on the first stage.
  kernels::Tensor hidden;
  int64_t images = 0;
};

struct EncoderOutput {
  // Last stage: (tokens, output_size), every sample's tokens in order.
  kernels::Tensor embeddings;
  // Stages before the last: the stage's output rows for the next stage (EncoderBatch::hidden).
  kernels::Tensor hidden;
  std::vector<int32_t> tokens;  // Per sample (host).
  std::unique_ptr<SavedActivations> saved;
};

class ModalityEncoder {
 public:
  // Parameters under ctx.prefix: embeddings.input_projection.weight (C, token_features) and
  // .bias (C,), embeddings.position_embedding.weight (max_tokens, C), encoder.layers.<i>.*,
  // encoder.final_layernorm.*, projector.* (projector.h).
  //
  // With a tensor-parallel group of n > 1 members (ctx.groups.tp) the encoder's layers are
  // tensor and sequence parallel (TransformerLayer): the tokens, padded with a sequence of zero
  // rows to a multiple of n, are embedded whole by every member, each keeps its block of the rows
  // through the layers, and the final rows are gathered for the projector; the input projection,
  // position embeddings and projector are whole on every member, computed on every row alike
  // (their gradients the same on every member). Every member returns all the embeddings and
  // must be given the same d(embeddings).
  //
  // With a context-parallel group of m > 1 members (ctx.groups.cp) too, the padding makes n m
  // equal blocks: cp member c embeds and projects span c of the m spans (the rows its n tp
  // members carry through the layers, one block each), the layers attend over whole sequences
  // by all-to-all attention (SelfAttention: n m must divide the heads and query groups, else
  // InvalidArgument here), hidden dropout takes the one-rank masks of the span's rows, and the
  // projected spans are gathered over cp. The whole parameters' gradients are then the span's
  // part: summed over the cp members (with the replicas', dp x cp) they are the whole ones.
  //
  // With a pipeline `stage` of count > 1 the encoder holds that stage's part: its share of the
  // layers (PipelineStage), the first stage also the input projection and position embeddings,
  // the last the final norm and the projector; parameters keep their whole-model names.
  static absl::StatusOr<std::unique_ptr<ModalityEncoder>> Create(
      const BuildContext& ctx, const ModalityEncoderConfig& config,
      const PipelineStage& stage = {});

  // Each sample attends within itself (ctx.sequences is not read: the encoder packs its own).
  // Stages after the first read batch.hidden (and the samples' sizes) instead of the input;
  // stages before the last return their output rows (hidden) instead of the embeddings.
  absl::StatusOr<EncoderOutput> Forward(const StepContext& ctx, const EncoderBatch& batch);
  // From d(embeddings) (tokens, output_size) on the last stage, the gradient of the output rows
  // (EncoderOutput::hidden's shape) before it: adds every parameter's gradient and returns, on
  // stages after the first, the gradient of batch.hidden (undefined on the first).
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           const kernels::Tensor& dy);
  void AppendParameters(std::vector<Parameter*>& out) const;
  const ModalityEncoderConfig& config() const { return config_; }
  const PipelineStage& stage() const { return stage_; }

 private:
  ModalityEncoder(const ModalityEncoderConfig& config, const PipelineStage& stage,
                  comm::Communicator* tp, comm::Communicator* cp,
                  std::optional<LinearWeights> input_projection,
                  std::unique_ptr<Parameter> positions, std::unique_ptr<TransformerBlock> encoder,
                  std::unique_ptr<Projector> projector)
      : config_(config),
        stage_(stage),
        tp_(tp),
        cp_(cp),
        input_projection_(std::move(input_projection)),
        positions_(std::move(positions)),
        encoder_(std::move(encoder)),
        projector_(std::move(projector)) {}

  const ModalityEncoderConfig config_;
  const PipelineStage stage_;
  comm::Communicator* const tp_;                   // Null: no tensor parallelism. Not owned.
  comm::Communicator* const cp_;                   // Null: no context parallelism. Not owned.
  std::optional<LinearWeights> input_projection_;  // First stage: (C, token_features) + (C,)
  std::unique_ptr<Parameter> positions_;           // First stage: (max_tokens, C)
  std::unique_ptr<TransformerBlock> encoder_;
  std::unique_ptr<Projector> projector_;  // Last stage.
};

}  // namespace mimo
