// Self-attention over sequences split across a context-parallel group (Megatron's / Transformer
// Engine's ring attention): each member holds chunks r and 2cp-1-r of every sequence
// (PackedSequences::CreateSplit), the keys and values go around the group one member a step,
// each block of keys gives a partial softmax, and the partials are merged by log-sum-exp. The
// transfers overlap the compute: a step's attention is enqueued on the ops' stream before the
// next step's keys (and, in the backward, the gradients of the keys, one step behind them) go
// around on the communicator's stream.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "comm/communicator.h"
#include "kernels/tensor.h"
#include "mimo/block.h"

namespace mimo {

struct ContextAttentionShape {
  int64_t heads = 0;     // H: query heads of this rank (after tensor parallelism).
  int64_t kv_heads = 0;  // G: key/value heads.
  int64_t head_dim = 0;  // D
  float scale = 1.0f;
  bool causal = true;
};

// What the backward needs of the forward besides q, k, v and out: each region's log-sum-exps,
// (H, T / 2) fp32, region 0 the sequences' chunk r, region 1 their chunk 2cp-1-r.
struct ContextAttentionLse {
  kernels::Tensor region[2];
};

// out (T, H * D) = attention of this rank's queries q (T, H * D) over the keys and values of the
// whole sequences, from every member's k, v (T, G * D) (rows as ctx.sequences lays them out,
// T = ctx.sequences->tokens(), RoPE already applied). With a causal mask each step does the
// same work on every member: its own chunks (the two diagonal blocks causal, the second chunk
// over the first whole), then per step the keys of member j: chunk j of j < r seen whole by
// both chunks, else both of j's chunks seen whole by the second chunk only. The output is merged
// in fp32 and rounded once to the compute dtype. Every member of `cp` makes the call with the
// same sequences; `cp` is ctx.sequences' context group (its size and rank).
absl::Status ContextAttentionForward(const StepContext& ctx, comm::Communicator& cp,
                                     const ContextAttentionShape& shape, const kernels::Tensor& q,
                                     const kernels::Tensor& k, const kernels::Tensor& v,
                                     kernels::Tensor& out, ContextAttentionLse& lse);

// dq, dk, dv (q's, k's and v's shapes; overwritten) from dout (T, H * D): the blocks of the forward
// again, each through the attention backward with the merged out and log-sum-exps (as flash
// attention's backward over a block of keys needs only those), the keys' and values' gradients
// travelling around the group with them and back to their owner.
absl::Status ContextAttentionBackward(const StepContext& ctx, comm::Communicator& cp,
                                      const ContextAttentionShape& shape,
                                      const kernels::Tensor& dout, const kernels::Tensor& q,
                                      const kernels::Tensor& k, const kernels::Tensor& v,
                                      const kernels::Tensor& out, const ContextAttentionLse& lse,
                                      const kernels::Tensor& dq, const kernels::Tensor& dk,
                                      const kernels::Tensor& dv);

}  // namespace mimo
