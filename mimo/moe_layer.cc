// MoeLayer: router, dispatch to the experts, the experts, weighted combine; the backward in
// reverse, with the router's and the auxiliary losses' gradients meeting in the logits.
#include "mimo/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

struct MoeSaved final : SavedActivations {
  Tensor x;                // (T, C)
  Tensor logits;           // (T, E) fp32
  Tensor scores;           // (T, E) fp32
  Tensor indices;          // (T, k) int32
  MoeDispatchState route;  // Where the pairs went.
  // Sequence parallel with auxiliary losses: the (token, choice) pairs per expert of the whole
  // micro-batch (every tp member's rows), (E,) int32.
  Tensor whole_counts;
  std::unique_ptr<SavedActivations> experts;
  std::unique_ptr<SavedActivations> shared;
};

// The rows of a micro-batch that count in the layer's statistics: the micro-batch's real
// (unpadded) rows and, of this member's block [member * rows, (member + 1) * rows), its first
// `local` ones (the padding comes last).
struct RealRows {
  int64_t whole = 0;
  int64_t local = 0;
};

// With context parallelism over `cp` ranks the micro-batch is every cp member's rows too (its
// sequences padded whole, so no padding rows).
absl::StatusOr<RealRows> RealRowsOf(const StepContext& ctx, int64_t rows, comm::Communicator* tp,
                                    int cp) {
  const int64_t n = ModelGroups::Size(tp), member = ModelGroups::Rank(tp);
  if (ctx.padding_rows < 0 || ctx.padding_rows > n * rows || (cp > 1 && ctx.padding_rows > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("MoeLayer: ", ctx.padding_rows,
                                                   " padding rows of ", n * rows,
                                                   cp > 1 ? " with context parallelism" : ""));
  }
  const int64_t whole = n * rows - ctx.padding_rows;
  return RealRows{whole * cp, std::clamp<int64_t>(whole - member * rows, 0, rows)};
}

// The auxiliary losses' parameters over what the forward saved (losses and gradient unset): the
// real rows only; with whole_counts, this member's share of the whole micro-batch's.
kernels::MoeAuxLossParams AuxLossParams(const MoeConfig& moe, const StepContext& ctx,
                                        const MoeSaved& saved, RealRows real) {
  const bool part = saved.whole_counts.numel() > 0;
  return {.config = moe.router,
          .logits = saved.logits.data<float>(),
          .scores = saved.scores.data<float>(),
          .indices = saved.indices.data<int32_t>(),
          .cu_seqlens = moe.per_sequence_aux_loss ? ctx.sequences->cu_seqlens() : nullptr,
          .num_seqs = moe.per_sequence_aux_loss ? ctx.sequences->num_seqs() : 0,
          .tokens = real.local,
          .counts = part ? saved.whole_counts.data<int32_t>() : nullptr,
          .total_tokens = part ? real.whole : 0,
          .aux_coeff = moe.aux_loss_coeff,
          .z_coeff = moe.z_loss_coeff};
}

}  // namespace

MoeLayer::MoeLayer(const TransformerConfig& config, const MoeConfig& moe, int layer_number,
                   bool mtp_layer, comm::Communicator* tp, comm::Communicator* batch,
                   MoeTokenDispatcher dispatcher, LinearWeights router,
                   std::unique_ptr<Experts> experts, std::unique_ptr<Block> shared,
                   Tensor expert_bias, Tensor load)
    : config_(config),
      moe_(moe),
      layer_number_(layer_number),
      mtp_layer_(mtp_layer),
      tp_(tp),
      batch_(batch),
      dispatcher_(std::move(dispatcher)),
      router_(std::move(router)),
      experts_(std::move(experts)),
      shared_(std::move(shared)),
      expert_bias_(std::move(expert_bias)),
      load_(std::move(load)) {}

std::string MoeLayer::expert_bias_name() const {
  const std::string& weight = router_.weight->name();  // "<prefix>.router.weight"
  return absl::StrCat(weight.substr(0, weight.rfind('.')), ".expert_bias");
}

