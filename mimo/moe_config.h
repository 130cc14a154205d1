// The Mixture-of-Experts settings of a transformer stack (Megatron's moe_* arguments that this
// model implements), validated once.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/moe_capacity.h"
#include "kernels/moe_router.h"

namespace mimo {

struct MoeConfig {
  // Experts, top_k, score function, normalization, scaling factor, group-limited routing.
  kernels::RouterConfig router;
  // Load-balancing loss coefficient (0: none), per sequence (Megatron's seq_aux_loss) or per
  // micro-batch, and the router z-loss coefficient (0: none).
  float aux_loss_coeff = 0.0f;
  bool per_sequence_aux_loss = false;
  float z_loss_coeff = 0.0f;
  // Width of each routed expert; 0 means the transformer's ffn_hidden_size.
  int64_t expert_ffn_hidden_size = 0;
  // Total width of the shared experts applied to every token; 0 means none.
  int64_t shared_expert_ffn_hidden_size = 0;
  // Each expert's rows in the permuted buffer are padded to a multiple of this (zero rows); in
  // [1, 1024]. Grouped GEMMs want 8 or 16; 64 lets experts of about equal loads share a padded
  // row count, so that the GPU's per-expert products run as a few batched ones (CublasLt::
  // GemmBatch's stacks): a Qwen3-style layer 3.5% and a fine-grained one 4% faster on an H100
  // than with 16 (bench/RESULTS.md, 2026-12-06), at up to 63 zero rows per expert. The
  // graph-safe path runs its experts' forward and input-gradient products as tiles of `align`
  // rows (64 or more) through cuBLASLt: a graph-safe layer on an H100 took, with 64 / 128 / 256,
  // 27.8 / 25.6 / 26.6 ms (Qwen3-style) and 67.1 / 56.4 / 51.4 ms (Mixtral-style).
  int64_t align = 64;
  // Aux-loss-free load balancing (Megatron's moe_router_enable_expert_bias): a per-expert bias,
  // starting at zero, added to the scores for choosing experts only, and moved by
  // MoeLayer::UpdateExpertBias after each step by expert_bias_update_rate (Megatron's
  // moe_router_bias_update_rate; > 0) towards a balanced load.
  bool expert_bias = false;
  float expert_bias_update_rate = 1e-3f;
  // Token dropping (Megatron's moe_expert_capacity_factor and moe_token_drop_policy): each expert
  // takes at most kernels::MoeExpertCapacity(tokens, top_k, experts, capacity_factor) of a
  // micro-batch's (token, choice) pairs on this rank (its own rows: under tp or cp each member
  // caps its block, as Megatron does), chosen by drop_policy; the others add
  // nothing to the output (their weights' gradients are zero). 0: dropless (the default);
  // otherwise in (0, 1e6]. The auxiliary losses and the per-expert load see the choices before
  // dropping.
  double capacity_factor = 0.0;
  kernels::TokenDropPolicy drop_policy = kernels::TokenDropPolicy::kProbs;
  // CUDA-graph-safe mode: the layer's forward and backward make no host synchronization (the
  // experts' row offsets stay on the device, padding is done there, the experts run grouped
  // GEMMs), so a CUDA graph can capture them and replay them on new inputs of the capture's
  // token count, packing and loss scale (kernels::CudaGraph::Capture(ops, ...): its memory in a
  // private pool of the ops' allocator); slower than the eager layer (1.12-1.35x on an H100 and
  // an H200: the products run as cuBLASLt tiles of `align` rows, the weight gradients on mimo's
  // own grouped kernel, sized for the worst-case routing). A capture keeps whether the experts'
  // weight gradients are written or added (written when stale at capture: Parameter::ResetGrad),
  // so a step's first micro-batch and its later ones need graphs of their own. Needs ep and
  // expt_tp of 1 (the all-to-all's row counts travel through the host) and experts that read
  // their offsets on the device (the default builder then is GroupedExpertsBuilder).
  bool graph_safe = false;
};

// InvalidArgument naming the field at fault.
absl::Status ValidateMoeConfig(const MoeConfig& config);

}  // namespace mimo
