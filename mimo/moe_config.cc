// Validation of MoeConfig.
#include "mimo/moe_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace mimo {

absl::Status ValidateMoeConfig(const MoeConfig& c) {
  if (absl::Status s = kernels::CheckRouterConfig(c.router); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("moe config: ", s.message()));
  }
  if (!(c.aux_loss_coeff >= 0.0f) || !std::isfinite(c.aux_loss_coeff) ||
      !(c.z_loss_coeff >= 0.0f) || !std::isfinite(c.z_loss_coeff)) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe config: aux_loss_coeff and z_loss_coeff must be finite and >= 0, got ",
                     c.aux_loss_coeff, " and ", c.z_loss_coeff));
  }
  if (c.expert_ffn_hidden_size < 0 || c.shared_expert_ffn_hidden_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "moe config: expert_ffn_hidden_size and shared_expert_ffn_hidden_size must be >= 0, got ",
        c.expert_ffn_hidden_size, " and ", c.shared_expert_ffn_hidden_size));
  }
  if (c.expert_bias &&
      (!(c.expert_bias_update_rate > 0.0f) || !std::isfinite(c.expert_bias_update_rate))) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe config: expert_bias_update_rate must be finite and > 0, got ",
                     c.expert_bias_update_rate));
  }
  if (!(c.capacity_factor >= 0.0 && c.capacity_factor <= 1e6)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "moe config: capacity_factor must be in [0, 1e6] (0: dropless), got ", c.capacity_factor));
  }
  if (c.align < 1 || c.align > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe config: align must be in [1, 1024], got ", c.align));
  }
  return absl::OkStatus();
}

}  // namespace mimo
