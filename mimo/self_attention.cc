// SelfAttention: projections through the linear layers of a row range, RoPE in place, the
// attention op; the backward runs them in reverse.
#include "mimo/self_attention.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/context_attention.h"
#include "mimo/sequence_parallel.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

struct AttentionSaved final : SavedActivations {
  Tensor x;    // (T / tp, C) the input: this member's rows.
  Tensor q;    // (T, H * D) after RoPE.
  Tensor k;    // (T, G * D) after RoPE.
  Tensor v;    // (T, G * D)
  Tensor o;    // (T, H * D) attention output.
  Tensor lse;  // (H, T) fp32; with context parallelism in `context_lse` instead.
  ContextAttentionLse context_lse;
};

}  // namespace

SelfAttention::SelfAttention(const TransformerConfig& config, comm::Communicator* tp,
                             comm::Communicator* cp, LinearWeights qkv, LinearWeights proj)
    : config_(config),
      tp_(tp),
      cp_(cp),
      heads_(config.num_attention_heads / ModelGroups::Size(tp)),
      groups_(config.query_groups() / ModelGroups::Size(tp)),
      head_dim_(config.head_dim()),
      qkv_(std::move(qkv)),
      proj_(std::move(proj)) {}

absl::StatusOr<std::unique_ptr<SelfAttention>> SelfAttention::Create(const BuildContext& ctx) {
  const TransformerConfig& c = *ctx.config;
  const int64_t h = c.num_attention_heads, g = c.query_groups(), d = c.head_dim();
  const int64_t n = ModelGroups::Size(ctx.groups.tp), r = ModelGroups::Rank(ctx.groups.tp);
  comm::Communicator* tp = n > 1 ? ctx.groups.tp : nullptr;
  if (h % n != 0 || g % n != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SelfAttention: tensor parallelism over ", n, " ranks needs ", "num_attention_heads (", h,
        ") and num_query_groups (", g, ") that divide by it"));
  }
  const int64_t hd = h / n * d, gd = g / n * d;  // This member's query and key (value) rows.
  std::vector<ParameterShard> qkv_shards, proj_shards;
  if (tp != nullptr) {
    qkv_shards = {{.dim = 0,
                   .full_size = (h + 2 * g) * d,
                   .ranges = {{.start = r * hd, .size = hd},
                              {.start = h * d + r * gd, .size = gd},
                              {.start = (h + g) * d + r * gd, .size = gd}}}};
    proj_shards = {{.dim = 1, .offset = r * hd, .full_size = h * d}};
  }
  MIMO_ASSIGN_OR_RETURN(LinearWeights qkv,
                        LinearWeights::Create(ctx.Child("linear_qkv"), hd + 2 * gd, c.hidden_size,
                                              c.add_bias_linear || c.add_qkv_bias, c.init_std,
                                              std::move(qkv_shards)));
  MIMO_ASSIGN_OR_RETURN(
      LinearWeights proj,
      LinearWeights::Create(ctx.Child("linear_proj"), c.hidden_size, hd, c.add_bias_linear,
                            c.init_std / std::sqrt(2.0f * static_cast<float>(c.num_layers)),
                            std::move(proj_shards)));
  comm::Communicator* cp = ModelGroups::Size(ctx.groups.cp) > 1 ? ctx.groups.cp : nullptr;
  return std::unique_ptr<SelfAttention>(
      new SelfAttention(c, tp, cp, std::move(qkv), std::move(proj)));
}

