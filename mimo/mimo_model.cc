// MimoModel: the encoders, their outputs concatenated (vision rows, then audio rows) and placed
// over their placeholders by the language model; the backward splits the rows' gradient again.
#include "mimo/mimo_model.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

struct MimoSaved final : SavedActivations {
  std::unique_ptr<SavedActivations> vision, audio, language;
  int64_t vision_rows = 0, audio_rows = 0;
};

absl::Status CheckEncoder(const std::optional<ModalityEncoderConfig>& c, const char* name,
                          int64_t hidden) {
  if (!c.has_value()) return absl::OkStatus();
  const absl::Status s = ValidateModalityEncoderConfig(*c);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(name, ": ", s.message()));
  if (c->output_size != hidden) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": output_size ", c->output_size,
                                                   " is not the language model's hidden size ",
                                                   hidden));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateMimoModelConfig(const MimoModelConfig& c) {
  MIMO_RETURN_IF_ERROR(ValidateLanguageModelConfig(c.language));
  const int64_t hidden = c.language.transformer.hidden_size;
  MIMO_RETURN_IF_ERROR(CheckEncoder(c.vision, "vision", hidden));
  MIMO_RETURN_IF_ERROR(CheckEncoder(c.audio, "audio", hidden));
  for (const auto* e : {&c.vision, &c.audio}) {
    if (e->has_value() && (*e)->transformer.dtype != c.language.transformer.dtype) {
      return absl::InvalidArgumentError("MimoModelConfig: every module computes in one dtype");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MimoModel>> MimoModel::Create(const BuildContext& ctx,
                                                             const MimoModelConfig& config) {
  MIMO_RETURN_IF_ERROR(ValidateMimoModelConfig(config));
  std::unique_ptr<ModalityEncoder> vision, audio;
  if (config.vision.has_value()) {
    MIMO_ASSIGN_OR_RETURN(vision, ModalityEncoder::Create(ctx.Child("vision"), *config.vision));
  }
  if (config.audio.has_value()) {
    MIMO_ASSIGN_OR_RETURN(audio, ModalityEncoder::Create(ctx.Child("audio"), *config.audio));
  }
  MIMO_ASSIGN_OR_RETURN(auto language,
                        LanguageModel::Create(ctx.Child("language"), config.language));
  return std::unique_ptr<MimoModel>(
      new MimoModel(std::move(vision), std::move(audio), std::move(language)));
}

absl::StatusOr<MimoOutput> MimoModel::Forward(const StepContext& ctx, const MimoBatch& batch) {
  auto saved = std::make_unique<MimoSaved>();
  LanguageModelBatch text = batch.text;
  text.embedding_positions.clear();
  std::vector<kernels::Tensor> parts;
  auto encode = [&](ModalityEncoder* encoder, const EncoderBatch& in,
                    const std::vector<int32_t>& positions, const char* name,
                    std::unique_ptr<SavedActivations>& keep, int64_t& rows) -> absl::Status {
    if (positions.empty()) return absl::OkStatus();
    if (encoder == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "MimoModel: ", name, " positions given, but the model has no ", name, " encoder"));
    }
    MIMO_ASSIGN_OR_RETURN(EncoderOutput out, encoder->Forward(ctx, in));
    if (out.embeddings.size(0) != static_cast<int64_t>(positions.size())) {
      return absl::InvalidArgumentError(absl::StrCat("MimoModel: the ", name, " encoder made ",
                                                     out.embeddings.size(0), " tokens for ",
                                                     positions.size(), " placeholder positions"));
    }
    keep = std::move(out.saved);
    rows = out.embeddings.size(0);
    parts.push_back(std::move(out.embeddings));
    text.embedding_positions.insert(text.embedding_positions.end(), positions.begin(),
                                    positions.end());
    return absl::OkStatus();
  };
  MIMO_RETURN_IF_ERROR(encode(vision_.get(), batch.vision, batch.vision_positions, "vision",
                              saved->vision, saved->vision_rows));
  MIMO_RETURN_IF_ERROR(encode(audio_.get(), batch.audio, batch.audio_positions, "audio",
                              saved->audio, saved->audio_rows));
  if (parts.size() == 1) {
    text.embeddings = parts[0];
  } else if (parts.size() == 2) {
    const int64_t c = parts[0].size(1), m = parts[0].size(0) + parts[1].size(0);
    MIMO_ASSIGN_OR_RETURN(text.embeddings, NewTensor(ctx, {m, c}, parts[0].dtype()));
    MIMO_RETURN_IF_ERROR(ctx.ops->Copy(text.embeddings.data(), parts[0].data(), parts[0].nbytes()));
    MIMO_RETURN_IF_ERROR(ctx.ops->Copy(RowAt(text.embeddings, parts[0].size(0), c), parts[1].data(),
                                       parts[1].nbytes()));
  }
  MIMO_ASSIGN_OR_RETURN(LanguageModelOutput out, language_->Forward(ctx, text));
  saved->language = std::move(out.saved);
  return MimoOutput{std::move(out.loss_sum), std::move(out.token_loss), std::move(saved)};
}

absl::Status MimoModel::Backward(const StepContext& ctx,
                                 std::unique_ptr<SavedActivations> saved_base,
                                 float loss_sum_grad) {
  MIMO_ASSIGN_OR_RETURN(auto saved, SavedAs<MimoSaved>(std::move(saved_base), "MimoModel"));
  MIMO_ASSIGN_OR_RETURN(kernels::Tensor d,
                        language_->Backward(ctx, std::move(saved->language), loss_sum_grad));
  const int64_t v = saved->vision_rows, a = saved->audio_rows;
  if (v > 0) {
    MIMO_ASSIGN_OR_RETURN(kernels::Tensor dv, d.Slice(0, 0, v));
    MIMO_RETURN_IF_ERROR(vision_->Backward(ctx, std::move(saved->vision), dv).status());
  }
  if (a > 0) {
    MIMO_ASSIGN_OR_RETURN(kernels::Tensor da, d.Slice(0, v, v + a));
    MIMO_RETURN_IF_ERROR(audio_->Backward(ctx, std::move(saved->audio), da).status());
  }
  return absl::OkStatus();
}

void MimoModel::AppendParameters(std::vector<Parameter*>& out) const {
  if (vision_ != nullptr) vision_->AppendParameters(out);
  if (audio_ != nullptr) audio_->AppendParameters(out);
  language_->AppendParameters(out);
}

}  // namespace mimo
