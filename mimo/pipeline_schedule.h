// The one-forward-one-backward (1F1B) pipeline schedule of one stage (Megatron's
// forward_backward_pipelining_without_interleaving): warm-up forwards, a steady state alternating
// a forward and a backward, cool-down backwards; with the point-to-point transfers between
// neighbouring stages placed so that blocking sends cannot deadlock.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace mimo {

// One action of a stage, on micro-batch `micro_batch` (of model chunk `chunk`, interleaved).
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
  // Interleaved schedules: which of the rank's model chunks (virtual stage chunk * stages + rank)
  // the action is for: a send's producer, a receive's consumer. 0 otherwise.
  int chunk = 0;

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

// Megatron's interleaved 1F1B schedule (forward_backward_pipelining_with_interleaving) for
// `stages` ranks each holding `chunks` >= 2 model chunks, rank s chunk c being virtual stage
// c * stages + s of chunks * stages: every rank's actions (index: rank). Its computes in
// Megatron's order: the forwards of chunk 0 for micro-batches [0, stages), then chunk 1's, ...,
// then the next group of stages micro-batches; backwards likewise from the last chunk;
// min(2 (stages - rank - 1) + (chunks - 1) stages, all) warm-up forwards (all of them when
// micro_batches == stages), then one forward and one backward, then the cool-down backwards.
// Activations go to the next rank (the last rank's to rank 0's next chunk), gradients back
// likewise. The transfers are placed by a simulation of every rank at once in time (forwards 1,
// backwards 2 units), a send and its receive one event between two ranks that are both between
// computes, a rank handing its finished outputs to idle neighbours before its next compute:
// every rank's actions are then one global order's, so blocking sends complete. InvalidArgument
// unless stages >= 2, chunks >= 2 and micro_batches a positive multiple of stages.
absl::StatusOr<std::vector<std::vector<PipelineAction>>> InterleavedOneForwardOneBackward(
    int stages, int chunks, int64_t micro_batches);

// The fraction of the step a stage idles in the 1F1B schedule with equal forward and backward
// times per stage: (stages - 1) / (micro_batches + stages - 1); interleaved over `chunks` model
// chunks a rank, whose warm-up and cool-down take 1 / chunks of the time: (stages - 1) /
// (chunks * micro_batches + stages - 1).
double PipelineBubbleFraction(int stages, int64_t micro_batches, int chunks = 1);

}  // namespace mimo