absl::StatusOr<std::unique_ptr<MoeLayer>> MoeLayer::Create(const BuildContext& ctx,
                                                           const MoeConfig& moe,
                                                           const ExpertsBuilder& experts,
                                                           const SharedExpertsBuilder& shared) {
  MIMO_RETURN_IF_ERROR(ValidateMoeConfig(moe));
  const TransformerConfig& c = *ctx.config;
  const int64_t e = moe.router.experts;
  const int64_t ffn =
      moe.expert_ffn_hidden_size != 0 ? moe.expert_ffn_hidden_size : c.ffn_hidden_size;
  // Tensor parallel around the layer means sequence parallel in it (Megatron's rule): each tp
  // member routes its block of the rows.
  comm::Communicator* tp = ModelGroups::Size(ctx.groups.tp) > 1 ? ctx.groups.tp : nullptr;
  if (tp != nullptr && moe.per_sequence_aux_loss) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MoeLayer: moe.per_sequence_aux_loss with tp ", tp->size(),
        " (sequence parallel: a sequence's tokens straddle the members' row blocks) is not "
        "supported; use the per-micro-batch load-balancing loss"));
  }
  if (tp != nullptr && moe.graph_safe) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MoeLayer: moe.graph_safe needs tp of 1 (the members' counts and the router's gradients "
        "are summed through the host), got tp ",
        tp->size()));
  }
  // Context parallel: each cp member routes its rows of the sequences; the micro-batch's rows are
  // those of the tp x cp members together.
  const int cp = ModelGroups::Size(ctx.groups.cp);
  comm::Communicator* batch = tp;
  if (cp > 1) {
    if (moe.per_sequence_aux_loss || moe.graph_safe) {
      return absl::InvalidArgumentError(absl::StrCat(
          "MoeLayer: moe.", moe.per_sequence_aux_loss ? "per_sequence_aux_loss" : "graph_safe",
          " with context parallelism (cp ", cp, ") is not supported"));
    }
    if (ModelGroups::Size(ctx.groups.tp_cp) != cp * ModelGroups::Size(tp)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "MoeLayer: context parallelism over ", cp, " ranks needs the tp x cp group (tp_cp) of ",
          cp * ModelGroups::Size(tp), " members, got ", ModelGroups::Size(ctx.groups.tp_cp)));
    }
    batch = ctx.groups.tp_cp;
  }
  const int etp = ModelGroups::Size(ctx.groups.expt_tp);
  if (ffn % etp != 0) {
    return absl::InvalidArgumentError(absl::StrCat("MoeLayer: expert width ", ffn,
                                                   " does not split evenly over ", etp,
                                                   " expert tensor-parallel ranks"));
  }
  if (moe.graph_safe && (ModelGroups::Size(ctx.groups.ep) > 1 || etp > 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MoeLayer: moe.graph_safe needs ep and expt_tp of 1 (the all-to-all's row counts travel "
        "through the host), got ep ",
        ModelGroups::Size(ctx.groups.ep), " and expt_tp ", etp));
  }
  MoeDispatcherOptions dispatch{.experts = e,
                                .top_k = moe.router.top_k,
                                .hidden = c.hidden_size,
                                .align = moe.align,
                                .ep = ctx.groups.ep,
                                .expt_tp = ctx.groups.expt_tp};
  MIMO_ASSIGN_OR_RETURN(MoeTokenDispatcher dispatcher, MoeTokenDispatcher::Create(dispatch));
  MIMO_ASSIGN_OR_RETURN(LinearWeights router,
                        LinearWeights::Create(ctx.Child("router"), e, c.hidden_size,
                                              /*bias=*/false, c.init_std));
  MIMO_ASSIGN_OR_RETURN(
      std::unique_ptr<Experts> routed,
      experts.Build(ctx.Child("experts"), {.total = e,
                                           .first = dispatcher.first_expert(),
                                           .count = dispatcher.local_experts(),
                                           .ffn = ffn,
                                           .ffn_parts = etp,
                                           .ffn_part = ModelGroups::Rank(ctx.groups.expt_tp)}));
  if (!routed->needs_host_offsets()) {
    // Experts reading their offsets on the device spare the dispatch its copy to the host.
    dispatch.host_offsets = false;
    MIMO_ASSIGN_OR_RETURN(dispatcher, MoeTokenDispatcher::Create(dispatch));
  } else if (moe.graph_safe) {
    return absl::InvalidArgumentError(
        "MoeLayer: moe.graph_safe needs experts that read their row offsets on the device "
        "(GroupedExpertsBuilder); these read them on the host");
  }
  std::unique_ptr<Block> shared_experts;
  if (moe.shared_expert_ffn_hidden_size > 0) {
    MIMO_ASSIGN_OR_RETURN(shared_experts, shared.Build(ctx.Child("shared_experts"),
                                                       moe.shared_expert_ffn_hidden_size));
  }
  kernels::Ops& ops = *ctx.ops;
  MIMO_ASSIGN_OR_RETURN(Tensor bias,
                        Tensor::Empty({e}, DType::kF32, ops.allocator(), ops.stream()));
  MIMO_ASSIGN_OR_RETURN(Tensor load,
                        Tensor::Empty({e}, DType::kI32, ops.allocator(), ops.stream()));
  MIMO_RETURN_IF_ERROR(ops.SetZero(bias.data(), bias.nbytes()));
  MIMO_RETURN_IF_ERROR(ops.SetZero(load.data(), load.nbytes()));
  return std::unique_ptr<MoeLayer>(new MoeLayer(
      c, moe, ctx.layer_number, ctx.mtp_layer, tp, batch, std::move(dispatcher), std::move(router),
      std::move(routed), std::move(shared_experts), std::move(bias), std::move(load)));
}

