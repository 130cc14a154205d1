// The worker's client of the coordinator's WorkerService: registration, heartbeats, assignments,
// status, metrics, logs and the rendezvous store, with every gRPC error turned into a Status.
#include "worker/coordinator_client.h"

#include <sys/sysinfo.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "google/protobuf/util/time_util.h"
#include "worker/device_info.h"

namespace mimo::worker {
namespace {

using google::protobuf::util::TimeUtil;

google::protobuf::Duration ToProto(absl::Duration d) {
  return TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

// Long polls get this much longer than the wait they ask for, so that the server's own answer
// at the end of the wait (an empty assignment, DEADLINE_EXCEEDED naming missing keys) arrives
// before the client gives up on the call.
constexpr absl::Duration kLongPollMargin = absl::Seconds(5);

// The "model name" of the first CPU in /proc/cpuinfo, or "cpu".
std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "model name")) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      }
    }
  }
  return "cpu";
}

// Registers a call with `canceller` for its lifetime.
class CancelScope {
 public:
  CancelScope(CallCanceller* canceller, grpc::ClientContext* context)
      : canceller_(canceller), context_(context) {
    registered_ = canceller_ == nullptr || canceller_->Add(context_);
  }
  ~CancelScope() {
    if (canceller_ != nullptr && registered_) canceller_->Remove(context_);
  }
  // False when the canceller was cancelled before the call began: do not start it.
  bool ok() const { return registered_; }

 private:
  CallCanceller* canceller_;
  grpc::ClientContext* context_;
  bool registered_ = false;
};

absl::Status CancelledBeforeStart(absl::string_view call) {
  return absl::CancelledError(absl::StrCat(call, ": cancelled"));
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view call) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(call, ": ", status.error_message()));
}

absl::StatusOr<v1::WorkerInfo> LocalWorkerInfo(const std::string& host, int local_index,
                                               v1::DeviceKind device) {
  v1::WorkerInfo info;
  if (host.empty()) {
    char name[256] = {};
    gethostname(name, sizeof(name) - 1);
    info.set_host(name[0] != '\0' ? name : "localhost");
  } else {
    info.set_host(host);
  }
  info.set_local_index(local_index);
  info.set_device(device);
  info.set_pid(static_cast<int32_t>(getpid()));
  if (device == v1::DEVICE_KIND_CUDA) {
    MIMO_RETURN_IF_ERROR(DescribeCudaDevice(local_index, &info));
  } else {
    info.set_device_name(CpuModel());
    struct sysinfo si = {};
    if (sysinfo(&si) == 0) {
      info.set_total_memory_bytes(static_cast<int64_t>(si.totalram) * si.mem_unit);
      info.set_free_memory_bytes(static_cast<int64_t>(si.freeram) * si.mem_unit);
    }
  }
  return info;
}

absl::StatusOr<std::unique_ptr<CoordinatorClient>> CoordinatorClient::Create(
    const CoordinatorClientOptions& options) {
  if (options.address.empty()) {
    return absl::InvalidArgumentError("the coordinator address is empty");
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls_ca_file.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    std::ifstream in(options.tls_ca_file, std::ios::binary);
    std::ostringstream pem;
    pem << in.rdbuf();
    if (!in || pem.str().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read the CA certificate ", options.tls_ca_file));
    }
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = pem.str();
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  // An assignment carries every group of the rank and every module's layout: a few MB for the
  // largest worlds, above gRPC's 4 MB default.
  args.SetMaxReceiveMessageSize(256 << 20);
  // gRPC's reconnect backoff grows to 2 minutes by default; a worker must notice a restarted
  // coordinator well within the heartbeat timeout to re-register and keep its job.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  auto channel = grpc::CreateCustomChannel(options.address, credentials, args);
  return std::unique_ptr<CoordinatorClient>(new CoordinatorClient(options, std::move(channel)));
}

CoordinatorClient::CoordinatorClient(CoordinatorClientOptions options,
                                     std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::WorkerService::NewStub(channel_)) {}

std::unique_ptr<grpc::ClientContext> CoordinatorClient::NewContext(absl::Duration timeout) const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!options_.token.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
  }
  return context;
}

absl::Status CoordinatorClient::WaitForConnection(absl::Duration timeout) {
  if (channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + timeout))) {
    return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat("cannot reach the coordinator at ", options_.address,
                                             ": no connection within ",
                                             absl::FormatDuration(timeout)));
}

