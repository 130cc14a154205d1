// MimoModelConfigFromSpec: the spec's modules mapped field by field onto the mimo configs.
#include "worker/model_spec.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mimo::worker {
namespace {

TransformerConfig Transformer(const v1::Transformer& t, kernels::DType dtype, bool language) {
  TransformerConfig c;
  c.num_layers = t.num_layers();
  c.hidden_size = t.hidden_size();
  c.num_attention_heads = t.num_attention_heads();
  c.num_query_groups = t.num_query_groups();
  c.ffn_hidden_size = t.ffn_hidden_size();
  c.dtype = dtype;
  if (language) {
    c.norm = NormKind::kRmsNorm;
    c.activation = MlpActivation::kSwiglu;
    c.add_bias_linear = false;
    c.causal = true;
    c.rotary = true;
  } else {
    c.norm = NormKind::kLayerNorm;
    c.activation = MlpActivation::kGelu;
    c.add_bias_linear = true;
    c.causal = false;
    c.rotary = false;
  }
  return c;
}

ProjectorConfig Projector(const v1::Projector& p) {
  return {
      .kind = p.kind() == v1::Projector::KIND_LINEAR ? ProjectorKind::kLinear : ProjectorKind::kMlp,
      .hidden_size = p.hidden_size()};
}

std::optional<MoeConfig> Moe(const v1::MoE& m, int64_t ffn) {
  if (m.num_experts() == 0) return std::nullopt;
  MoeConfig c;
  c.router.experts = m.num_experts();
  c.router.top_k = m.top_k();
  c.router.score = m.router_score() == v1::MoE::ROUTER_SCORE_SIGMOID
                       ? kernels::RouterScore::kSigmoid
                       : kernels::RouterScore::kSoftmax;
  c.aux_loss_coeff = static_cast<float>(m.aux_loss_coeff());
  c.z_loss_coeff = static_cast<float>(m.z_loss_coeff());
  c.expert_ffn_hidden_size = m.ffn_hidden_size();
  const int64_t expert_width = m.ffn_hidden_size() > 0 ? m.ffn_hidden_size() : ffn;
  c.shared_expert_ffn_hidden_size = m.shared_expert_ffn_hidden_size() > 0
                                        ? m.shared_expert_ffn_hidden_size()
                                        : m.num_shared_experts() * expert_width;
  c.capacity_factor = m.capacity_factor();
  c.router.normalize = !m.has_normalize_weights() || m.normalize_weights();
  if (m.top_k_scaling_factor() != 0) {
    c.router.scaling_factor = static_cast<float>(m.top_k_scaling_factor());
  }
  c.router.num_groups = m.num_groups();
  c.router.group_top_k = m.group_top_k();
  c.per_sequence_aux_loss = m.per_sequence_aux_loss();
  c.expert_bias = m.expert_bias();
  if (m.expert_bias_update_rate() != 0) {
    c.expert_bias_update_rate = static_cast<float>(m.expert_bias_update_rate());
  }
  c.drop_policy = m.drop_policy() == v1::MoE::DROP_POLICY_POSITION
                      ? kernels::TokenDropPolicy::kPosition
                      : kernels::TokenDropPolicy::kProbs;
  return c;
}

absl::Status InModule(const absl::Status& s, const std::string& module) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat("module \"", module, "\": ", s.message()));
}

}  // namespace

kernels::DType ComputeDType(v1::Precision precision, bool cuda) {
  switch (precision) {
    case v1::PRECISION_FP32:
      return kernels::DType::kF32;
    case v1::PRECISION_BF16:
      return kernels::DType::kBF16;
    default:
      return cuda ? kernels::DType::kBF16 : kernels::DType::kF32;
  }
}

absl::StatusOr<MimoModelConfig> MimoModelConfigFromSpec(const v1::JobSpec& spec,
                                                        kernels::DType dtype) {
  MimoModelConfig config;
  bool language = false;
  for (const v1::Module& module : spec.modules()) {
    switch (module.model_case()) {
      case v1::Module::kLanguage: {
        if (language) {
          return absl::InvalidArgumentError(
              absl::StrCat("module \"", module.name(), "\": a second language model"));
        }
        language = true;
        const v1::LanguageModel& l = module.language();
        LanguageModelConfig& c = config.language;
        c.transformer = Transformer(l.transformer(), dtype, true);
        if (l.rotary_base() > 0) c.transformer.rotary_base = l.rotary_base();
        c.vocab_size = l.vocab_size();
        c.moe = Moe(l.moe(), l.transformer().ffn_hidden_size());
        c.moe_layer_freq = l.moe().moe_layer_freq() > 0 ? l.moe().moe_layer_freq() : 1;
        c.share_embeddings_and_output_weights = l.share_embeddings_and_output_weights();
        if (l.vocab_chunk() > 0) c.vocab_chunk = l.vocab_chunk();
        MIMO_RETURN_IF_ERROR(InModule(ValidateLanguageModelConfig(c), module.name()));
        break;
      }
      case v1::Module::kVision:
      case v1::Module::kAudio: {
        const bool vision = module.model_case() == v1::Module::kVision;
        std::optional<ModalityEncoderConfig>& slot = vision ? config.vision : config.audio;
        if (slot.has_value()) {
          return absl::InvalidArgumentError(
              absl::StrCat("module \"", module.name(), "\": a second ", vision ? "vision" : "audio",
                           " encoder (one of each kind is supported)"));
        }
        ModalityEncoderConfig c;
        if (vision) {
          const v1::VisionEncoder& v = module.vision();
          c.input = EncoderInput::kImages;
          c.image_size = v.image_size();
          c.patch_size = v.patch_size();
          c.num_channels = v.num_channels();
          c.transformer = Transformer(v.transformer(), dtype, false);
          c.projector = Projector(v.projector());
        } else {
          const v1::AudioEncoder& a = module.audio();
          c.input = EncoderInput::kAudio;
          c.num_mel_bins = a.num_mel_bins();
          c.frames_per_token = a.frames_per_token();
          c.max_frames = a.max_frames();
          c.transformer = Transformer(a.transformer(), dtype, false);
          c.projector = Projector(a.projector());
        }
        slot = c;
        break;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("module \"", module.name(), "\": no model (vision, audio or language)"));
    }
  }
  if (!language) return absl::InvalidArgumentError("the spec has no language module");
  // Encoders project to the language model's width.
  for (auto* e : {&config.vision, &config.audio}) {
    if (e->has_value()) (*e)->output_size = config.language.transformer.hidden_size;
  }
  for (const v1::Module& module : spec.modules()) {
    if (module.has_vision()) {
      MIMO_RETURN_IF_ERROR(InModule(ValidateModalityEncoderConfig(*config.vision), module.name()));
    } else if (module.has_audio()) {
      MIMO_RETURN_IF_ERROR(InModule(ValidateModalityEncoderConfig(*config.audio), module.name()));
    }
  }
  MIMO_RETURN_IF_ERROR(ValidateMimoModelConfig(config));
  return config;
}

}  // namespace mimo::worker
