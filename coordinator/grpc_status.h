// Converts absl::Status and spec violations to grpc::Status, once, at the service edge.
#pragma once

#include <grpcpp/support/status.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/spec_validation.h"

namespace mimo::coordinator {

// Same code and message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// INVALID_ARGUMENT whose details (grpc-status-details-bin) are a google.rpc.Status carrying a
// google.rpc.BadRequest with one field violation per entry; the message is `message`.
grpc::Status BadRequestStatus(const std::string& message,
                              const std::vector<FieldViolation>& violations);
// BadRequestStatus of a job spec's violations, described by DescribeViolations.
grpc::Status InvalidSpecStatus(const std::vector<FieldViolation>& violations);

}  // namespace mimo::coordinator
