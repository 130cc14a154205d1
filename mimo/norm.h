// The normalization block of a transformer layer: RMSNorm (weight) or LayerNorm (weight and
// bias) over the hidden features, per token.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"

namespace mimo {

class Norm final : public Block {
 public:
  // Parameters prefix.weight (ones) and, for LayerNorm, prefix.bias (zeros), over `features`;
  // neither takes weight decay.
  static absl::StatusOr<std::unique_ptr<Norm>> Create(const BuildContext& ctx, int64_t features);

  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const kernels::Tensor& x) override;
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           const kernels::Tensor& dy) override;
  void AppendParameters(std::vector<Parameter*>& out) const override;

 private:
  Norm(NormKind kind, float eps, int64_t features, std::unique_ptr<Parameter> weight,
       std::unique_ptr<Parameter> bias)
      : kind_(kind),
        eps_(eps),
        features_(features),
        weight_(std::move(weight)),
        bias_(std::move(bias)) {}

  NormKind kind_;
  float eps_;
  int64_t features_;
  std::unique_ptr<Parameter> weight_;  // (features,)
  std::unique_ptr<Parameter> bias_;    // (features,), LayerNorm only.
};

}  // namespace mimo
