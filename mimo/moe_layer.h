// The Mixture-of-Experts MLP of a transformer layer: a router choosing top-k experts per token,
// the tokens permuted to expert-contiguous order, each local expert's MLP, the outputs combined
// with the router's weights, optional shared experts beside them; the load-balancing and z losses
// reported and their gradients added in the backward. All experts are local (expert parallelism
// comes with the EP dispatch).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"
#include "mimo/dense_mlp.h"
#include "mimo/linear_weights.h"
#include "mimo/mlp_builder.h"
#include "mimo/moe_config.h"

namespace mimo {

class MoeLayer final : public Block {
 public:
  // Parameters (E experts, C hidden, F expert width, F1 = 2F for SwiGLU else F):
  //   router.weight (E, C); experts.linear_fc1.weight (E, F1, C);
  //   experts.linear_fc2.weight (E, C, F) with std init_std / sqrt(2 * num_layers);
  //   shared_experts.* (a DenseMlp of the shared width) when configured. Experts have no biases.
  static absl::StatusOr<std::unique_ptr<MoeLayer>> Create(const BuildContext& ctx,
                                                          const MoeConfig& moe);

  // Synchronizes with the device once per call to read the experts' row counts (the
  // per-expert GEMMs are launched from the host).
  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const kernels::Tensor& x) override;
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           const kernels::Tensor& dy) override;
  void AppendParameters(std::vector<Parameter*>& out) const override;

 private:
  MoeLayer(const TransformerConfig& config, const MoeConfig& moe, int layer_number, int64_t ffn,
           LinearWeights router, std::unique_ptr<Parameter> fc1, std::unique_ptr<Parameter> fc2,
           std::unique_ptr<DenseMlp> shared);

  const TransformerConfig config_;
  const MoeConfig moe_;
  const int layer_number_;
  const int64_t ffn_;  // F
  LinearWeights router_;
  std::unique_ptr<Parameter> fc1_;  // (E, F1, C)
  std::unique_ptr<Parameter> fc2_;  // (E, C, F)
  std::unique_ptr<DenseMlp> shared_;
};

// Builds MoeLayer for every layer it is asked for.
class MoeMlpBuilder final : public MlpBuilder {
 public:
  explicit MoeMlpBuilder(MoeConfig moe) : moe_(moe) {}
  absl::StatusOr<std::unique_ptr<Block>> Build(const BuildContext& ctx) const override;

 private:
  MoeConfig moe_;
};

}  // namespace mimo