absl::StatusOr<BlockOutput> SelfAttention::Forward(const StepContext& ctx, const Tensor& local) {
  const PackedSequences& seqs = *ctx.sequences;
  MIMO_RETURN_IF_ERROR(CheckActivation(local, config_.hidden_size, config_.dtype, "SelfAttention"));
  kernels::Ops& ops = *ctx.ops;
  // (T, C): every member's rows (the input itself without tensor parallelism).
  MIMO_ASSIGN_OR_RETURN(const Tensor x, GatherRows(ops, tp_, local));
  if (x.size(0) != seqs.tokens()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SelfAttention: ", x.size(0), " tokens for sequences of ", seqs.tokens(), " tokens"));
  }
  const int64_t t = x.size(0), hd = heads_ * head_dim_, gd = groups_ * head_dim_;
  auto saved = std::make_unique<AttentionSaved>();
  saved->x = local;  // This member's rows: gathered again in the backward (1 / tp the memory).
  MIMO_ASSIGN_OR_RETURN(saved->q, NewTensor(ctx, {t, hd}, x.dtype()));
  MIMO_ASSIGN_OR_RETURN(saved->k, NewTensor(ctx, {t, gd}, x.dtype()));
  MIMO_ASSIGN_OR_RETURN(saved->v, NewTensor(ctx, {t, gd}, x.dtype()));
  MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, qkv_, 0, hd, x, saved->q));
  MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, qkv_, hd, gd, x, saved->k));
  MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, qkv_, hd + gd, gd, x, saved->v));
  if (config_.rotary) {
    const int64_t rotary_dim = config_.rotary_dim == 0 ? head_dim_ : config_.rotary_dim;
    for (const auto& [tensor, heads] : {std::pair{&saved->q, heads_}, {&saved->k, groups_}}) {
      MIMO_RETURN_IF_ERROR(ops.Rope({.dtype = x.dtype(),
                                     .x = tensor->data(),
                                     .y = tensor->data(),
                                     .positions = seqs.positions(),
                                     .tokens = t,
                                     .heads = heads,
                                     .head_dim = head_dim_,
                                     .rotary_dim = rotary_dim,
                                     .base = config_.rotary_base}));
    }
  }
  if (cp_ != nullptr || seqs.context_size() > 1) {
    MIMO_ASSIGN_OR_RETURN(comm::Communicator * cp, ContextGroup(seqs));
    MIMO_RETURN_IF_ERROR(ContextAttentionForward(ctx, *cp, ContextShape(), saved->q, saved->k,
                                                 saved->v, saved->o, saved->context_lse));
  } else {
    MIMO_ASSIGN_OR_RETURN(saved->o, NewTensor(ctx, {t, hd}, x.dtype()));
    MIMO_ASSIGN_OR_RETURN(saved->lse, NewTensor(ctx, {heads_, t}, DType::kF32));
    MIMO_RETURN_IF_ERROR(ops.Attention({.dtype = x.dtype(),
                                        .q = saved->q.data(),
                                        .k = saved->k.data(),
                                        .v = saved->v.data(),
                                        .out = saved->o.data(),
                                        .lse = saved->lse.data<float>(),
                                        .cu_seqlens = seqs.cu_seqlens(),
                                        .num_seqs = seqs.num_seqs(),
                                        .total_tokens = t,
                                        .heads = heads_,
                                        .kv_heads = groups_,
                                        .head_dim = head_dim_,
                                        .max_seqlen = seqs.max_seqlen(),
                                        .scale = 1.0f / std::sqrt(static_cast<float>(head_dim_)),
                                        .causal = config_.causal}));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor y, NewTensor(ctx, {t, config_.hidden_size}, x.dtype()));
  // The bias once: member 0 adds it to its part of the sum the reduce-scatter makes.
  MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, proj_, 0, config_.hidden_size, saved->o, y,
                                         kernels::GemmActivation::kNone, nullptr,
                                         ModelGroups::Rank(tp_) == 0));
  MIMO_ASSIGN_OR_RETURN(Tensor own, ReduceScatterRows(ops, tp_, y));
  return BlockOutput{std::move(own), std::move(saved)};
}

