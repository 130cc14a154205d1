// The coordinator's gRPC message size limits, shared with its clients so that they can refuse an
// oversized request themselves and say why.
#pragma once

#include <cstddef>

namespace mimo::coordinator {

// The largest request message the coordinator receives (gRPC's default, set explicitly). A
// SubmitJob or ValidateJob request is almost all its spec.
inline constexpr int kMaxRequestBytes = 4 << 20;

// ListJobs ends a page before the job that would take it past this many bytes of jobs (each
// counted with its field's tag and length; a page always holds one), so that
// any gRPC client, whose default receive limit is kMaxRequestBytes, can read pages of jobs with
// large specs and reasons: a full page of 1000 such jobs was gigabytes. 64 KiB stay for the rest
// of the response (its page token). A single job above it (a spec near the submit limit) comes
// in a page of its own.
inline constexpr size_t kMaxListPageBytes = (4 << 20) - (64 << 10);

// The longest reason a CancelJob or CheckpointJob request may give: it becomes the job's
// state_reason and an event, both in every list page and watch of the job.
inline constexpr size_t kMaxReasonBytes = 4096;

}  // namespace mimo::coordinator
