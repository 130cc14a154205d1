// Ring attention: the block schedule of the load-balanced split, the ring exchanges beside each
// step's attention, the log-sum-exp merges of the forward and the per-block backward with its
// gradients' accumulation.
#include "mimo/context_attention.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/comm_type.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

// The address `elements` elements into t.
void* At(const Tensor& t, int64_t elements) {
  return static_cast<char*>(t.data()) + elements * kernels::DTypeSize(t.dtype());
}

// One block: the queries of region qx against the keys of region ky (causal or whole).
struct BlockSpec {
  int qx = 0;
  int ky = 0;
  bool causal = false;
};

// The blocks of a step that holds the keys of member j, on member r.
std::vector<BlockSpec> BlocksOf(int r, int j, bool causal) {
  if (!causal) return {{0, 0}, {0, 1}, {1, 0}, {1, 1}};
  if (j == r) return {{0, 0, true}, {1, 1, true}, {1, 0}};
  if (j < r) return {{0, 0}, {1, 0}};
  return {{1, 0}, {1, 1}};
}

// The layout both passes share.
struct Ring {
  int size = 1;
  int rank = 0;
  int64_t c = 0;     // Rows of a region (T / 2).
  int64_t seqs = 0;  // Sequences (chunks of a region).
  int64_t max_len = 0;
  const int32_t* cu = nullptr;  // A region's chunk bounds.
};

absl::StatusOr<Ring> RingOf(const StepContext& ctx, comm::Communicator& cp, const Tensor& q,
                            const char* what) {
  const PackedSequences& s = *ctx.sequences;
  if (s.context_size() != cp.size() || s.context_rank() != cp.rank()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": sequences split for member ", s.context_rank(), " of ", s.context_size(),
        ", but the context-parallel group has this rank as member ", cp.rank(), " of ", cp.size()));
  }
  if (q.size(0) != s.tokens() || s.tokens() % 2 != 0 || s.num_seqs() % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", q.size(0), " rows for split sequences of ", s.tokens()));
  }
  return Ring{.size = cp.size(),
              .rank = cp.rank(),
              .c = s.tokens() / 2,
              .seqs = s.num_seqs() / 2,
              .max_len = s.max_seqlen(),
              .cu = s.cu_seqlens()};
}

// `send` to the next member, the previous member's into `recv`. Even members send first, odd
// ones receive first, so blocking sends cannot all wait at once. No synchronization: the caller
// has made sure `send` is written and `recv` idle (the communicator works on its own stream), and
// kernels may read `send` meanwhile (the ring's overlap: a step's attention runs on the ops'
// stream while the next step's keys travel).
absl::Status Exchange(comm::Communicator& cp, const Ring& ring, const Tensor& send, Tensor& recv) {
  MIMO_ASSIGN_OR_RETURN(const comm::DataType type, CommType(send.dtype()));
  const int to = (ring.rank + 1) % ring.size, from = (ring.rank + ring.size - 1) % ring.size;
  const size_t n = static_cast<size_t>(send.numel());
  if (ring.rank % 2 == 0) {
    MIMO_RETURN_IF_ERROR(cp.Send(send.data(), n, type, to));
    return cp.Recv(recv.data(), n, type, from);
  }
  MIMO_RETURN_IF_ERROR(cp.Recv(recv.data(), n, type, from));
  return cp.Send(send.data(), n, type, to);
}

}  // namespace

