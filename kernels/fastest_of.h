// Fastest of: times a few interchangeable ways to run one piece of GPU work on the device and
// picks one (how the GEMM context chooses among cuBLASLt's candidate algorithms).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/status_macros.h"
#include "kernels/cuda_status.h"
#include "kernels/stream_hold.h"

namespace mimo::kernels {

// Times alternatives 0..n-1 (n >= 1) of one piece of work on `stream` and returns the one to
// keep: 0 unless another is more than kMargin faster (so timing noise alone changes nothing), or
// -1 when each had a run refused (n > 1; a single alternative is returned untimed, never run).
// `run(i)` enqueues one run of alternative i and says whether it was accepted; `marks` holds at
// least n + 1 timing events. The alternatives are timed in kRounds interleaved rounds, each keeping
// its best, so a clock change between rounds favours none; round r starts with alternative r (mod
// n), so the head of a round (where a drop in the clock would favour whoever runs there) is not
// always 0's. A round's runs wait behind one stream hold, so they run back to back on the device
// and a few-microsecond kernel is timed, not the host's launch rate; each alternative has `runs` of
// them per round, enough to span about kSpanMs (kMinRuns to kMaxRuns), judged from one run of
// alternative 0. Synchronizes the stream kRounds + 1 times (n > 1).
template <typename Run>
absl::StatusOr<int> FastestOf(int n, const Run& run, cudaStream_t stream,
                              absl::Span<const cudaEvent_t> marks) {
  constexpr int kRounds = 3;
  constexpr float kSpanMs = 0.1f, kMargin = 0.02f;
  constexpr int kMinRuns = 3, kMaxRuns = 30;
  // Longer than the host takes to enqueue the round (a few microseconds a run), with room.
  constexpr int64_t kHoldBaseNs = 20'000, kHoldPerRunNs = 10'000;
  // Milliseconds from marks[i] to marks[i + 1] (both reached).
  const auto elapsed = [&](int i) -> absl::StatusOr<float> {
    float ms = 0;
    MIMO_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, marks[i], marks[i + 1]));
    return ms;
  };
  if (n == 1) return 0;
  MIMO_RETURN_IF_ERROR(LaunchStreamHold(kHoldBaseNs + kHoldPerRunNs, stream));
  MIMO_CUDA_RETURN_IF_ERROR(cudaEventRecord(marks[0], stream));
  const bool first_ok = run(0);
  MIMO_CUDA_RETURN_IF_ERROR(cudaEventRecord(marks[1], stream));
  MIMO_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(marks[1]));
  MIMO_ASSIGN_OR_RETURN(const float once, elapsed(0));
  const int runs = !first_ok || once <= 0
                       ? kMaxRuns
                       : std::clamp(static_cast<int>(kSpanMs / once) + 1, kMinRuns, kMaxRuns);
  // Per alternative, its fastest round (infinite once a run was refused).
  std::vector<float> best(n, std::numeric_limits<float>::infinity());
  std::vector<bool> failed(n, false);
  for (int round = 0; round < kRounds; ++round) {
    MIMO_RETURN_IF_ERROR(LaunchStreamHold(kHoldBaseNs + kHoldPerRunNs * runs * n, stream));
    // Position j of the round runs alternative (round + j) % n, between marks[j] and marks[j + 1].
    for (int j = 0; j < n; ++j) {
      const int i = (round + j) % n;
      MIMO_CUDA_RETURN_IF_ERROR(cudaEventRecord(marks[j], stream));
      for (int r = 0; r < runs && !failed[i]; ++r) failed[i] = !run(i);
    }
    MIMO_CUDA_RETURN_IF_ERROR(cudaEventRecord(marks[n], stream));
    MIMO_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(marks[n]));
    for (int j = 0; j < n; ++j) {
      const int i = (round + j) % n;
      MIMO_ASSIGN_OR_RETURN(const float ms, elapsed(j));
      best[i] = failed[i] ? std::numeric_limits<float>::infinity() : std::min(best[i], ms);
    }
  }
  const int first =
      static_cast<int>(std::find(failed.begin(), failed.end(), false) - failed.begin());
  if (first == n) return -1;
  const int fastest = static_cast<int>(std::min_element(best.begin(), best.end()) - best.begin());
  return best[fastest] < (1 - kMargin) * best[first] ? fastest : first;
}

}  // namespace mimo::kernels
