// SelfAttention: projections through the linear layers of a row range, RoPE in place, the
// attention op; the backward runs them in reverse.
#include "mimo/self_attention.h"

#include <cmath>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/context_attention.h"
#include "mimo/head_exchange.h"
#include "mimo/sequence_parallel.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

// Shapes for R rows of the member (T / cp with head shares, else T) and the Hs heads and Gs
// groups it attends with (H / cp and G / cp with head shares, else H and G).
struct AttentionSaved final : SavedActivations {
  Tensor x;       // (R / tp, C) the input: this member's rows.
  Tensor q;       // (T, Hs * D) after RoPE.
  Tensor k;       // (T, Gs * D) after RoPE.
  Tensor v;       // (T, Gs * D)
  Tensor o;       // (T, Hs * D) attention output.
  Tensor o_rows;  // (R, H * D) what linear_proj read: o itself, or the head shares traded back.
  Tensor lse;     // (Hs, T) fp32; with ring attention in `context_lse` instead.
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
  // (R, C): every tp member's rows (the input itself without tensor parallelism).
  MIMO_ASSIGN_OR_RETURN(const Tensor x, GatherRows(ops, tp_, local));
  MIMO_ASSIGN_OR_RETURN(const Heads a, HeadsFor(seqs, x.size(0)));
  const int64_t rows = x.size(0), t = seqs.tokens(), hd = heads_ * head_dim_,
                gd = groups_ * head_dim_;
  const DType dtype = x.dtype();
  auto saved = std::make_unique<AttentionSaved>();
  saved->x = local;  // This member's rows: gathered again in the backward (1 / tp the memory).
  // q (T, Hs * D), k and v (T, Gs * D): each head share's projection of this member's rows, slot
  // p for member p, traded for every member's rows of this member's share (whole heads alike).
  auto project = [&](int64_t row0, int64_t width, Tensor& out) -> absl::Status {
    MIMO_ASSIGN_OR_RETURN(Tensor slots, NewTensor(ctx, {a.shares, rows, width}, dtype));
    for (int p = 0; p < a.shares; ++p) {
      MIMO_ASSIGN_OR_RETURN(const Tensor slot, slots.Select(0, p));
      MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, qkv_, row0 + p * width, width, x, slot));
    }
    if (a.shares > 1) {
      MIMO_ASSIGN_OR_RETURN(slots, ExchangeSlots(ops, *cp_, slots));
    }
    MIMO_ASSIGN_OR_RETURN(out, slots.View({t, width}));
    return absl::OkStatus();
  };
  const int64_t qw = a.heads * head_dim_, kw = a.groups * head_dim_;
  MIMO_RETURN_IF_ERROR(project(0, qw, saved->q));
  MIMO_RETURN_IF_ERROR(project(hd, kw, saved->k));
  MIMO_RETURN_IF_ERROR(project(hd + gd, kw, saved->v));
  MIMO_RETURN_IF_ERROR(ApplyRope(ctx, a, saved->q, saved->k, /*backward=*/false));
  if (a.ring) {
    MIMO_ASSIGN_OR_RETURN(comm::Communicator * cp, ContextGroup(seqs));
    MIMO_RETURN_IF_ERROR(ContextAttentionForward(ctx, *cp, ContextShape(), saved->q, saved->k,
                                                 saved->v, saved->o, saved->context_lse));
  } else {
    MIMO_ASSIGN_OR_RETURN(saved->o, NewTensor(ctx, {t, qw}, dtype));
    MIMO_ASSIGN_OR_RETURN(saved->lse, NewTensor(ctx, {a.heads, t}, DType::kF32));
    MIMO_RETURN_IF_ERROR(ops.Attention({.dtype = dtype,
                                        .q = saved->q.data(),
                                        .k = saved->k.data(),
                                        .v = saved->v.data(),
                                        .out = saved->o.data(),
                                        .lse = saved->lse.data<float>(),
                                        .cu_seqlens = seqs.cu_seqlens(),
                                        .num_seqs = seqs.num_seqs(),
                                        .total_tokens = t,
                                        .heads = a.heads,
                                        .kv_heads = a.groups,
                                        .head_dim = head_dim_,
                                        .max_seqlen = seqs.max_seqlen(),
                                        .scale = 1.0f / std::sqrt(static_cast<float>(head_dim_)),
                                        .causal = config_.causal}));
  }
  // (R, H * D): this member's rows of every head, as linear_proj reads them.
  saved->o_rows = saved->o;
  if (a.shares > 1) {
    MIMO_ASSIGN_OR_RETURN(const Tensor o, saved->o.View({a.shares, rows, qw}));
    MIMO_ASSIGN_OR_RETURN(const Tensor back, ExchangeSlots(ops, *cp_, o));
    MIMO_ASSIGN_OR_RETURN(saved->o_rows, InterleaveSlots(ops, back, a.shares, /*inverse=*/false));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor y, NewTensor(ctx, {rows, config_.hidden_size}, dtype));
  // The bias once: member 0 adds it to its part of the sum the reduce-scatter makes.
  MIMO_RETURN_IF_ERROR(LinearRowsForward(ops, proj_, 0, config_.hidden_size, saved->o_rows, y,
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
  MIMO_ASSIGN_OR_RETURN(const Tensor dy, GatherRows(ops, tp_, dy_local));  // (R, C)
  MIMO_ASSIGN_OR_RETURN(const Heads a, HeadsFor(seqs, dy.size(0)));
  const int64_t rows = dy.size(0), t = seqs.tokens(), hd = heads_ * head_dim_,
                gd = groups_ * head_dim_, qw = a.heads * head_dim_, kw = a.groups * head_dim_;
  const DType dtype = dy.dtype();
  MIMO_ASSIGN_OR_RETURN(Tensor d_o, NewTensor(ctx, {rows, hd}, dtype));
  MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(
      ops, proj_,
      {.row0 = 0, .rows = config_.hidden_size, .dy = &dy, .x = &saved->o_rows, .dx = &d_o}));
  saved->o_rows = Tensor();
  if (a.shares > 1) {  // Back to the whole rows of this member's head share: (T, Hs * D).
    MIMO_ASSIGN_OR_RETURN(const Tensor slots, InterleaveSlots(ops, d_o, a.shares, true));
    MIMO_ASSIGN_OR_RETURN(const Tensor traded, ExchangeSlots(ops, *cp_, slots));
    MIMO_ASSIGN_OR_RETURN(d_o, traded.View({t, qw}));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor dq, NewTensor(ctx, {t, qw}, dtype));
  MIMO_ASSIGN_OR_RETURN(Tensor dk, NewTensor(ctx, {t, kw}, dtype));
  MIMO_ASSIGN_OR_RETURN(Tensor dv, NewTensor(ctx, {t, kw}, dtype));
  if (a.ring) {
    MIMO_ASSIGN_OR_RETURN(comm::Communicator * cp, ContextGroup(seqs));
    MIMO_RETURN_IF_ERROR(ContextAttentionBackward(ctx, *cp, ContextShape(), d_o, saved->q, saved->k,
                                                  saved->v, saved->o, saved->context_lse, dq, dk,
                                                  dv));
  } else {
    MIMO_RETURN_IF_ERROR(
        ops.AttentionBackward({.dtype = dtype,
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
                               .heads = a.heads,
                               .kv_heads = a.groups,
                               .head_dim = head_dim_,
                               .max_seqlen = seqs.max_seqlen(),
                               .scale = 1.0f / std::sqrt(static_cast<float>(head_dim_)),
                               .causal = config_.causal}));
  }
  saved->o = Tensor();
  saved->lse = Tensor();
  saved->context_lse = ContextAttentionLse();
  MIMO_RETURN_IF_ERROR(ApplyRope(ctx, a, dq, dk, /*backward=*/true));
  // dx = dq Wq + dk Wk + dv Wv; each part adds its rows' weight (and bias) gradients. Head
  // shares: each share's gradients of this member's rows come back from the member that had it.
  MIMO_ASSIGN_OR_RETURN(const Tensor x, GatherRows(ops, tp_, saved->x));  // (R, C)
  saved->x = Tensor();
  MIMO_ASSIGN_OR_RETURN(Tensor dx, NewTensor(ctx, dy.shape(), dtype));
  bool accumulate = false;
  for (const auto& [grad, row0, width] :
       {std::tuple{&dq, int64_t{0}, qw}, {&dk, hd, kw}, {&dv, hd + gd, kw}}) {
    MIMO_ASSIGN_OR_RETURN(Tensor slots, grad->View({a.shares, rows, width}));
    if (a.shares > 1) {
      MIMO_ASSIGN_OR_RETURN(slots, ExchangeSlots(ops, *cp_, slots));
    }
    for (int p = 0; p < a.shares; ++p) {
      MIMO_ASSIGN_OR_RETURN(const Tensor slot, slots.Select(0, p));
      MIMO_RETURN_IF_ERROR(LinearRowsBackwardRun(ops, qkv_,
                                                 {.row0 = row0 + p * width,
                                                  .rows = width,
                                                  .dy = &slot,
                                                  .x = &x,
                                                  .dx = &dx,
                                                  .accumulate_dx = accumulate}));
      accumulate = true;
    }
  }
  // dx holds this member's heads' part of every row's gradient: the rows' owners get the sums.
  return ReduceScatterRows(ops, tp_, dx);
}

