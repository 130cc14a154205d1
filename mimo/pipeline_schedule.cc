// OneForwardOneBackward: Megatron's 1F1B order, its batched send/receive pairs serialized.
#include "mimo/pipeline_schedule.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mimo {

absl::StatusOr<std::vector<PipelineAction>> OneForwardOneBackward(int stage, int stages,
                                                                  int64_t micro_batches) {
  if (stages < 1 || stage < 0 || stage >= stages || micro_batches < 1) {
    return absl::InvalidArgumentError(absl::StrCat("1F1B schedule: stage ", stage, " of ", stages,
                                                   " over ", micro_batches, " micro-batches"));
  }
  using A = PipelineAction;
  const bool first = stage == 0, last = stage == stages - 1;
  std::vector<A> out;
  auto add = [&](A::Kind kind, int64_t i, bool applies) {
    if (applies) out.push_back({kind, i});
  };
  const int64_t warmup = std::min<int64_t>(stages - stage - 1, micro_batches);
  const int64_t steady = micro_batches - warmup;
  for (int64_t i = 0; i < warmup; ++i) {
    add(A::kRecvActivation, i, !first);
    add(A::kForward, i, true);
    add(A::kSendActivation, i, !last);
  }
  if (steady > 0) add(A::kRecvActivation, warmup, !first);
  for (int64_t j = 0; j < steady; ++j) {
    add(A::kForward, warmup + j, true);
    // With the next stage (this one the lower): send, then receive.
    add(A::kSendActivation, warmup + j, !last);
    add(A::kRecvGradient, j, !last);
    add(A::kBackward, j, true);
    if (j + 1 < steady) {
      // With the previous stage (this one the upper): receive, then send.
      add(A::kRecvActivation, warmup + j + 1, !first);
    }
    add(A::kSendGradient, j, !first);
  }
  for (int64_t i = steady; i < micro_batches; ++i) {
    add(A::kRecvGradient, i, !last);
    add(A::kBackward, i, true);
    add(A::kSendGradient, i, !first);
  }
  return out;
}

double PipelineBubbleFraction(int stages, int64_t micro_batches) {
  return static_cast<double>(stages - 1) / static_cast<double>(micro_batches + stages - 1);
}

}  // namespace mimo