absl::Status ContextAttentionForward(const StepContext& ctx, comm::Communicator& cp,
                                     const ContextAttentionShape& shape, const Tensor& q,
                                     const Tensor& k, const Tensor& v, Tensor& out,
                                     ContextAttentionLse& lse) {
  MIMO_ASSIGN_OR_RETURN(const Ring ring, RingOf(ctx, cp, q, "ContextAttentionForward"));
  kernels::Ops& ops = *ctx.ops;
  const DType dtype = q.dtype();
  const int64_t t = 2 * ring.c, h = shape.heads, hd = h * shape.head_dim,
                gd = shape.kv_heads * shape.head_dim;
  // The keys and values in flight: (2, T, G * D), [K; V].
  MIMO_ASSIGN_OR_RETURN(Tensor cur, NewTensor(ctx, {2, t, gd}, dtype));
  MIMO_ASSIGN_OR_RETURN(Tensor next, NewTensor(ctx, {2, t, gd}, dtype));
  MIMO_RETURN_IF_ERROR(ops.Copy(At(cur, 0), k.data(), k.nbytes()));
  MIMO_RETURN_IF_ERROR(ops.Copy(At(cur, t * gd), v.data(), v.nbytes()));
  MIMO_ASSIGN_OR_RETURN(Tensor merged, NewTensor(ctx, {t, hd}, DType::kF32));  // Running output.
  MIMO_ASSIGN_OR_RETURN(Tensor part, NewTensor(ctx, {ring.c, hd}, dtype));
  MIMO_ASSIGN_OR_RETURN(Tensor part_lse, NewTensor(ctx, {h, ring.c}, DType::kF32));
  for (Tensor& region : lse.region) {
    MIMO_ASSIGN_OR_RETURN(region, NewTensor(ctx, {h, ring.c}, DType::kF32));
  }
  bool first[2] = {true, true};
  for (int step = 0; step < ring.size; ++step) {
    // `cur` written (copied, or received), `next` idle (the last step's attention read it).
    MIMO_RETURN_IF_ERROR(ops.Synchronize());
    const int j = (ring.rank - step + ring.size) % ring.size;  // Whose keys these are.
    for (const BlockSpec& b : BlocksOf(ring.rank, j, shape.causal)) {
      MIMO_RETURN_IF_ERROR(ops.Attention({.dtype = dtype,
                                          .q = At(q, b.qx * ring.c * hd),
                                          .k = At(cur, b.ky * ring.c * gd),
                                          .v = At(cur, (t + b.ky * ring.c) * gd),
                                          .out = part.data(),
                                          .lse = part_lse.data<float>(),
                                          .cu_seqlens = ring.cu,
                                          .num_seqs = ring.seqs,
                                          .total_tokens = ring.c,
                                          .heads = h,
                                          .kv_heads = shape.kv_heads,
                                          .head_dim = shape.head_dim,
                                          .max_seqlen = ring.max_len,
                                          .scale = shape.scale,
                                          .causal = b.causal}));
      MIMO_RETURN_IF_ERROR(ops.AttentionMerge({.dtype = dtype,
                                               .out = merged.data<float>() + b.qx * ring.c * hd,
                                               .lse = lse.region[b.qx].data<float>(),
                                               .part_out = part.data(),
                                               .part_lse = part_lse.data<float>(),
                                               .tokens = ring.c,
                                               .heads = h,
                                               .head_dim = shape.head_dim,
                                               .first = first[b.qx]}));
      first[b.qx] = false;
    }
    // The next member's keys travel while this step's attention runs.
    if (step + 1 < ring.size) {
      MIMO_RETURN_IF_ERROR(Exchange(cp, ring, cur, next));
      std::swap(cur, next);
    }
  }
  MIMO_ASSIGN_OR_RETURN(out, NewTensor(ctx, {t, hd}, dtype));
  return ops.Cast(
      {.from = DType::kF32, .to = dtype, .x = merged.data(), .y = out.data(), .n = t * hd});
}

