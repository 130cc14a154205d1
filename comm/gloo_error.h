// Turns what a Gloo call throws into an absl::Status, so that no exception crosses the comm API.
#pragma once

#include <exception>
#include <stdexcept>
#include <utility>

#include "absl/status/status.h"

namespace mimo::comm {

// Thrown by our code that Gloo calls back (the rendezvous store adapter) to carry a Status through
// Gloo's frames unchanged.
class StatusException : public std::runtime_error {
 public:
  explicit StatusException(absl::Status status);
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
};

// The Status of an exception a Gloo call threw: a StatusException's own Status; DeadlineExceeded
// for Gloo's timeouts; Unavailable for its other I/O errors (a peer closed the connection);
// Internal for its failed checks and any other exception.
absl::Status GlooExceptionToStatus(std::exception_ptr error);

// Runs `fn` and returns OK, or the Status of what it threw.
template <typename Fn>
absl::Status CallGloo(Fn&& fn) noexcept {
  try {
    std::forward<Fn>(fn)();
    return absl::OkStatus();
  } catch (...) {
    return GlooExceptionToStatus(std::current_exception());
  }
}

}  // namespace mimo::comm
