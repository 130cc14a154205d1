// The worker's client of the coordinator's WorkerService: registration, heartbeats, assignments,
// status, metrics, logs and the rendezvous store, with every gRPC error turned into a Status.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "mimo/v1/worker_service.grpc.pb.h"
#include "worker/call_canceller.h"

namespace mimo::worker {

struct CoordinatorClientOptions {
  // The coordinator's gRPC address, HOST:PORT.
  std::string address;
  // Bearer token sent as "authorization: Bearer <token>" with every call; empty sends none.
  std::string token;
  // Root CA certificate (PEM file) to trust for TLS; empty for plaintext.
  std::string tls_ca_file;
  // Deadline of each unary call; long polls get their wait on top.
  absl::Duration call_timeout = absl::Seconds(10);
};

// The gRPC status as an absl::Status with the same code, its message prefixed with the call
// ("Heartbeat: failed to connect to all addresses"). gRPC and absl share the code numbering.
absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view call);

// This process as a worker: `host` (empty: gethostname()), `local_index`, `device`, the pid,
// and the device's name, total and free memory (the CPU model and the machine's memory, or the
// GPU's). FailedPrecondition for a CUDA worker whose device this process cannot use.
absl::StatusOr<v1::WorkerInfo> LocalWorkerInfo(const std::string& host, int local_index,
                                               v1::DeviceKind device);

// Thread-safe: every method may be called from any thread.
class CoordinatorClient {
 public:
  // Creates the channel (it connects lazily); InvalidArgument when the CA file cannot be read.
  static absl::StatusOr<std::unique_ptr<CoordinatorClient>> Create(
      const CoordinatorClientOptions& options);

  const CoordinatorClientOptions& options() const { return options_; }

  // Waits up to `timeout` for the channel to connect; Unavailable naming the address if it does
  // not.
  absl::Status WaitForConnection(absl::Duration timeout);

  absl::StatusOr<v1::RegisterWorkerResponse> Register(const v1::WorkerInfo& info,
                                                      const v1::RunningAssignment& resume);
  // `timeout` bounds this call (heartbeats must not outlive the heartbeat timeout).
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const std::string& worker_id,
                                                  absl::Duration timeout, bool leaving = false);
  // Waits up to `wait` for an assignment; nullopt when none came. Cancelled through `canceller`.
  absl::StatusOr<std::optional<v1::Assignment>> WaitAssignment(const std::string& worker_id,
                                                               absl::Duration wait,
                                                               CallCanceller* canceller = nullptr);
  absl::Status ReportStatus(const v1::ReportStatusRequest& request);
  absl::Status ReportMetrics(const v1::ReportMetricsRequest& request);
  // Sends `request` as the one message of a ReportLogs stream.
  absl::Status ReportLogs(const v1::ReportLogsRequest& request);

  // The rendezvous store of one job attempt.
  absl::Status SetKey(const std::string& job_id, int attempt, const std::string& key,
                      const std::string& value, CallCanceller* canceller = nullptr);
  // Values of `keys` in the order asked, once all are set; DeadlineExceeded naming the missing
  // ones after `timeout`.
  absl::StatusOr<std::vector<std::string>> WaitKeys(const std::string& job_id, int attempt,
                                                    const std::vector<std::string>& keys,
                                                    absl::Duration timeout,
                                                    CallCanceller* canceller = nullptr);

 private:
  CoordinatorClient(CoordinatorClientOptions options, std::shared_ptr<grpc::Channel> channel);

  // A context with the token and a deadline `timeout` from now.
  std::unique_ptr<grpc::ClientContext> NewContext(absl::Duration timeout) const;

  const CoordinatorClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
};

}  // namespace mimo::worker
