// What building one block of a transformer stack needs: the ops its parameters live on, the
// configuration, the rank's process groups, the job seed and the parameters' name prefix.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/ops.h"
#include "mimo/model_groups.h"
#include "mimo/parameter.h"
#include "mimo/transformer_config.h"

namespace mimo {

struct BuildContext {
  kernels::Ops* ops = nullptr;
  const TransformerConfig* config = nullptr;  // Validated.
  uint64_t seed = 0;                          // The job seed: keys the initial values.
  std::string prefix;                         // "decoder.layers.3.mlp"
  int layer_number = 0;                       // 0-based, in the whole stack.
  // The block belongs to a multi-token-prediction layer (Megatron's MTP) after the main stack:
  // its MoE auxiliary losses are reported apart from the main stack's (AuxLossRecord::mtp).
  bool mtp_layer = false;
  ModelGroups groups;  // Default: this rank alone in every group.
  // Parameters are described, not created (Parameter::Describe: no memory, no initial values):
  // a model built so can list its parameters and nothing else (mimo-convert's target layouts).
  bool describe_only = false;

  // The context of a sub-block: prefix + "." + name.
  BuildContext Child(absl::string_view name) const;
  // A parameter named prefix + "." + name in config->dtype; `shards` place it in a full tensor
  // split across ranks.
  absl::StatusOr<std::unique_ptr<Parameter>> NewParameter(
      absl::string_view name, kernels::Shape shape, InitKind init, float std, bool weight_decay,
      std::vector<ParameterShard> shards = {}) const;
};

}  // namespace mimo
