// The model FLOPs of a training step, the numerator of throughput per GPU and MFU: the matrix
// multiplications of the forward pass counted exactly for the packed sequences (2 FLOPs per
// multiply-add), times 3 for forward + backward, as Megatron-LM counts them. Unlike Megatron's
// formula (which counts every causal query against the whole sequence), attention counts only the
// score and value products of the pairs a token attends (causal: n (n + 1) / 2 pairs in a
// sequence of n; bidirectional: n^2), so MFU is not inflated by masked work; a MoE layer counts its
// router, its top_k routed experts per token and its shared experts. Norms, activations, softmax
// and embedding lookups are left out.
#pragma once

#include <cstdint>
#include <vector>

#include "mimo/language_model.h"
#include "mimo/modality_encoder.h"

namespace mimo {

// The language model on packed sequences of these lengths.
double LanguageModelTrainingFlops(const LanguageModelConfig& config,
                                  const std::vector<int32_t>& lengths);

// An encoder (with its projector) on samples of these token counts (a sample's tokens attend
// one another).
double EncoderTrainingFlops(const ModalityEncoderConfig& config,
                            const std::vector<int64_t>& tokens);

}  // namespace mimo
