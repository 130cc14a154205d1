// Turns what a Gloo call throws into an absl::Status.
#include "comm/gloo_error.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gloo/common/error.h"
#include "gloo/common/logging.h"

namespace mimo::comm {

StatusException::StatusException(absl::Status status)
    : std::runtime_error(status.ToString()), status_(std::move(status)) {}

absl::Status GlooExceptionToStatus(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const StatusException& e) {
    return e.status();
  } catch (const gloo::IoException& e) {
    // Gloo reports every timeout as an IoException; its messages say "timeout" or "Timed out"
    // ("Timed out waiting 1000ms for recv operation to complete", "Connect timeout ...").
    const std::string lower = absl::AsciiStrToLower(e.what());
    if (absl::StrContains(lower, "timeout") || absl::StrContains(lower, "timed out")) {
      return absl::DeadlineExceededError(e.what());
    }
    return absl::UnavailableError(e.what());
  } catch (const gloo::EnforceNotMet& e) {
    return absl::InternalError(absl::StrCat("gloo check failed: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  } catch (...) {
    return absl::UnknownError("gloo threw a non-standard exception");
  }
}

}  // namespace mimo::comm
