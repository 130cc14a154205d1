// Lets one thread cancel the gRPC calls that another thread makes (or is about to make).
#include "worker/call_canceller.h"

namespace mimo::worker {

void CallCanceller::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  // TryCancel is thread-safe and returns at once; the calls end with CANCELLED in their threads.
  for (grpc::ClientContext* context : calls_) context->TryCancel();
}

bool CallCanceller::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

bool CallCanceller::Add(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return false;
  calls_.insert(context);
  return true;
}

void CallCanceller::Remove(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  calls_.erase(context);
}

}  // namespace mimo::worker