absl::StatusOr<SelfAttention::Heads> SelfAttention::HeadsFor(const PackedSequences& seqs,
                                                             int64_t rows) const {
  Heads a{.heads = heads_, .groups = groups_};
  if (seqs.context_size() > 1 || (cp_ != nullptr && rows == seqs.tokens())) {
    a.ring = true;  // ContextGroup checks the split against the group.
    if (rows == seqs.tokens()) return a;
    return absl::InvalidArgumentError(absl::StrCat(
        "SelfAttention: ", rows, " rows for split sequences of ", seqs.tokens(), " tokens"));
  }
  a.shares = ModelGroups::Size(cp_);
  if (rows * a.shares != seqs.tokens()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SelfAttention: ", a.shares, " x ", rows, " rows for sequences of ", seqs.tokens(),
        " tokens", a.shares > 1 ? " (each context-parallel member holds an equal block)" : ""));
  }
  if (heads_ % a.shares != 0 || groups_ % a.shares != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SelfAttention: all-to-all context parallelism over ", a.shares, " ranks needs the ",
        heads_, " heads and ", groups_, " query groups of a tp member to divide by it"));
  }
  a.heads /= a.shares;
  a.groups /= a.shares;
  return a;
}

absl::Status SelfAttention::ApplyRope(const StepContext& ctx, const Heads& a, Tensor& q, Tensor& k,
                                      bool backward) const {
  if (!config_.rotary) return absl::OkStatus();
  const int64_t rotary_dim = config_.rotary_dim == 0 ? head_dim_ : config_.rotary_dim;
  for (const auto& [tensor, heads] : {std::pair{&q, a.heads}, {&k, a.groups}}) {
    MIMO_RETURN_IF_ERROR(ctx.ops->Rope({.dtype = tensor->dtype(),
                                        .x = tensor->data(),
                                        .y = tensor->data(),
                                        .positions = ctx.sequences->positions(),
                                        .tokens = tensor->size(0),
                                        .heads = heads,
                                        .head_dim = head_dim_,
                                        .rotary_dim = rotary_dim,
                                        .base = config_.rotary_base,
                                        .backward = backward}));
  }
  return absl::OkStatus();
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
