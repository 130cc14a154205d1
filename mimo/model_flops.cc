// Model FLOPs per layer kind, summed over the layers and the tokens.
#include "mimo/model_flops.h"

namespace mimo {
namespace {

// Forward FLOPs per token of the attention projections (Q, K, V and the output).
double ProjectionFlops(const TransformerConfig& t) {
  const double h = static_cast<double>(t.hidden_size);
  const double q = static_cast<double>(t.num_attention_heads * t.head_dim());
  const double kv = static_cast<double>(t.query_groups() * t.head_dim());
  return 2 * h * (q + 2 * kv) + 2 * q * h;
}

// Forward FLOPs of one MLP of width `ffn` per token.
double MlpFlops(const TransformerConfig& t, int64_t ffn) {
  const double matrices = t.activation == MlpActivation::kSwiglu ? 3 : 2;
  return 2 * matrices * static_cast<double>(t.hidden_size) * static_cast<double>(ffn);
}

// Forward FLOPs of the scores and the weighted values over `pairs` attended pairs.
double AttentionFlops(const TransformerConfig& t, double pairs) {
  return 4 * static_cast<double>(t.num_attention_heads * t.head_dim()) * pairs;
}

}  // namespace

double LanguageModelTrainingFlops(const LanguageModelConfig& c,
                                  const std::vector<int32_t>& lengths) {
  const TransformerConfig& t = c.transformer;
  double tokens = 0, pairs = 0;
  for (int32_t n : lengths) {
    tokens += n;
    pairs += 0.5 * static_cast<double>(n) * (static_cast<double>(n) + 1);
  }
  double per_token = 0;                                 // Every layer's token-wise matrices.
  for (int layer = 0; layer < t.num_layers; ++layer) {  // Numbered from 0, as the model does.
    per_token += ProjectionFlops(t);
    if (c.moe.has_value() && layer % c.moe_layer_freq == 0) {
      const MoeConfig& m = *c.moe;
      const int64_t width =
          m.expert_ffn_hidden_size > 0 ? m.expert_ffn_hidden_size : t.ffn_hidden_size;
      per_token += 2 * static_cast<double>(t.hidden_size) * static_cast<double>(m.router.experts);
      per_token += static_cast<double>(m.router.top_k) * MlpFlops(t, width);
      if (m.shared_expert_ffn_hidden_size > 0) {
        per_token += MlpFlops(t, m.shared_expert_ffn_hidden_size);
      }
    } else {
      per_token += MlpFlops(t, t.ffn_hidden_size);
    }
  }
  per_token += 2 * static_cast<double>(t.hidden_size) * static_cast<double>(c.vocab_size);
  const double forward = per_token * tokens + t.num_layers * AttentionFlops(t, pairs);
  return 3 * forward;
}

double EncoderTrainingFlops(const ModalityEncoderConfig& c, const std::vector<int64_t>& tokens) {
  const TransformerConfig& t = c.transformer;
  const double h = static_cast<double>(t.hidden_size);
  const double out = static_cast<double>(c.output_size);
  double n = 0, pairs = 0;
  for (int64_t k : tokens) {
    n += static_cast<double>(k);
    pairs += static_cast<double>(k) * static_cast<double>(k);
  }
  double per_token = 2 * static_cast<double>(c.token_features()) * h;  // The input projection.
  per_token += t.num_layers * (ProjectionFlops(t) + MlpFlops(t, t.ffn_hidden_size));
  if (c.projector.kind == ProjectorKind::kLinear) {
    per_token += 2 * h * out;
  } else {
    const double mid =
        c.projector.hidden_size > 0 ? static_cast<double>(c.projector.hidden_size) : out;
    per_token += 2 * h * mid + 2 * mid * out;
  }
  return 3 * (per_token * n + t.num_layers * AttentionFlops(t, pairs));
}

}  // namespace mimo