absl::StatusOr<std::unique_ptr<MoeLayer>> MoeLayer::Create(const BuildContext& ctx,
                                                           const MoeConfig& moe) {
  if (moe.graph_safe) return Create(ctx, moe, GroupedExpertsBuilder());
  return Create(ctx, moe, SequentialExpertsBuilder());
}

absl::StatusOr<BlockOutput> MoeLayer::Forward(const StepContext& ctx, const Tensor& x) {
  MIMO_RETURN_IF_ERROR(CheckActivation(x, config_.hidden_size, config_.dtype, "MoeLayer"));
  kernels::Ops& ops = *ctx.ops;
  const kernels::RouterConfig& rc = moe_.router;
  const int64_t t = x.size(0), c = config_.hidden_size, e = rc.experts, k = rc.top_k;
  // The real rows count; padding rows are routed too (the router's shapes stay whole) into
  // scratch counts, and dispatched nowhere below.
  MIMO_ASSIGN_OR_RETURN(const RealRows real, RealRowsOf(ctx, t, tp_, CpSize()));
  if (moe_.graph_safe && real.local < t) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoeLayer: graph_safe with padding rows (", t - real.local, " of ", t,
                     "; their pairs' indices are written from host memory, which a replay of "
                     "the graph would not read again)"));
  }
  if (moe_.per_sequence_aux_loss) {
    // The losses' kernels read the sequences' bounds on the device, unchecked: check them here.
    if (real.local < t) {
      return absl::InvalidArgumentError("MoeLayer: per_sequence_aux_loss with padding rows");
    }
    if (ctx.sequences == nullptr || ctx.sequences->tokens() != t) {
      return absl::InvalidArgumentError(absl::StrCat(
          "MoeLayer: per_sequence_aux_loss needs the micro-batch's packed sequences over its ", t,
          " rows (StepContext::sequences), got ",
          ctx.sequences == nullptr ? std::string("none")
                                   : absl::StrCat(ctx.sequences->tokens(), " tokens")));
    }
  }
  auto saved = std::make_unique<MoeSaved>();
  saved->x = x;
  // Route: fp32 logits from the compute-dtype GEMM, then the router op and the losses.
  MIMO_ASSIGN_OR_RETURN(saved->logits, NewTensor(ctx, {t, e}, DType::kF32));
  MIMO_RETURN_IF_ERROR(ops.Gemm({.ab_dtype = x.dtype(),
                                 .d_dtype = DType::kF32,
                                 .a = x.data(),
                                 .b = router_.weight->weight().data(),
                                 .d = saved->logits.data(),
                                 .transpose_b = true,
                                 .m = t,
                                 .n = e,
                                 .k = c}));
  MIMO_ASSIGN_OR_RETURN(saved->scores, NewTensor(ctx, {t, e}, DType::kF32));
  MIMO_ASSIGN_OR_RETURN(saved->indices, NewTensor(ctx, {t, k}, DType::kI32));
  MIMO_ASSIGN_OR_RETURN(Tensor probs, NewTensor(ctx, {t, k}, DType::kF32));
  // Training forwards add their choices to the step's expert load; others count into scratch.
  // Sequence (or context) parallel with auxiliary losses: the micro-batch's own counts, summed
  // over tp (tp x cp) below.
  const bool aux = moe_.aux_loss_coeff > 0.0f || moe_.z_loss_coeff > 0.0f;
  const bool whole_counts = batch_ != nullptr && aux;
  Tensor counts = load_;
  if (!ctx.training || whole_counts) {
    MIMO_ASSIGN_OR_RETURN(counts, NewTensor(ctx, {e}, DType::kI32));
  }
  kernels::MoeRouterParams route{
      .config = rc,
      .logits = saved->logits.data<float>(),
      .expert_bias = moe_.expert_bias ? expert_bias_.data<float>() : nullptr,
      .scores = saved->scores.data<float>(),
      .indices = saved->indices.data<int32_t>(),
      .probs = probs.data<float>(),
      .tokens_per_expert = counts.data<int32_t>(),
      .tokens = real.local,
      .accumulate_counts = ctx.training && !whole_counts};
  MIMO_RETURN_IF_ERROR(ops.MoeRouter(route));
  if (real.local < t) {
    MIMO_ASSIGN_OR_RETURN(Tensor ignored, NewTensor(ctx, {e}, DType::kI32));
    route.logits += real.local * e;
    route.scores += real.local * e;
    route.indices += real.local * k;
    route.probs += real.local * k;
    route.tokens_per_expert = ignored.data<int32_t>();
    route.tokens = t - real.local;
    route.accumulate_counts = false;
    MIMO_RETURN_IF_ERROR(ops.MoeRouter(route));
  }
  if (whole_counts) {
    if (ctx.training) {
      MIMO_RETURN_IF_ERROR(ops.Add({.dtype = DType::kI32,
                                    .a = load_.data(),
                                    .b = counts.data(),
                                    .out = load_.data(),
                                    .n = e}));
    }
    MIMO_RETURN_IF_ERROR(ops.Synchronize());  // The communicator works on its own stream.
    MIMO_RETURN_IF_ERROR(batch_->AllReduce(counts.data(), static_cast<size_t>(e),
                                           comm::DataType::kInt32, comm::ReduceOp::kSum));
    saved->whole_counts = std::move(counts);
  }
  if (ctx.aux_losses != nullptr) {
    MIMO_ASSIGN_OR_RETURN(Tensor losses, NewTensor(ctx, {2}, DType::kF32));
    kernels::MoeAuxLossParams p = AuxLossParams(moe_, ctx, *saved, real);
    p.losses = losses.data<float>();
    MIMO_RETURN_IF_ERROR(ops.MoeAuxLoss(p));
    ctx.aux_losses->push_back({layer_number_, mtp_layer_, std::move(losses)});
  }
  // Padding rows' pairs go nowhere (expert -1: no expert work, no all-to-all rows, no room taken
  // under a capacity; their output rows are zeros).
  Tensor dispatch_indices = saved->indices;
  if (real.local < t) {
    MIMO_ASSIGN_OR_RETURN(dispatch_indices, NewTensor(ctx, {t, k}, DType::kI32));
    const size_t real_bytes = sizeof(int32_t) * static_cast<size_t>(real.local * k);
    if (real_bytes > 0) {
      MIMO_RETURN_IF_ERROR(ops.Copy(dispatch_indices.data(), saved->indices.data(), real_bytes));
    }
    const std::vector<int32_t> nowhere((t - real.local) * k, -1);
    MIMO_RETURN_IF_ERROR(ops.CopyFromHost(dispatch_indices.data<int32_t>() + real.local * k,
                                          nowhere.data(), sizeof(int32_t) * nowhere.size()));
  }
  // With a capacity (of the real rows), the pairs over it go nowhere (the router's backward
  // still sees them all: their weights' gradients are zero).
  if (moe_.capacity_factor > 0.0) {
    MIMO_ASSIGN_OR_RETURN(Tensor kept, NewTensor(ctx, {t, k}, DType::kI32));
    MIMO_RETURN_IF_ERROR(ops.MoeCapacityDrop(
        {.policy = moe_.drop_policy,
         .indices = dispatch_indices.data<int32_t>(),
         .probs = probs.data<float>(),
         .kept = kept.data<int32_t>(),
         .tokens = t,
         .top_k = k,
         .experts = e,
         .capacity = kernels::MoeExpertCapacity(real.local, k, e, moe_.capacity_factor)}));
    dispatch_indices = std::move(kept);
  }
  if (ctx.routing != nullptr) {
    ctx.routing->push_back({layer_number_, mtp_layer_, saved->indices, dispatch_indices});
  }
  // The pairs to their experts' rows (on this rank or, with EP, on others), the experts, and
  // back.
  MIMO_ASSIGN_OR_RETURN(MoeDispatched dispatched,
                        dispatcher_.Dispatch(ctx, x, dispatch_indices, probs));
  saved->route = std::move(dispatched.state);
  MIMO_ASSIGN_OR_RETURN(BlockOutput experts,
                        experts_->Forward(ctx, dispatched.rows, dispatched.offsets));
  // The combine reads the experts' rows wherever the dispatch put them: experts of another
  // builder that return another shape are refused, not read past.
  MIMO_RETURN_IF_ERROR(
      CheckSameShape(experts.y, dispatched.rows, "MoeLayer: the routed experts' output"));
  saved->experts = std::move(experts.saved);
  MIMO_ASSIGN_OR_RETURN(Tensor y, dispatcher_.Combine(ctx, saved->route, experts.y));
  if (shared_ != nullptr) {
    MIMO_ASSIGN_OR_RETURN(BlockOutput shared, shared_->Forward(ctx, x));
    saved->shared = std::move(shared.saved);
    MIMO_RETURN_IF_ERROR(AddInto(ops, y, shared.y));
  }
  return BlockOutput{std::move(y), std::move(saved)};
}

