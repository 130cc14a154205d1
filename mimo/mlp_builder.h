// The one interface a transformer layer builds its MLP through: the dense MLP is one
// implementation, the Mixture-of-Experts layer another.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"

namespace mimo {

class MlpBuilder {
 public:
  virtual ~MlpBuilder() = default;
  // The MLP of layer ctx.layer_number: a Block from (tokens, hidden_size) to the same shape,
  // its parameters named under ctx.prefix.
  virtual absl::StatusOr<std::unique_ptr<Block>> Build(const BuildContext& ctx) const = 0;
};

}  // namespace mimo
