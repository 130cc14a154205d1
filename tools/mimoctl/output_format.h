// What mimoctl's job commands print: pure functions from mimo.v1 messages and gRPC statuses to
// text.
//
// Output contract (scripts may rely on it):
//  - Tables are left-aligned columns separated by at least two spaces, a header row first; "-"
//  marks
//    a value that does not apply or is not known yet.
//  - JSON is the proto3 JSON mapping with the .proto field names (`total_steps`, not `totalSteps`):
//    every scalar, repeated and map field is present, at its default value too (so a document's
//    keys do not depend on its values); unset sub-messages and unset `optional` fields are left
//    out; enums are names; int64 values, timestamps and durations are strings. Single results are
//    indented; stream updates are one compact object per line.
//  - YAML is the same document as the JSON, in block style. Strings that are empty, start with a
//    digit, sign or dot, or that YAML reads as a boolean or null are double-quoted, so every value
//    reads back with its JSON type. Stream updates are separate documents, each after "---".
#pragma once

#include <google/protobuf/message.h>
#include <google/protobuf/repeated_ptr_field.h>
#include <grpcpp/support/status.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "mimo/v1/job.pb.h"
#include "mimo/v1/job_service.pb.h"

namespace mimo::tools {

// "PENDING", "RUNNING", ... (the enum name without JOB_STATE_); the number for a value this
// client does not know.
std::string JobStateName(v1::JobState state);

// True for SUCCEEDED, FAILED and CANCELLED.
bool IsFinished(v1::JobState state);

// Two units at most, truncated to seconds: "0s", "42s", "12m5s", "3h4m", "2d5h". Negative
// durations print as "0s".
std::string FormatShortDuration(absl::Duration duration);

// "WORKER_FAILED on rank 3 (exit code 1): <message>"; the rank part only when rank >= 0, the exit
// code part only when it is non-zero, the message part only when there is one.
std::string FormatFailure(const v1::Failure& failure);

// The job list:
//   ID               NAME    STATE    STEP       LOSS    AGE
//   j-20261123-0001  moe-8x  RUNNING  1200/5000  2.3141  3h4m
// STEP is "step/total_steps" when total_steps is known, else the step, else "-"; LOSS is the last
// reported loss with four decimals; AGE is `now` minus create_time (FormatShortDuration).
std::string FormatJobTable(const google::protobuf::RepeatedPtrField<v1::Job>& jobs, absl::Time now);

// One job: FormatJobTable with its row, then "reason: <state_reason>" when there is one,
// "failure: <FormatFailure>" when the job has a failure and "checkpoint requested: #N, then stop
// at TIME (REASON)" when it has a checkpoint request.
std::string FormatJob(const v1::Job& job, absl::Time now);

// A job's history:
//   SEQ  TIME                  EVENT                          MESSAGE
//   1    2026-11-23T10:00:00Z  PENDING                        submitted
//   4    2026-11-23T10:00:09Z  metrics step 40, loss 2.3141
// TIME is UTC to the second; EVENT is the state entered, or the step and loss of a metrics report.
std::string FormatEventTable(const google::protobuf::RepeatedPtrField<v1::JobEvent>& events);

// The live progress line of `watch` (no newline); parts are separated by two spaces and appear only
// when known:
//   RUNNING  step 1200/5000 (24.0%)  loss 2.3141  52000 tok/s  ETA 1h2m
// "step S/T (P%)" when total_steps > 0, else "step S" when S > 0; loss when metrics were reported;
// tokens/s when positive; ETA when the coordinator estimated one.
std::string FormatProgressLine(const v1::Job& job);

// How a finished job ended (no newline): "job <id> SUCCEEDED", "job <id> FAILED: <FormatFailure,
// or state_reason without a failure>", "job <id> CANCELLED: <state_reason>" (the ": ..." part only
// when there is something to say).
std::string FormatJobEnd(const v1::Job& job);

// A log line (no newline): "[rank R] text", or just "text" without `with_rank`.
std::string FormatLogLine(const v1::LogLine& line, bool with_rank);

// The rank plan in the same layout as parallel::WritePlanTable (what `mimoctl plan` prints): a
// summary line, the module table and the rank table, ranks in the order given.
std::string FormatRankPlanTable(const v1::RankPlan& plan);

enum class JsonStyle {
  kIndented,  // Multi-line, for single results.
  kOneLine,   // One line, for stream updates.
};

// The proto3 JSON mapping of `message` (see the top of this file), ending with a newline. Fails
// only for a google.protobuf.Any whose type is unknown (mimo.v1 messages hold none).
absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message, JsonStyle style);

// The ToJson document as block-style YAML, ending with a newline.
absl::StatusOr<std::string> ToYaml(const google::protobuf::Message& message);

// The stderr lines for a failed call, each starting with "error: ": one per line of the status
// message (its code name when the message is empty), then, when the status details (the
// serialized google.rpc.Status) carry a google.rpc.BadRequest, "error: <field>: <description>" per
// field violation that the message did not already state on a line of its own.
std::vector<std::string> FormatRpcError(const grpc::Status& status);

// A UUID (RFC 4122 version 4, "xxxxxxxx-xxxx-4xxx-Nxxx-xxxxxxxxxxxx", N in 8..b, lower-case hex)
// from 16 random bytes; the version and variant bits are overwritten.
std::string FormatUuidV4(std::array<uint8_t, 16> random_bytes);

}  // namespace mimo::tools
