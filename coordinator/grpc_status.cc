// Converts absl::Status and spec violations to grpc::Status, once, at the service edge.
#include "coordinator/grpc_status.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "google/rpc/code.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace mimo::coordinator {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

grpc::Status InvalidSpecStatus(const std::vector<FieldViolation>& violations) {
  return BadRequestStatus(DescribeViolations(violations), violations);
}

grpc::Status BadRequestStatus(const std::string& message,
                              const std::vector<FieldViolation>& violations) {
  google::rpc::BadRequest bad_request;
  for (const FieldViolation& v : violations) {
    google::rpc::BadRequest::FieldViolation* fv = bad_request.add_field_violations();
    fv->set_field(v.field);
    fv->set_description(v.description);
  }
  google::rpc::Status rpc_status;
  rpc_status.set_code(google::rpc::INVALID_ARGUMENT);
  rpc_status.set_message(message);
  rpc_status.add_details()->PackFrom(bad_request);
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message, rpc_status.SerializeAsString());
}

}  // namespace mimo::coordinator