absl::StatusOr<Tensor> MoeLayer::Backward(const StepContext& ctx,
                                          std::unique_ptr<SavedActivations> saved_base,
                                          const Tensor& dy) {
  MIMO_ASSIGN_OR_RETURN(auto saved, SavedAs<MoeSaved>(std::move(saved_base), "MoeLayer"));
  MIMO_RETURN_IF_ERROR(CheckSameShape(dy, saved->x, "MoeLayer backward"));
  kernels::Ops& ops = *ctx.ops;
  const kernels::RouterConfig& rc = moe_.router;
  const int64_t t = dy.size(0), e = rc.experts;
  // Through the weighted combine, the experts and the dispatch.
  MIMO_ASSIGN_OR_RETURN(MoeCombineGrads combine,
                        dispatcher_.CombineBackward(ctx, saved->route, dy));
  MIMO_ASSIGN_OR_RETURN(Tensor dxp, experts_->Backward(ctx, std::move(saved->experts), combine.dh));
  MIMO_RETURN_IF_ERROR(
      CheckSameShape(dxp, combine.dh, "MoeLayer: the routed experts' input gradient"));
  MIMO_ASSIGN_OR_RETURN(Tensor dx, dispatcher_.DispatchBackward(ctx, saved->route, dxp));
  // Through the router: the combine weights' and the auxiliary losses' gradients meet in the
  // logits, then the router GEMM (in the compute dtype) adds to dx and the router's gradient.
  MIMO_ASSIGN_OR_RETURN(Tensor dlogits, NewTensor(ctx, {t, e}, DType::kF32));
  MIMO_RETURN_IF_ERROR(ops.MoeRouterBackward({.config = rc,
                                              .dprobs = combine.dprobs.data<float>(),
                                              .scores = saved->scores.data<float>(),
                                              .indices = saved->indices.data<int32_t>(),
                                              .dlogits = dlogits.data<float>(),
                                              .tokens = t}));
  if (moe_.aux_loss_coeff > 0.0f || moe_.z_loss_coeff > 0.0f) {
    MIMO_ASSIGN_OR_RETURN(Tensor losses, NewTensor(ctx, {2}, DType::kF32));
    MIMO_ASSIGN_OR_RETURN(const RealRows real, RealRowsOf(ctx, t, tp_, CpSize()));
    kernels::MoeAuxLossParams p = AuxLossParams(moe_, ctx, *saved, real);
    p.losses = losses.data<float>();
    p.dlogits = dlogits.data<float>();
    p.loss_grad = ctx.loss_scale;
    MIMO_RETURN_IF_ERROR(ops.MoeAuxLoss(p));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor dlogits_c, NewTensor(ctx, {t, e}, dy.dtype()));
  MIMO_RETURN_IF_ERROR(ops.Cast({.from = DType::kF32,
                                 .to = dy.dtype(),
                                 .x = dlogits.data(),
                                 .y = dlogits_c.data(),
                                 .n = t * e}));
  // Sequence parallel: every tp member's rows add to the replicated router's gradient.
  Tensor drouter;
  if (tp_ != nullptr) {
    MIMO_ASSIGN_OR_RETURN(drouter, NewTensor(ctx, {e, config_.hidden_size}, DType::kF32));
  }
  MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(ops, router_,
                                             {.row0 = 0,
                                              .rows = e,
                                              .dy = &dlogits_c,
                                              .x = &saved->x,
                                              .dx = &dx,
                                              .accumulate_dx = true,
                                              .dw = tp_ != nullptr ? &drouter : nullptr}));
  if (tp_ != nullptr) {
    MIMO_RETURN_IF_ERROR(ops.Synchronize());
    MIMO_RETURN_IF_ERROR(tp_->AllReduce(drouter.data(), static_cast<size_t>(drouter.numel()),
                                        comm::DataType::kFloat32, comm::ReduceOp::kSum));
    MIMO_RETURN_IF_ERROR(AddInto(ops, router_.weight->grad(), drouter));
  }
  if (shared_ != nullptr) {
    MIMO_ASSIGN_OR_RETURN(Tensor dshared, shared_->Backward(ctx, std::move(saved->shared), dy));
    MIMO_RETURN_IF_ERROR(AddInto(ops, dx, dshared));
  }
  return dx;
}

