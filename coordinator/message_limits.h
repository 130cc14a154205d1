// The coordinator's gRPC message size limits, shared with its clients so that they can refuse an
// oversized request themselves and say why.
#pragma once

#include <cstddef>

namespace mimo::coordinator {

// The largest request message the coordinator receives (gRPC's default, set explicitly). A
// SubmitJob or ValidateJob request is almost all its spec.
inline constexpr int kMaxRequestBytes = 4 << 20;

// ListJobs ends a page before the job that would take its jobs past this many bytes (a page
// always holds one), so that any gRPC client, whose default receive limit this is, can read pages
// of jobs with large specs and reasons: a full page of 1000 such jobs was gigabytes.
inline constexpr size_t kMaxListPageBytes = 4 << 20;

}  // namespace mimo::coordinator
