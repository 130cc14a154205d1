// The projector between a modality encoder and the language model: a linear map, or a two-layer
// MLP with an exact GELU between (LLaVA's), from the encoder's width to the language model's.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"
#include "mimo/linear_weights.h"

namespace mimo {

enum class ProjectorKind {
  kLinear,  // y = x W^T + b.
  kMlp,     // y = fc2(gelu(fc1(x))), biases on both.
};

struct ProjectorConfig {
  ProjectorKind kind = ProjectorKind::kMlp;
  int64_t hidden_size = 0;  // kMlp: fc1's width; 0 means the output width. >= 0.
};

class Projector final : public Block {
 public:
  // Parameters under ctx.prefix: linear_fc1.weight (H, in) and .bias (H,) (H = `out` for
  // kLinear), and for kMlp linear_fc2.weight (out, H) and .bias (out,); weights N(0,
  // ctx.config->init_std^2), biases zero.
  static absl::StatusOr<std::unique_ptr<Projector>> Create(const BuildContext& ctx,
                                                           const ProjectorConfig& config,
                                                           int64_t in, int64_t out);

  // x (T, in) -> (T, out) in x's dtype.
  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const kernels::Tensor& x) override;
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           const kernels::Tensor& dy) override;
  void AppendParameters(std::vector<Parameter*>& out) const override;

 private:
  Projector(LinearWeights fc1, LinearWeights fc2) : fc1_(std::move(fc1)), fc2_(std::move(fc2)) {}
  bool mlp() const { return fc2_.weight != nullptr; }

  LinearWeights fc1_;
  LinearWeights fc2_;  // Empty for kLinear.
};

}  // namespace mimo
