// A job spec's model as the mimo configs the worker builds its modules from: the spec's sizes
// with the architecture defaults below, validated. The spec proto stops here.
//
// Language model: RMSNorm, SwiGLU, no biases, causal attention with RoPE (rotary_base, 0:
// 10000). Encoders: LayerNorm, exact GELU, biases, bidirectional attention, learned position
// embeddings (ViT / Whisper style). Projector KIND_UNSPECIFIED is KIND_MLP. MoE: num_experts 0
// makes every layer dense; shared experts of total width shared_expert_ffn_hidden_size, or
// num_shared_experts times the routed experts' width when that is 0; moe_layer_freq 0 is 1;
// normalize_weights unset is true, top_k_scaling_factor 0 is 1, expert_bias_update_rate 0 is
// 1e-3, DROP_POLICY_UNSPECIFIED is DROP_POLICY_PROBS (Megatron's defaults).
#pragma once

#include "absl/status/statusor.h"
#include "kernels/dtype.h"
#include "mimo/mimo_model.h"
#include "mimo/v1/job_spec.pb.h"

namespace mimo::worker {

// The compute dtype: PRECISION_FP32 -> f32, PRECISION_BF16 -> bf16, unspecified -> bf16 on GPU
// workers and f32 on CPU workers.
kernels::DType ComputeDType(v1::Precision precision, bool cuda);

// InvalidArgument naming the module and field at fault (a missing language module, a second
// module of one kind, sizes the model refuses).
absl::StatusOr<MimoModelConfig> MimoModelConfigFromSpec(const v1::JobSpec& spec,
                                                        kernels::DType dtype);

}  // namespace mimo::worker
