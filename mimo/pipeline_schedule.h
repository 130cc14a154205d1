// The one-forward-one-backward (1F1B) pipeline schedule of one stage (Megatron's
// forward_backward_pipelining_without_interleaving): warm-up forwards, a steady state alternating
// a forward and a backward, cool-down backwards; with the point-to-point transfers between
// neighbouring stages placed so that blocking sends cannot deadlock.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace mimo {

// One action of a stage, on micro-batch `micro_batch`.
struct PipelineAction {
  enum Kind {
    kRecvActivation,  // From the previous stage: the micro-batch's input rows.
    kForward,
    kSendActivation,  // To the next stage: the forward's output rows.
    kRecvGradient,    // From the next stage: the gradient of the forward's output.
    kBackward,
    kSendGradient,  // To the previous stage: the gradient of the forward's input.
  };
  Kind kind;
  int64_t micro_batch;

  bool operator==(const PipelineAction&) const = default;
};

// The actions of `stage` (of `stages`) over `micro_batches`, in order: min(stages - stage - 1,
// micro_batches) warm-up forwards, then per remaining micro-batch a forward and the backward of
// the oldest outstanding one, then the outstanding backwards. Transfers pair up across
// neighbours in the same order on both sides (where Megatron batches a send and a receive
// together, the lower stage sends first and the upper one receives first), so they complete
// even when a send blocks until its receive is posted. The first stage neither receives
// activations nor sends gradients; the last neither sends activations nor receives gradients.
// InvalidArgument unless 0 <= stage < stages and micro_batches >= 1.
absl::StatusOr<std::vector<PipelineAction>> OneForwardOneBackward(int stage, int stages,
                                                                  int64_t micro_batches);

// The fraction of the step a stage idles in the 1F1B schedule with equal forward and backward
// times per stage: (stages - 1) / (micro_batches + stages - 1).
double PipelineBubbleFraction(int stages, int64_t micro_batches);

}  // namespace mimo
