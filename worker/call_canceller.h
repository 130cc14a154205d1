// Lets one thread cancel the gRPC calls that another thread makes (or is about to make).
#pragma once

#include <grpcpp/client_context.h>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"

namespace mimo::worker {

// A job's blocking calls (rendezvous waits, long polls) must end as soon as the job is stopped,
// not when their deadline runs out. Calls register their context while in flight; Cancel()
// cancels those and makes every later Add() refuse, so a call that starts after the cancel fails
// at once instead of blocking. Thread-safe.
class CallCanceller {
 public:
  // Cancels the calls in flight; later calls fail at once. Idempotent.
  void Cancel();
  bool cancelled() const;

  // Registers a call's context for cancellation; false (and nothing registered) when already
  // cancelled, in which case the caller must not start the call.
  bool Add(grpc::ClientContext* context);
  // Unregisters a context whose call finished.
  void Remove(grpc::ClientContext* context);

 private:
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<grpc::ClientContext*> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mimo::worker