void MoeLayer::AppendParameters(std::vector<Parameter*>& out) const {
  out.push_back(router_.weight.get());
  experts_->AppendParameters(out);
  if (shared_ != nullptr) shared_->AppendParameters(out);
}

absl::StatusOr<std::vector<int64_t>> MoeLayer::TakeExpertLoad(kernels::Ops& ops) {
  std::vector<int32_t> counts(load_.numel());
  MIMO_RETURN_IF_ERROR(ops.CopyToHost(counts.data(), load_.data(), load_.nbytes()));
  MIMO_RETURN_IF_ERROR(ops.SetZero(load_.data(), load_.nbytes()));
  return std::vector<int64_t>(counts.begin(), counts.end());
}

absl::Status MoeLayer::UpdateExpertBias(kernels::Ops& ops, absl::Span<const int64_t> load) {
  if (!moe_.expert_bias) {
    return absl::FailedPreconditionError(
        absl::StrCat("MoeLayer ", layer_number_, ": UpdateExpertBias without moe.expert_bias"));
  }
  const int64_t e = moe_.router.experts;
  if (static_cast<int64_t>(load.size()) != e) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoeLayer ", layer_number_, ": load of ", load.size(), " experts, not ", e));
  }
  std::vector<float> bias(e);
  MIMO_RETURN_IF_ERROR(ops.CopyToHost(bias.data(), expert_bias_.data(), expert_bias_.nbytes()));
  double mean = 0;
  for (int64_t n : load) mean += static_cast<double>(n);
  mean /= static_cast<double>(e);
  const float rate = moe_.expert_bias_update_rate;
  for (int64_t i = 0; i < e; ++i) {
    const double offset = mean - static_cast<double>(load[i]);
    bias[i] += offset > 0 ? rate : (offset < 0 ? -rate : 0.0f);
  }
  return ops.CopyFromHost(expert_bias_.data(), bias.data(), expert_bias_.nbytes());
}

MoeMlpBuilder::MoeMlpBuilder(MoeConfig moe, std::shared_ptr<const ExpertsBuilder> experts,
                             std::shared_ptr<const SharedExpertsBuilder> shared)
    : moe_(moe),
      experts_(experts != nullptr ? std::move(experts)
               : moe.graph_safe   ? std::shared_ptr<const ExpertsBuilder>(
                                      std::make_shared<GroupedExpertsBuilder>())
                                : std::make_shared<SequentialExpertsBuilder>()),
      shared_(shared != nullptr ? std::move(shared)
                                : std::make_shared<DenseSharedExpertsBuilder>()) {}

absl::StatusOr<std::unique_ptr<Block>> MoeMlpBuilder::Build(const BuildContext& ctx) const {
  MIMO_ASSIGN_OR_RETURN(auto layer, MoeLayer::Create(ctx, moe_, *experts_, *shared_));
  return std::unique_ptr<Block>(std::move(layer));
}

}  // namespace mimo
