// The job state machine: which transitions are legal and which states are final.
#include "coordinator/job_state.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace mimo::coordinator {

using v1::JobState;

bool IsTerminal(JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

absl::string_view StateName(JobState state) {
  absl::string_view name = v1::JobState_Name(state);
  absl::ConsumePrefix(&name, "JOB_STATE_");
  return name;
}

absl::Status CheckTransition(JobState from, JobState to) {
  bool ok = false;
  switch (from) {
    case v1::JOB_STATE_PENDING:
      ok = to == v1::JOB_STATE_SCHEDULED || to == v1::JOB_STATE_CANCELLING ||
           to == v1::JOB_STATE_FAILED;
      break;
    case v1::JOB_STATE_SCHEDULED:
      ok = to == v1::JOB_STATE_RUNNING || to == v1::JOB_STATE_PENDING ||
           to == v1::JOB_STATE_FAILED || to == v1::JOB_STATE_CANCELLING;
      break;
    case v1::JOB_STATE_RUNNING:
      ok = to == v1::JOB_STATE_SUCCEEDED || to == v1::JOB_STATE_PENDING ||
           to == v1::JOB_STATE_FAILED || to == v1::JOB_STATE_CANCELLING;
      break;
    case v1::JOB_STATE_CANCELLING:
      ok = to == v1::JOB_STATE_CANCELLED || to == v1::JOB_STATE_FAILED;
      break;
    default:
      break;
  }
  if (ok) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("a job cannot go from ", StateName(from), " to ", StateName(to)));
}

std::string RankCount(int64_t n, bool all) {
  if (n == 1) return "1 rank";
  return absl::StrCat(all ? "all " : "", n, " ranks");
}

const char* DeviceKindWord(v1::DeviceKind device) {
  return device == v1::DEVICE_KIND_CUDA ? "cuda" : "cpu";
}

}  // namespace mimo::coordinator
