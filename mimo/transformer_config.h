// The configuration of a stack of transformer layers (Megatron's TransformerConfig, the fields
// this model uses), validated once.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/dtype.h"

namespace mimo {

enum class NormKind {
  kRmsNorm,    // Language models.
  kLayerNorm,  // ViT-style encoders.
};

enum class MlpActivation {
  kSwiglu,    // fc1 is (2*ffn, hidden): gate rows, then up rows.
  kGelu,      // Exact (erf) GELU, as torch.nn.functional.gelu.
  kGeluTanh,  // Tanh approximation, fused into fc1's GEMM where cuBLASLt can.
};

struct TransformerConfig {
  // Layers in the whole stack (all pipeline stages): output projections are initialized with
  // std init_std / sqrt(2 * num_layers), like Megatron's scaled_init_method_normal. > 0.
  int num_layers = 1;
  int64_t hidden_size = 0;          // > 0.
  int64_t num_attention_heads = 0;  // > 0.
  // Key/value heads (grouped-query attention); 0 means num_attention_heads. Divides the heads.
  int64_t num_query_groups = 0;
  // Per-head width; 0 means hidden_size / num_attention_heads (which must then divide evenly).
  int64_t kv_channels = 0;
  int64_t ffn_hidden_size = 0;  // Of the dense MLP; > 0.
  NormKind norm = NormKind::kRmsNorm;
  float norm_epsilon = 1e-5f;  // > 0.
  MlpActivation activation = MlpActivation::kSwiglu;
  // Biases on every linear layer (Megatron's add_bias_linear, whose default is true; language
  // models usually turn it off), or on the query/key/value projection only (add_qkv_bias).
  bool add_bias_linear = true;
  bool add_qkv_bias = false;
  // Causal attention (language models) or bidirectional (encoders).
  bool causal = true;
  // Rotary position embedding on queries and keys over the first rotary_dim channels of each
  // head (0 means all), or none (encoders with learned position embeddings).
  bool rotary = true;
  int64_t rotary_dim = 0;
  double rotary_base = 10000.0;
  // Dropout after attention and after the MLP, before each residual add; in [0, 1).
  float hidden_dropout = 0.0f;
  float init_std = 0.02f;  // > 0.
  // Of weights and activations; parameters keep fp32 master weights and gradients.
  kernels::DType dtype = kernels::DType::kBF16;

  int64_t query_groups() const {
    return num_query_groups == 0 ? num_attention_heads : num_query_groups;
  }
  int64_t head_dim() const {
    return kv_channels != 0 ? kv_channels
                            : (num_attention_heads > 0 ? hidden_size / num_attention_heads : 0);
  }
};

// InvalidArgument naming every field at fault.
absl::Status ValidateTransformerConfig(const TransformerConfig& config);

}  // namespace mimo
