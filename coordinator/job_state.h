// The job state machine (which transitions are legal, which states are final) and the words
// event messages use for states, rank counts and device kinds.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "mimo/v1/job.pb.h"

namespace mimo::coordinator {

// SUCCEEDED, FAILED and CANCELLED.
bool IsTerminal(v1::JobState state);

// OK when `from` -> `to` is legal:
//   PENDING    -> SCHEDULED | CANCELLING | FAILED
//   SCHEDULED  -> RUNNING | PENDING (restart) | FAILED | CANCELLING
//   RUNNING    -> SUCCEEDED | PENDING (restart) | FAILED | CANCELLING
//   CANCELLING -> CANCELLED | FAILED
// FailedPrecondition otherwise, naming both states.
absl::Status CheckTransition(v1::JobState from, v1::JobState to);

// "1 rank", "4 ranks"; with `all`, "1 rank", "all 4 ranks". For event messages.
std::string RankCount(int64_t n, bool all = false);

// "RUNNING" for JOB_STATE_RUNNING.
absl::string_view StateName(v1::JobState state);

// "cpu" or "cuda", as workers and job specs spell device kinds.
const char* DeviceKindWord(v1::DeviceKind device);

}  // namespace mimo::coordinator
