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
  // neither takes weight decay. With a tensor-parallel group of n > 1 members (ctx.groups.tp) the
  // norm is sequence parallel: each member normalizes its block of the rows, and the parameters'
  // gradients (each member's rows' part) are summed over the group in the backward, so the
  // replicated parameters stay equal on every member.
  static absl::StatusOr<std::unique_ptr<Norm>> Create(const BuildContext& ctx, int64_t features);

  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const kernels::Tensor& x) override;
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           const kernels::Tensor& dy) override;
  void AppendParameters(std::vector<Parameter*>& out) const override;

 private:
  Norm(NormKind kind, float eps, int64_t features, comm::Communicator* tp,
       std::unique_ptr<Parameter> weight, std::unique_ptr<Parameter> bias)
      : kind_(kind),
        eps_(eps),
        features_(features),
        tp_(tp),
        weight_(std::move(weight)),
        bias_(std::move(bias)) {}

  NormKind kind_;
  float eps_;
  int64_t features_;
  comm::Communicator* tp_;             // Null: not sequence parallel. Not owned.
  std::unique_ptr<Parameter> weight_;  // (features,)
  std::unique_ptr<Parameter> bias_;    // (features,), LayerNorm only.
};

}  // namespace mimo