absl::StatusOr<v1::RegisterWorkerResponse> CoordinatorClient::Register(
    const v1::WorkerInfo& info, const v1::RunningAssignment& resume) {
  v1::RegisterWorkerRequest request;
  *request.mutable_worker() = info;
  if (!resume.job_id().empty()) *request.mutable_resume() = resume;
  v1::RegisterWorkerResponse response;
  auto context = NewContext(options_.call_timeout);
  const grpc::Status status = stub_->RegisterWorker(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "RegisterWorker");
  return response;
}

absl::StatusOr<v1::HeartbeatResponse> CoordinatorClient::Heartbeat(const std::string& worker_id,
                                                                   absl::Duration timeout,
                                                                   bool leaving) {
  v1::HeartbeatRequest request;
  request.set_worker_id(worker_id);
  request.set_leaving(leaving);
  v1::HeartbeatResponse response;
  auto context = NewContext(timeout);
  const grpc::Status status = stub_->Heartbeat(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "Heartbeat");
  return response;
}

absl::StatusOr<std::optional<v1::Assignment>> CoordinatorClient::WaitAssignment(
    const std::string& worker_id, absl::Duration wait, CallCanceller* canceller) {
  v1::GetAssignmentRequest request;
  request.set_worker_id(worker_id);
  *request.mutable_wait() = ToProto(wait);
  v1::GetAssignmentResponse response;
  auto context = NewContext(wait + kLongPollMargin);
  CancelScope scope(canceller, context.get());
  if (!scope.ok()) return CancelledBeforeStart("GetAssignment");
  const grpc::Status status = stub_->GetAssignment(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "GetAssignment");
  if (!response.has_assignment()) return std::nullopt;
  return std::move(*response.mutable_assignment());
}

absl::Status CoordinatorClient::ReportStatus(const v1::ReportStatusRequest& request) {
  v1::ReportStatusResponse response;
  auto context = NewContext(options_.call_timeout);
  return FromGrpcStatus(stub_->ReportStatus(context.get(), request, &response), "ReportStatus");
}

absl::Status CoordinatorClient::ReportMetrics(const v1::ReportMetricsRequest& request) {
  v1::ReportMetricsResponse response;
  auto context = NewContext(options_.call_timeout);
  return FromGrpcStatus(stub_->ReportMetrics(context.get(), request, &response), "ReportMetrics");
}

absl::Status CoordinatorClient::ReportLogs(const v1::ReportLogsRequest& request) {
  v1::ReportLogsResponse response;
  auto context = NewContext(options_.call_timeout);
  std::unique_ptr<grpc::ClientWriter<v1::ReportLogsRequest>> writer =
      stub_->ReportLogs(context.get(), &response);
  // A failed write ends the stream; Finish then says why.
  if (writer->Write(request)) writer->WritesDone();
  return FromGrpcStatus(writer->Finish(), "ReportLogs");
}

absl::Status CoordinatorClient::SetKey(const std::string& job_id, int attempt,
                                       const std::string& key, const std::string& value,
                                       CallCanceller* canceller) {
  v1::SetKeyRequest request;
  request.set_job_id(job_id);
  request.set_attempt(attempt);
  request.set_key(key);
  request.set_value(value);
  v1::SetKeyResponse response;
  auto context = NewContext(options_.call_timeout);
  CancelScope scope(canceller, context.get());
  if (!scope.ok()) return CancelledBeforeStart("SetKey");
  return FromGrpcStatus(stub_->SetKey(context.get(), request, &response), "SetKey");
}

absl::StatusOr<std::vector<std::string>> CoordinatorClient::WaitKeys(
    const std::string& job_id, int attempt, const std::vector<std::string>& keys,
    absl::Duration timeout, CallCanceller* canceller) {
  v1::WaitKeysRequest request;
  request.set_job_id(job_id);
  request.set_attempt(attempt);
  for (const std::string& key : keys) request.add_keys(key);
  *request.mutable_timeout() = ToProto(timeout);
  v1::WaitKeysResponse response;
  auto context = NewContext(timeout + kLongPollMargin);
  CancelScope scope(canceller, context.get());
  if (!scope.ok()) return CancelledBeforeStart("WaitKeys");
  const grpc::Status status = stub_->WaitKeys(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "WaitKeys");
  std::vector<std::string> values;
  values.reserve(keys.size());
  for (const std::string& key : keys) {
    auto it = response.values().find(key);
    if (it == response.values().end()) {
      return absl::InternalError(absl::StrCat("WaitKeys: the answer lacks key ", key));
    }
    values.push_back(it->second);
  }
  return values;
}

}  // namespace mimo::worker