absl::StatusOr<Tensor> SelfAttention::Backward(const StepContext& ctx,
                                               std::unique_ptr<SavedActivations> saved_base,
                                               const Tensor& dy_local) {
  MIMO_ASSIGN_OR_RETURN(auto saved,
                        SavedAs<AttentionSaved>(std::move(saved_base), "SelfAttention"));
  const PackedSequences& seqs = *ctx.sequences;
  kernels::Ops& ops = *ctx.ops;
  MIMO_RETURN_IF_ERROR(CheckSameShape(dy_local, saved->x, "SelfAttention backward"));
  MIMO_ASSIGN_OR_RETURN(const Tensor dy, GatherRows(ops, tp_, dy_local));  // (T, C)
  const int64_t t = dy.size(0), hd = heads_ * head_dim_, gd = groups_ * head_dim_;
  MIMO_ASSIGN_OR_RETURN(Tensor d_o, NewTensor(ctx, {t, hd}, dy.dtype()));
  MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(
      ops, proj_, {.row0 = 0, .rows = config_.hidden_size, .dy = &dy, .x = &saved->o, .dx = &d_o}));
  MIMO_ASSIGN_OR_RETURN(Tensor dq, NewTensor(ctx, {t, hd}, dy.dtype()));
  MIMO_ASSIGN_OR_RETURN(Tensor dk, NewTensor(ctx, {t, gd}, dy.dtype()));
  MIMO_ASSIGN_OR_RETURN(Tensor dv, NewTensor(ctx, {t, gd}, dy.dtype()));
  if (cp_ != nullptr || seqs.context_size() > 1) {
    MIMO_ASSIGN_OR_RETURN(comm::Communicator * cp, ContextGroup(seqs));
    MIMO_RETURN_IF_ERROR(ContextAttentionBackward(ctx, *cp, ContextShape(), d_o, saved->q, saved->k,
                                                  saved->v, saved->o, saved->context_lse, dq, dk,
                                                  dv));
  } else {
    MIMO_RETURN_IF_ERROR(
        ops.AttentionBackward({.dtype = dy.dtype(),
                               .dout = d_o.data(),
                               .q = saved->q.data(),
                               .k = saved->k.data(),
                               .v = saved->v.data(),
                               .out = saved->o.data(),
                               .lse = saved->lse.data<float>(),
                               .dq = dq.data(),
                               .dk = dk.data(),
                               .dv = dv.data(),
                               .cu_seqlens = seqs.cu_seqlens(),
                               .num_seqs = seqs.num_seqs(),
                               .total_tokens = t,
                               .heads = heads_,
                               .kv_heads = groups_,
                               .head_dim = head_dim_,
                               .max_seqlen = seqs.max_seqlen(),
                               .scale = 1.0f / std::sqrt(static_cast<float>(head_dim_)),
                               .causal = config_.causal}));
  }
  saved->o = Tensor();
  saved->lse = Tensor();
  saved->context_lse = ContextAttentionLse();
  if (config_.rotary) {
    const int64_t rotary_dim = config_.rotary_dim == 0 ? head_dim_ : config_.rotary_dim;
    for (const auto& [tensor, heads] : {std::pair{&dq, heads_}, {&dk, groups_}}) {
      MIMO_RETURN_IF_ERROR(ops.Rope({.dtype = dy.dtype(),
                                     .x = tensor->data(),
                                     .y = tensor->data(),
                                     .positions = seqs.positions(),
                                     .tokens = t,
                                     .heads = heads,
                                     .head_dim = head_dim_,
                                     .rotary_dim = rotary_dim,
                                     .base = config_.rotary_base,
                                     .backward = true}));
    }
  }
  // dx = dq Wq + dk Wk + dv Wv; each part adds its rows' weight (and bias) gradients.
  MIMO_ASSIGN_OR_RETURN(const Tensor x, GatherRows(ops, tp_, saved->x));  // (T, C)
  saved->x = Tensor();
  MIMO_ASSIGN_OR_RETURN(Tensor dx, NewTensor(ctx, dy.shape(), dy.dtype()));
  MIMO_RETURN_IF_ERROR(
      LinearRowsBackwardRun(ops, qkv_, {.row0 = 0, .rows = hd, .dy = &dq, .x = &x, .dx = &dx}));
  MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(
      ops, qkv_, {.row0 = hd, .rows = gd, .dy = &dk, .x = &x, .dx = &dx, .accumulate_dx = true}));
  MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(
      ops, qkv_,
      {.row0 = hd + gd, .rows = gd, .dy = &dv, .x = &x, .dx = &dx, .accumulate_dx = true}));
  // dx holds this member's heads' part of every row's gradient: the rows' owners get the sums.
  return ReduceScatterRows(ops, tp_, dx);
}

absl::StatusOr<comm::Communicator*> SelfAttention::ContextGroup(const PackedSequences& seqs) const {
  if (cp_ == nullptr || seqs.context_size() != cp_->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("SelfAttention: sequences split over ", seqs.context_size(),
                     " context-parallel ranks, but the layer's context-parallel group has ",
                     ModelGroups::Size(cp_)));
  }
  return cp_;
}

ContextAttentionShape SelfAttention::ContextShape() const {
  return {.heads = heads_,
          .kv_heads = groups_,
          .head_dim = head_dim_,
          .scale = 1.0f / std::sqrt(static_cast<float>(head_dim_)),
          .causal = config_.causal};
}

void SelfAttention::AppendParameters(std::vector<Parameter*>& out) const {
  for (const LinearWeights* lw : {&qkv_, &proj_}) {
    out.push_back(lw->weight.get());
    if (lw->bias != nullptr) out.push_back(lw->bias.get());
  }
}

}  // namespace mimo