absl::Status ContextAttentionBackward(const StepContext& ctx, comm::Communicator& cp,
                                      const ContextAttentionShape& shape, const Tensor& dout,
                                      const Tensor& q, const Tensor& k, const Tensor& v,
                                      const Tensor& out, const ContextAttentionLse& lse,
                                      const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  MIMO_ASSIGN_OR_RETURN(const Ring ring, RingOf(ctx, cp, q, "ContextAttentionBackward"));
  kernels::Ops& ops = *ctx.ops;
  const DType dtype = q.dtype();
  const int64_t t = 2 * ring.c, h = shape.heads, hd = h * shape.head_dim,
                gd = shape.kv_heads * shape.head_dim;
  // The keys and values in flight, (2, T, G * D) [K; V], as in the forward; and the gradients
  // of the keys and values, which follow their keys one step behind: the members that have held
  // member j's keys so far have summed their parts into dKV_j, which reaches a member while it
  // computes with the next keys (so both transfers run beside a step's attention).
  MIMO_ASSIGN_OR_RETURN(Tensor cur, NewTensor(ctx, {2, t, gd}, dtype));
  MIMO_ASSIGN_OR_RETURN(Tensor next, NewTensor(ctx, {2, t, gd}, dtype));
  MIMO_RETURN_IF_ERROR(ops.Copy(At(cur, 0), k.data(), k.nbytes()));
  MIMO_RETURN_IF_ERROR(ops.Copy(At(cur, t * gd), v.data(), v.nbytes()));
  MIMO_ASSIGN_OR_RETURN(Tensor grads, NewTensor(ctx, {2, t, gd}, dtype));  // [dK; dV] sent on.
  MIMO_ASSIGN_OR_RETURN(Tensor arrived, NewTensor(ctx, {2, t, gd}, dtype));
  // This member's part of the step's dKV: its blocks' gradients summed, rows as in `cur`.
  MIMO_ASSIGN_OR_RETURN(Tensor part, NewTensor(ctx, {2, t, gd}, dtype));
  MIMO_RETURN_IF_ERROR(CheckSameShape(dq, q, "ContextAttentionBackward: dq"));
  MIMO_RETURN_IF_ERROR(CheckSameShape(dk, k, "ContextAttentionBackward: dk"));
  MIMO_RETURN_IF_ERROR(CheckSameShape(dv, v, "ContextAttentionBackward: dv"));
  MIMO_RETURN_IF_ERROR(ops.SetZero(dq.data(), dq.nbytes()));
  MIMO_ASSIGN_OR_RETURN(Tensor bq, NewTensor(ctx, {ring.c, hd}, dtype));
  MIMO_ASSIGN_OR_RETURN(Tensor bk, NewTensor(ctx, {ring.c, gd}, dtype));
  MIMO_ASSIGN_OR_RETURN(Tensor bv, NewTensor(ctx, {ring.c, gd}, dtype));
  auto add = [&](void* dst, const void* src, int64_t n) {
    return ops.Add({.dtype = dtype, .a = dst, .b = src, .out = dst, .n = n});
  };
  for (int step = 0; step < ring.size; ++step) {
    // `cur` and `grads` written, `next`, `arrived` and `part` idle.
    MIMO_RETURN_IF_ERROR(ops.Synchronize());
    MIMO_RETURN_IF_ERROR(ops.SetZero(part.data(), part.nbytes()));
    const int j = (ring.rank - step + ring.size) % ring.size;
    for (const BlockSpec& b : BlocksOf(ring.rank, j, shape.causal)) {
      const int64_t qrow = b.qx * ring.c, krow = b.ky * ring.c;
      MIMO_RETURN_IF_ERROR(ops.AttentionBackward({.dtype = dtype,
                                                  .dout = At(dout, qrow * hd),
                                                  .q = At(q, qrow * hd),
                                                  .k = At(cur, krow * gd),
                                                  .v = At(cur, (t + krow) * gd),
                                                  .out = At(out, qrow * hd),
                                                  .lse = lse.region[b.qx].data<float>(),
                                                  .dq = bq.data(),
                                                  .dk = bk.data(),
                                                  .dv = bv.data(),
                                                  .cu_seqlens = ring.cu,
                                                  .num_seqs = ring.seqs,
                                                  .total_tokens = ring.c,
                                                  .heads = h,
                                                  .kv_heads = shape.kv_heads,
                                                  .head_dim = shape.head_dim,
                                                  .max_seqlen = ring.max_len,
                                                  .scale = shape.scale,
                                                  .causal = b.causal}));
      MIMO_RETURN_IF_ERROR(add(At(dq, qrow * hd), bq.data(), bq.numel()));
      MIMO_RETURN_IF_ERROR(add(At(part, krow * gd), bk.data(), bk.numel()));
      MIMO_RETURN_IF_ERROR(add(At(part, (t + krow) * gd), bv.data(), bv.numel()));
    }
    // Beside the attention: the next member's keys, and the gradients of this step's keys from
    // the members before (the last step's finished ones on to the next member).
    if (step + 1 < ring.size) MIMO_RETURN_IF_ERROR(Exchange(cp, ring, cur, next));
    if (step > 0) {
      MIMO_RETURN_IF_ERROR(Exchange(cp, ring, grads, arrived));
      std::swap(grads, arrived);
      MIMO_RETURN_IF_ERROR(add(grads.data(), part.data(), part.numel()));
    } else {
      std::swap(grads, part);  // Member j = this one: the first to hold its keys.
    }
    std::swap(cur, next);
  }
  // `grads` holds the gradients of the next member's keys from every member: to it, and this
  // member's from the previous one.
  if (ring.size > 1) {
    MIMO_RETURN_IF_ERROR(ops.Synchronize());
    MIMO_RETURN_IF_ERROR(Exchange(cp, ring, grads, arrived));
    std::swap(grads, arrived);
  }
  MIMO_RETURN_IF_ERROR(ops.Copy(dk.data(), At(grads, 0), dk.nbytes()));
  return ops.Copy(dv.data(), At(grads, t * gd), dv.nbytes());
}

}  // namespace mimo
