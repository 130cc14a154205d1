// BuildContext: naming and creating the parameters of a block.
#include "mimo/build_context.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace mimo {

BuildContext BuildContext::Child(absl::string_view name) const {
  BuildContext child = *this;
  child.prefix = prefix.empty() ? std::string(name) : absl::StrCat(prefix, ".", name);
  return child;
}

absl::StatusOr<std::unique_ptr<Parameter>> BuildContext::NewParameter(
    absl::string_view name, kernels::Shape shape, InitKind init, float std, bool weight_decay,
    std::vector<ParameterShard> shards) const {
  ParameterSpec spec;
  spec.name = prefix.empty() ? std::string(name) : absl::StrCat(prefix, ".", name);
  spec.shape = std::move(shape);
  spec.init = init;
  spec.std = std;
  spec.weight_decay = weight_decay;
  spec.shards = std::move(shards);
  if (describe_only) return Parameter::Describe(std::move(spec), config->dtype);
  return Parameter::Create(*ops, std::move(spec), config->dtype, seed);
}

}  // namespace mimo
