// Validation of TransformerConfig.
#include "mimo/transformer_config.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mimo {

absl::Status ValidateTransformerConfig(const TransformerConfig& c) {
  std::vector<std::string> errors;
  if (c.num_layers <= 0)
    errors.push_back(absl::StrCat("num_layers must be > 0, got ", c.num_layers));
  if (c.hidden_size <= 0) {
    errors.push_back(absl::StrCat("hidden_size must be > 0, got ", c.hidden_size));
  }
  if (c.num_attention_heads <= 0) {
    errors.push_back(absl::StrCat("num_attention_heads must be > 0, got ", c.num_attention_heads));
  } else {
    if (c.num_query_groups < 0 || c.query_groups() > c.num_attention_heads ||
        (c.query_groups() > 0 && c.num_attention_heads % c.query_groups() != 0)) {
      errors.push_back(absl::StrCat("num_query_groups (", c.num_query_groups,
                                    ") must divide num_attention_heads (", c.num_attention_heads,
                                    ")"));
    }
    if (c.kv_channels < 0) {
      errors.push_back(absl::StrCat("kv_channels must be >= 0, got ", c.kv_channels));
    } else if (c.kv_channels == 0 && c.hidden_size > 0 &&
               c.hidden_size % c.num_attention_heads != 0) {
      errors.push_back(absl::StrCat("hidden_size (", c.hidden_size,
                                    ") must be a multiple of num_attention_heads (",
                                    c.num_attention_heads, ") unless kv_channels is set"));
    }
  }
  if (c.ffn_hidden_size <= 0) {
    errors.push_back(absl::StrCat("ffn_hidden_size must be > 0, got ", c.ffn_hidden_size));
  }
  if (!(c.norm_epsilon > 0.0f)) {
    errors.push_back(absl::StrCat("norm_epsilon must be > 0, got ", c.norm_epsilon));
  }
  if (c.rotary) {
    const int64_t head_dim = c.head_dim();
    if (c.rotary_dim < 0 || c.rotary_dim % 2 != 0 || c.rotary_dim > head_dim ||
        (c.rotary_dim == 0 && head_dim % 2 != 0)) {
      errors.push_back(absl::StrCat("rotary_dim (", c.rotary_dim,
                                    ") must be even and at most the head width (", head_dim,
                                    "); 0 means the head width, which must then be even"));
    }
    if (!(c.rotary_base > 0.0)) {
      errors.push_back(absl::StrCat("rotary_base must be > 0, got ", c.rotary_base));
    }
  }
  if (!(c.hidden_dropout >= 0.0f && c.hidden_dropout < 1.0f)) {
    errors.push_back(absl::StrCat("hidden_dropout must be in [0, 1), got ", c.hidden_dropout));
  }
  if (!(c.init_std > 0.0f))
    errors.push_back(absl::StrCat("init_std must be > 0, got ", c.init_std));
  if (c.dtype != kernels::DType::kBF16 && c.dtype != kernels::DType::kF32) {
    errors.push_back(absl::StrCat("dtype must be bf16 or f32, got ", kernels::DTypeName(c.dtype)));
  }
  if (errors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("transformer config: ", absl::StrJoin(errors, "; ")));
}

}  // namespace mimo
