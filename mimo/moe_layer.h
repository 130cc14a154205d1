// The Mixture-of-Experts MLP of a transformer layer: a router choosing top-k experts per token,
// the tokens permuted to expert-contiguous order, each local expert's MLP, the outputs combined
// with the router's weights, optional shared experts beside them; the load-balancing and z losses
// reported and their gradients added in the backward. With expert parallelism (the build
// context's EP group) each rank holds E / ep of the experts and the pairs travel to them and back
// through MoeTokenDispatcher's all-to-all. With tensor parallelism (ctx.groups.tp) the layer is
// sequence parallel (Megatron's rule for MoE under TP): each tp member routes its own block of
// the rows through the replicated router, whose gradient and the load-balancing loss's counts are
// summed over tp; each member reports its share of the auxiliary losses (they add up over tp).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "comm/communicator.h"
#include "mimo/block.h"
#include "mimo/build_context.h"
#include "mimo/experts.h"
#include "mimo/linear_weights.h"
#include "mimo/mlp_builder.h"
#include "mimo/moe_config.h"
#include "mimo/moe_token_dispatcher.h"

namespace mimo {

class MoeLayer final : public Block {
 public:
  // Parameters (E experts, C hidden): router.weight (E, C); experts.* from `experts` (this
  // rank's E / ep experts); shared_experts.* from `shared` when the config gives them a width.
  // InvalidArgument when E does not split evenly over ctx.groups.ep, for moe.graph_safe with
  // EP, expt_tp, tp or experts that read their offsets on the host, or for
  // moe.per_sequence_aux_loss with tp.
  static absl::StatusOr<std::unique_ptr<MoeLayer>> Create(
      const BuildContext& ctx, const MoeConfig& moe, const ExpertsBuilder& experts,
      const SharedExpertsBuilder& shared = DenseSharedExpertsBuilder());
  // With SequentialExpertsBuilder (GroupedExpertsBuilder with moe.graph_safe) and
  // DenseSharedExpertsBuilder.
  static absl::StatusOr<std::unique_ptr<MoeLayer>> Create(const BuildContext& ctx,
                                                          const MoeConfig& moe);

  // Synchronizes with the device to read the experts' row counts when the experts need them on
  // the host (per-expert GEMMs) or with EP or expt_tp, and for the sums over tp; never with
  // moe.graph_safe. With EP (or tp) every member of the group must run the layer together.
  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const kernels::Tensor& x) override;
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           const kernels::Tensor& dy) override;
  void AppendParameters(std::vector<Parameter*>& out) const override;
  // The routed experts' parameters alone: with EP each rank holds other experts' values.
  void AppendExpertParameters(std::vector<Parameter*>& out) const {
    experts_->AppendParameters(out);
  }

  // The (token, choice) pairs this rank's training forwards (StepContext::training) routed to
  // each expert since the last call (E counts, before any capacity dropping: the per-expert
  // load), counting from zero again. Waits for the device. Take it once per step: the device
  // counts are int32 (2^31 pairs per expert between calls).
  absl::StatusOr<std::vector<int64_t>> TakeExpertLoad(kernels::Ops& ops);
  // Aux-loss-free balancing, once per step: `load` (E) is the step's per-expert load summed over
  // every rank whose tokens this router routes (the caller all-reduces TakeExpertLoad over the
  // tp_dp_cp group, as Megatron does); bias[e] += rate * sign(mean(load) - load[e]).
  // FailedPrecondition without moe.expert_bias; InvalidArgument for a load of the wrong length.
  absl::Status UpdateExpertBias(kernels::Ops& ops, absl::Span<const int64_t> load);
  // (E,) fp32: the router's selection bias (zeros without moe.expert_bias); model state that
  // checkpoints keep beside the parameters.
  const kernels::Tensor& expert_bias() const { return expert_bias_; }
  bool expert_bias_enabled() const { return moe_.expert_bias; }
  // The layer's number in the whole stack (BuildContext::layer_number).
  int layer_number() const { return layer_number_; }
  // The expert bias's name in checkpoints, beside the router's weight in the whole model:
  // "language.decoder.layers.3.mlp.router.expert_bias".
  std::string expert_bias_name() const;

 private:
  MoeLayer(const TransformerConfig& config, const MoeConfig& moe, int layer_number, bool mtp_layer,
           comm::Communicator* tp, comm::Communicator* batch, MoeTokenDispatcher dispatcher,
           LinearWeights router, std::unique_ptr<Experts> experts, std::unique_ptr<Block> shared,
           kernels::Tensor expert_bias, kernels::Tensor load);

  const TransformerConfig config_;
  const MoeConfig moe_;
  const int layer_number_;
  const bool mtp_layer_;
  comm::Communicator* const tp_;  // Null without tensor parallelism.
  // The ranks whose rows make up the micro-batch: tp, or tp x cp with context parallelism; null
  // when this rank holds it all.
  comm::Communicator* const batch_;
  int CpSize() const { return ModelGroups::Size(batch_) / ModelGroups::Size(tp_); }
  const MoeTokenDispatcher dispatcher_;
  LinearWeights router_;
  std::unique_ptr<Experts> experts_;
  std::unique_ptr<Block> shared_;  // Null without shared experts.
  kernels::Tensor expert_bias_;    // (E,) fp32
  kernels::Tensor load_;           // (E,) int32: pairs per expert since TakeExpertLoad.
};

// Builds MoeLayer for every layer it is asked for.
class MoeMlpBuilder final : public MlpBuilder {
 public:
  // Null builders mean SequentialExpertsBuilder (GroupedExpertsBuilder with moe.graph_safe) and
  // DenseSharedExpertsBuilder.
  explicit MoeMlpBuilder(MoeConfig moe, std::shared_ptr<const ExpertsBuilder> experts = nullptr,
                         std::shared_ptr<const SharedExpertsBuilder> shared = nullptr);
  absl::StatusOr<std::unique_ptr<Block>> Build(const BuildContext& ctx) const override;

 private:
  MoeConfig moe_;
  std::shared_ptr<const ExpertsBuilder> experts_;
  std::shared_ptr<const SharedExpertsBuilder> shared_;
};

}  // namespace mimo
