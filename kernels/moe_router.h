// Mixture-of-Experts routing: each token's scores over the experts (softmax or sigmoid of fp32
// logits), its top-k experts (optionally group-limited, with a per-expert selection bias for
// aux-loss-free balancing), its combine weights, the per-expert token counts; the backward from
// the combine weights' gradient to the logits'; and the load-balancing and z losses with their
// gradients (Megatron-Core's definitions). Where this differs from Megatron-Core (0.14):
//  - groups and the selection bias always rank the scores (Megatron ranks softmax routers'
//    groups by logits outside its pre-softmax mode, and applies the bias to sigmoid scores only);
//  - the load-balancing loss counts the experts actually chosen (Megatron recounts a plain top-k
//    of the scores, without bias or group limit).
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/allocator.h"

namespace mimo::kernels {

enum class RouterScore : int32_t {
  kSoftmax = 0,  // s = softmax(logits) over the experts.
  kSigmoid = 1,  // s = sigmoid(logits), per expert.
};

// How tokens are routed; shared by the forward and the backward. Limits: experts in [1, 1024],
// top_k in [1, min(experts, 32)]; with groups, num_groups in [2, 64] dividing experts,
// group_top_k in [1, num_groups], top_k a multiple of group_top_k and at most
// group_top_k * (experts / num_groups).
struct RouterConfig {
  int64_t experts = 0;
  int64_t top_k = 0;
  RouterScore score = RouterScore::kSoftmax;
  // Combine weights = the chosen scores divided by their sum (+ 1e-20): for softmax this is
  // Megatron's default (softmax over the top-k logits); false keeps the raw scores (its
  // pre-softmax mode). A sigmoid router with top_k = 1 keeps its raw score either way.
  bool normalize = true;
  float scaling_factor = 1.0f;  // Multiplies the combine weights (moe_router_topk_scaling_factor).
  // Group-limited routing (DeepSeek-V3): experts form num_groups equal groups, a group's score is
  // the sum of its top_k / group_top_k highest (biased) scores, and only experts of the
  // group_top_k best groups can be chosen. num_groups = 0 turns it off.
  int64_t num_groups = 0;
  int64_t group_top_k = 0;
};

// InvalidArgument naming the limit a config breaks.
absl::Status CheckRouterConfig(const RouterConfig& c);

// Per token t: s = score(logits[t]); the top_k experts by s + expert_bias (ties: the lower expert
// index), best first; probs[t, j] = scaling_factor * s[indices[t, j]] (/ the sum of the chosen
// s + 1e-20 when normalizing). tokens_per_expert[e] counts the (token, choice) pairs choosing e
// (added to what it holds with accumulate_counts: a step's load over several micro-batches).
struct MoeRouterParams {
  RouterConfig config;
  const float* logits = nullptr;         // (tokens, experts) fp32.
  const float* expert_bias = nullptr;    // Optional (experts,): for choosing only, never in probs.
  float* scores = nullptr;               // (tokens, experts): s, for the backward and the losses.
  int32_t* indices = nullptr;            // (tokens, top_k)
  float* probs = nullptr;                // (tokens, top_k)
  int32_t* tokens_per_expert = nullptr;  // (experts,), overwritten unless accumulate_counts.
  int64_t tokens = 0;
  bool accumulate_counts = false;
};

// dlogits = d(probs)/d(logits)^T dprobs (the choice itself is piecewise constant), overwritten.
struct MoeRouterBackwardParams {
  RouterConfig config;
  const float* dprobs = nullptr;     // (tokens, top_k)
  const float* scores = nullptr;     // (tokens, experts) from the forward.
  const int32_t* indices = nullptr;  // (tokens, top_k) from the forward.
  float* dlogits = nullptr;          // (tokens, experts)
  int64_t tokens = 0;
};

// The auxiliary losses of one micro-batch, written to losses[0] (load balancing) and losses[1]
// (z-loss), each 0 when its coefficient is 0. With a[t] = s[t] (softmax) or
// s[t] / (sum(s[t]) + 1e-20) (sigmoid), per sequence q of T_q > 0 tokens whose (token, choice)
// pairs choose expert e c_q[e] times:
//   aux_q = aux_coeff * E / (k * T_q^2) * sum_e c_q[e] * sum_{t in q} a[t, e]
// and aux = the mean of aux_q over those sequences (Megatron's seq_aux_loss); without cu_seqlens
// the micro-batch is one sequence (Megatron's switch load-balancing loss).
//   z = z_coeff * mean over tokens of logsumexp(logits[t])^2.
// With dlogits, loss_grad * d(aux + z)/d(logits) is added to it (the counts are constants).
// A micro-batch split over ranks (sequence parallelism: each holds its block of the rows) gives
// `counts`, the whole micro-batch's pairs per expert (summed over the ranks), and total_tokens,
// its tokens: T and c[e] above are the whole micro-batch's, the sums over t this call's rows, so
// the ranks' losses and gradients are their shares of the whole micro-batch's (the losses add up
// over the ranks to the losses one rank computes over all the rows).
struct MoeAuxLossParams {
  RouterConfig config;
  const float* logits = nullptr;        // (tokens, experts)
  const float* scores = nullptr;        // (tokens, experts) from the forward.
  const int32_t* indices = nullptr;     // (tokens, top_k) from the forward.
  const int32_t* cu_seqlens = nullptr;  // Optional (num_seqs + 1,), as attention's (host memory
                                        // for the CPU twin, device memory for CUDA).
  int64_t num_seqs = 0;
  int64_t tokens = 0;
  // Optional (experts,) and > 0 with it (>= tokens): the whole micro-batch's counts and tokens
  // when this call holds part of its rows (host memory for the CPU twin, device memory for
  // CUDA). Not with cu_seqlens.
  const int32_t* counts = nullptr;
  int64_t total_tokens = 0;
  float aux_coeff = 0.0f;    // >= 0
  float z_coeff = 0.0f;      // >= 0
  float* losses = nullptr;   // (2,), overwritten.
  float* dlogits = nullptr;  // Optional (tokens, experts): added to.
  float loss_grad = 1.0f;
  // CUDA only: scratch of at least MoeAuxLossWorkspaceBytes(tokens, sequences, experts) device
  // bytes, sequences = num_seqs (1 without cu_seqlens).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

absl::Status CheckMoeRouter(const MoeRouterParams& p);
absl::Status CheckMoeRouterBackward(const MoeRouterBackwardParams& p);
absl::Status CheckMoeAuxLoss(const MoeAuxLossParams& p);

// CPU twins: host memory.
absl::Status MoeRouterCpu(const MoeRouterParams& p);
absl::Status MoeRouterBackwardCpu(const MoeRouterBackwardParams& p);
absl::Status MoeAuxLossCpu(const MoeAuxLossParams& p);

// CUDA: device memory, enqueued on `stream` (a cudaStream_t). Choices, weights and counts equal
// the CPU twin's up to the last bit of expf; every result is bitwise reproducible (no float
// atomics). No host synchronization (graph-capturable), so device-side indices and cu_seqlens
// are not checked: out-of-range values read and write out of bounds (the CPU twin rejects them).
size_t MoeAuxLossWorkspaceBytes(int64_t tokens, int64_t sequences, int64_t experts);
absl::Status LaunchMoeRouter(const MoeRouterParams& p, StreamHandle stream);
absl::Status LaunchMoeRouterBackward(const MoeRouterBackwardParams& p, StreamHandle stream);
absl::Status LaunchMoeAuxLoss(const MoeAuxLossParams& p, StreamHandle stream);

}  // namespace mimo::kernels
