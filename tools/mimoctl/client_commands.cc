// mimoctl's job commands (submit, get, list, cancel, checkpoint, events, watch, logs, validate):
// calls to JobService.
#include "tools/mimoctl/client_commands.h"

#include <grpcpp/grpcpp.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "coordinator/message_limits.h"
#include "mimo/v1/job_service.grpc.pb.h"
#include "parallel/module_parallelism.h"
#include "tools/mimoctl/flag_checks.h"
#include "tools/mimoctl/output_format.h"
#include "tools/mimoctl/spec_file.h"

namespace mimo::tools {
namespace {

using v1::JobService;

constexpr int kExitFailed = 1;       // The request failed, or the job did not succeed.
constexpr int kExitUnreachable = 3;  // No connection to the coordinator.

// ListJobs and ListJobEvents serve at most this many per page.
constexpr int kMaxPageSize = 1000;
// The largest response mimoctl accepts.
constexpr int kMaxResponseBytes = 256 << 20;
// --timeout's range: a millisecond (gRPC's deadline resolution) to a day.
constexpr double kMinTimeoutSeconds = 0.001;
constexpr double kMaxTimeoutSeconds = 86400;
// The largest value of an int32 request field (--limit, --tail, --attempt).
constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

enum class Output { kTable, kJson, kYaml };

// The flags every job command takes.
struct ClientOptions {
  std::string server = "localhost:50051";  // --server HOST:PORT, or $MIMO_SERVER.
  std::string token;                       // --token, or $MIMO_TOKEN: a bearer token.
  std::string tls_ca;                      // --tls-ca: root CA (PEM); empty for plaintext.
  double timeout_seconds = 30;             // --timeout: to connect, and per unary call.
  std::string output = "table";            // -o: table, json or yaml.
};

void AddClientOptions(CLI::App* command, ClientOptions* options) {
  CLI::Option_group* group = command->add_option_group("Connection and output");
  group->add_option("--server", options->server, "Coordinator address")
      ->type_name("HOST:PORT")
      ->envname("MIMO_SERVER")
      ->check(ServerAddress())
      ->capture_default_str();
  group
      ->add_option("--token", options->token,
                   "Bearer token, sent as 'authorization: Bearer TOKEN' metadata")
      ->type_name("TOKEN")
      ->envname("MIMO_TOKEN");
  group
      ->add_option("--tls-ca", options->tls_ca,
                   "Use TLS, trusting this root CA certificate (PEM); plaintext without it")
      ->check(CLI::ExistingFile);
  group
      ->add_option("--timeout", options->timeout_seconds,
                   "Seconds allowed to connect, and for each request (streams have no limit)")
      ->type_name("SECONDS")
      ->check(NumberIn(kMinTimeoutSeconds, kMaxTimeoutSeconds, "seconds"))
      ->capture_default_str();
  group->add_option("-o,--output", options->output, "Output format")
      ->type_name("FORMAT")
      // "-o=json", as kubectl takes it (CLI11 reads a short option's "=json" as the value).
      ->transform(CLI::Validator(
          [](std::string& value) {
            if (value.starts_with('=')) value.erase(0, 1);
            return std::string();
          },
          ""))
      ->check(CLI::IsMember({"table", "json", "yaml"}))
      ->capture_default_str();
  command->footer(
      "Exit codes: 0 success; 1 the request failed (or, for submit --wait and watch, the job did\n"
      "not succeed); 2 usage error; 3 the coordinator cannot be reached.");
}

Output ParseOutput(const std::string& name) {
  if (name == "json") return Output::kJson;
  if (name == "yaml") return Output::kYaml;
  return Output::kTable;
}

// Prints "error: <line>" per line of the message; returns kExitFailed.
int PrintError(const absl::Status& status) {
  for (absl::string_view line : absl::StrSplit(status.message(), '\n')) {
    std::cerr << "error: " << line << '\n';
  }
  return kExitFailed;
}

// Writes `text` to stdout, or its error to stderr; false on error, or when stdout fails.
bool Write(const absl::StatusOr<std::string>& text) {
  if (!text.ok()) {
    PrintError(text.status());
    return false;
  }
  std::cout << *text << std::flush;
  if (!std::cout) {
    std::cerr << "error: cannot write to stdout\n";
    return false;
  }
  return true;
}

// One stream update in json or yaml: a JSON line, or a YAML document after "---".
absl::StatusOr<std::string> RenderUpdate(Output output, const google::protobuf::Message& message) {
  if (output == Output::kJson) return ToJson(message, JsonStyle::kOneLine);
  absl::StatusOr<std::string> yaml = ToYaml(message);
  if (!yaml.ok()) return yaml.status();
  return absl::StrCat("---\n", *yaml);
}

// Prints a single result: `table()` in table format, else `message` as indented JSON or as YAML.
int PrintResult(Output output, const google::protobuf::Message& message,
                const std::function<std::string()>& table) {
  bool written = false;
  switch (output) {
    case Output::kTable:
      written = Write(table());
      break;
    case Output::kJson:
      written = Write(ToJson(message, JsonStyle::kIndented));
      break;
    case Output::kYaml:
      written = Write(ToYaml(message));
      break;
  }
  return written ? 0 : kExitFailed;
}

// Refuses a request larger than the coordinator receives (kMaxRequestBytes), which gRPC would
// only report after sending it all as "Received message larger than max".
absl::Status CheckRequestSize(const google::protobuf::Message& request,
                              const std::string& spec_path) {
  const size_t bytes = request.ByteSizeLong();
  if (bytes <= static_cast<size_t>(coordinator::kMaxRequestBytes)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(spec_path, ": the spec makes a request of ", bytes,
                                                 " bytes; the coordinator accepts at most ",
                                                 coordinator::kMaxRequestBytes, " bytes (",
                                                 coordinator::kMaxRequestBytes >> 20, " MiB)"));
}

// A UUIDv4 from the kernel's random source.
absl::StatusOr<std::string> NewRequestId() {
  std::array<uint8_t, 16> bytes;
  size_t filled = 0;
  while (filled < bytes.size()) {
    const ssize_t n = getrandom(bytes.data() + filled, bytes.size() - filled, 0);
    if (n < 0 && errno != EINTR) {
      return absl::InternalError(
          absl::StrCat("cannot make a request id: getrandom: ", std::strerror(errno)));
    }
    if (n > 0) filled += static_cast<size_t>(n);
  }
  return FormatUuidV4(bytes);
}

// The channel to the coordinator: TLS trusting --tls-ca when given, else plaintext. Channels for
// streaming calls send keepalive pings, so that a dead connection is noticed while a watch or a
// followed log waits for the next message.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateCoordinatorChannel(
    const ClientOptions& options, bool streaming) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls_ca.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    std::ifstream in(options.tls_ca, std::ios::binary);
    std::ostringstream pem;
    pem << in.rdbuf();
    if (!in || pem.str().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read the CA certificate ", options.tls_ca));
    }
    // gRPC would log its own errors and fail the connection as "empty address list".
    if (!absl::StrContains(pem.str(), "-----BEGIN CERTIFICATE-----")) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-ca ", options.tls_ca,
                       " holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line)"));
    }
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = pem.str();
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  // ValidateJob's plan of a 65536-rank job is a few MB, over gRPC's default 4 MB limit.
  args.SetMaxReceiveMessageSize(kMaxResponseBytes);
  if (streaming) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  }
  return grpc::CreateCustomChannel(options.server, credentials, args);
}

// One command's connection to the coordinator.
class Coordinator {
 public:
  // `streaming`: the command makes a streaming call (see CreateCoordinatorChannel).
  Coordinator(const ClientOptions& options, bool streaming)
      : options_(options), streaming_(streaming) {}

  Output output() const { return ParseOutput(options_.output); }
  JobService::Stub& stub() { return *stub_; }

  // Creates the channel and waits up to --timeout for it to connect or to fail to (a failed
  // connection is then reported by the call, with gRPC's reason). Returns 0, or, after printing
  // the error, kExitFailed when --tls-ca cannot be read and kExitUnreachable when the connection
  // neither came up nor failed in time.
  int Start() {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        CreateCoordinatorChannel(options_, streaming_);
    if (!channel.ok()) return PrintError(channel.status());
    channel_ = *std::move(channel);
    stub_ = JobService::NewStub(channel_);
    const auto deadline = Deadline();
    grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/true);
    while (state != GRPC_CHANNEL_READY && state != GRPC_CHANNEL_TRANSIENT_FAILURE) {
      if (!channel_->WaitForStateChange(state, deadline)) {
        std::cerr << "error: cannot reach the coordinator at " << options_.server
                  << ": no connection within " << options_.timeout_seconds << "s\n";
        return kExitUnreachable;
      }
      state = channel_->GetState(/*try_to_connect=*/true);
    }
    connected_ = state == GRPC_CHANNEL_READY;
    return 0;
  }

  // True when Start found the connection up.
  bool connected() const { return connected_; }

  // Sets up a call: the bearer token, and for unary calls the deadline (streams have none).
  void Prepare(grpc::ClientContext* context, bool unary) const {
    if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
    if (unary) context->set_deadline(Deadline());
  }

  // Makes a unary call; running out of --timeout reads "no answer from the coordinator ...".
  template <typename Request, typename Response>
  grpc::Status Call(grpc::Status (JobService::Stub::*method)(grpc::ClientContext*, const Request&,
                                                             Response*),
                    const Request& request, Response* response) {
    grpc::ClientContext context;
    Prepare(&context, /*unary=*/true);
    const grpc::Status status = (stub_.get()->*method)(&context, request, response);
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
        std::chrono::system_clock::now() >= context.deadline()) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          absl::StrCat("no answer from the coordinator at ", options_.server,
                                       " within ", options_.timeout_seconds, "s"));
    }
    return status;
  }

  // Prints a failed call's error to stderr and returns the exit code: kExitUnreachable for
  // UNAVAILABLE, kExitFailed otherwise. `streamed`: the call had received messages.
  int Fail(const grpc::Status& status, bool streamed) const {
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      std::cerr << "error: " << (streamed ? "lost the connection to" : "cannot reach")
                << " the coordinator at " << options_.server << ": " << status.error_message()
                << '\n';
      // What a coordinator serving TLS does to a plaintext connection.
      if (!streamed && options_.tls_ca.empty() &&
          absl::StrContains(status.error_message(), "Socket closed")) {
        std::cerr << "note: the coordinator closed the connection; if it serves TLS, pass "
                     "--tls-ca with its CA certificate\n";
      }
      return kExitUnreachable;
    }
    for (const std::string& line : FormatRpcError(status)) std::cerr << line << '\n';
    return kExitFailed;
  }

 private:
  std::chrono::system_clock::time_point Deadline() const {
    return std::chrono::system_clock::now() +
           std::chrono::duration_cast<std::chrono::system_clock::duration>(
               std::chrono::duration<double>(options_.timeout_seconds));
  }

  ClientOptions options_;
  bool streaming_;
  bool connected_ = false;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<JobService::Stub> stub_;
};

// Prints how a finished job ended; returns 0 when it succeeded, kExitFailed otherwise.
int ReportJobEnd(const v1::Job& job, Output output) {
  if (job.state() == v1::JOB_STATE_SUCCEEDED) {
    if (output == Output::kTable) std::cout << FormatJobEnd(job) << '\n' << std::flush;
    return 0;
  }
  std::cerr << "error: " << FormatJobEnd(job) << '\n';
  return kExitFailed;
}

// Follows WatchJob until the job finishes, printing every update: in table format a progress
// line (redrawn in place on a terminal, else one line per update), otherwise the
// WatchJobResponse as a JSON line or a YAML document. Returns as ReportJobEnd, or the error.
int FollowJob(Coordinator& coordinator, const std::string& job_id) {
  grpc::ClientContext context;
  coordinator.Prepare(&context, /*unary=*/false);
  v1::WatchJobRequest request;
  request.set_job_id(job_id);
  const std::unique_ptr<grpc::ClientReader<v1::WatchJobResponse>> reader =
      coordinator.stub().WatchJob(&context, request);
  const Output output = coordinator.output();
  const bool redraw = output == Output::kTable && isatty(STDOUT_FILENO);
  v1::WatchJobResponse response;
  bool received = false;
  bool written = true;
  while (reader->Read(&response)) {
    received = true;
    if (output == Output::kTable) {
      const std::string line = FormatProgressLine(response.job());
      written = Write(redraw ? absl::StrCat("\r", line, "\x1b[K") : absl::StrCat(line, "\n"));
    } else {
      written = Write(RenderUpdate(output, response));
    }
    if (!written || IsFinished(response.job().state())) break;
  }
  if (redraw && received) std::cout << '\n' << std::flush;
  const bool finished = received && IsFinished(response.job().state());
  // The coordinator ends the stream after the last state; there is no need to wait for that.
  if (finished || !written) context.TryCancel();
  const grpc::Status status = reader->Finish();
  if (!written) return kExitFailed;
  if (finished) return ReportJobEnd(response.job(), output);
  if (!status.ok()) return coordinator.Fail(status, received);
  std::cerr << "error: the coordinator ended the watch before job " << job_id << " finished\n";
  return kExitFailed;
}

struct SubmitOptions {
  ClientOptions client;
  std::string spec_path;
  std::string request_id;
  bool wait = false;
};

int RunSubmit(const SubmitOptions& options) {
  absl::StatusOr<v1::JobSpec> spec = ReadJobSpecFile(options.spec_path);
  if (!spec.ok()) return PrintError(spec.status());
  v1::SubmitJobRequest request;
  *request.mutable_spec() = *std::move(spec);
  if (options.request_id.empty()) {
    absl::StatusOr<std::string> id = NewRequestId();
    if (!id.ok()) return PrintError(id.status());
    request.set_request_id(*id);
  } else {
    request.set_request_id(options.request_id);
  }
  if (absl::Status size = CheckRequestSize(request, options.spec_path); !size.ok()) {
    return PrintError(size);
  }
  Coordinator coordinator(options.client, /*streaming=*/options.wait);
  if (const int code = coordinator.Start()) return code;
  v1::SubmitJobResponse response;
  const grpc::Status status = coordinator.Call(&JobService::Stub::SubmitJob, request, &response);
  if (!status.ok()) {
    const int code = coordinator.Fail(status, /*streamed=*/false);
    if (coordinator.connected() && (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                                    status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)) {
      std::cerr << "note: the job may have been created; submitting again with --request-id "
                << request.request_id() << " does not create a second one\n";
    }
    return code;
  }
  const v1::Job& job = response.job();
  if (const int code =
          PrintResult(coordinator.output(), job, [&] { return FormatJob(job, absl::Now()); })) {
    return code;
  }
  return options.wait ? FollowJob(coordinator, job.id()) : 0;
}

void AddSubmitCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<SubmitOptions>();
  CLI::App* command =
      app.add_subcommand("submit", "Submit a job from a YAML or JSON spec file and print it");
  command->add_option("SPEC", options->spec_path, "Job spec: a .yaml, .yml or .json file")
      ->required()
      ->check(CLI::ExistingFile);
  command
      ->add_option("--request-id", options->request_id,
                   "Idempotency key (default: a random UUID); submitting again with the same key "
                   "returns the job the first submission created")
      ->type_name("ID");
  command->add_flag("--wait", options->wait,
                    "Then follow the job as `watch` does; exit 0 only if it succeeds");
  AddClientOptions(command, &options->client);
  command->callback([options, exit_code] { *exit_code = RunSubmit(*options); });
}

struct JobOptions {
  ClientOptions client;
  std::string job_id;
  std::string reason;  // cancel and checkpoint.
  bool stop = false;   // checkpoint only.
};

int RunGet(const JobOptions& options) {
  Coordinator coordinator(options.client, /*streaming=*/false);
  if (const int code = coordinator.Start()) return code;
  v1::GetJobRequest request;
  request.set_job_id(options.job_id);
  v1::GetJobResponse response;
  const grpc::Status status = coordinator.Call(&JobService::Stub::GetJob, request, &response);
  if (!status.ok()) return coordinator.Fail(status, /*streamed=*/false);
  return PrintResult(coordinator.output(), response.job(),
                     [&] { return FormatJob(response.job(), absl::Now()); });
}

int RunCancel(const JobOptions& options) {
  Coordinator coordinator(options.client, /*streaming=*/false);
  if (const int code = coordinator.Start()) return code;
  v1::CancelJobRequest request;
  request.set_job_id(options.job_id);
  request.set_reason(options.reason);
  v1::CancelJobResponse response;
  const grpc::Status status = coordinator.Call(&JobService::Stub::CancelJob, request, &response);
  if (!status.ok()) return coordinator.Fail(status, /*streamed=*/false);
  return PrintResult(coordinator.output(), response.job(),
                     [&] { return FormatJob(response.job(), absl::Now()); });
}

int RunCheckpoint(const JobOptions& options) {
  Coordinator coordinator(options.client, /*streaming=*/false);
  if (const int code = coordinator.Start()) return code;
  v1::CheckpointJobRequest request;
  request.set_job_id(options.job_id);
  request.set_stop(options.stop);
  request.set_reason(options.reason);
  v1::CheckpointJobResponse response;
  const grpc::Status status =
      coordinator.Call(&JobService::Stub::CheckpointJob, request, &response);
  if (!status.ok()) return coordinator.Fail(status, /*streamed=*/false);
  return PrintResult(coordinator.output(), response.job(),
                     [&] { return FormatJob(response.job(), absl::Now()); });
}

// Pages through ListJobEvents: the whole history, as a table or one ListJobEventsResponse.
int RunEvents(const JobOptions& options) {
  Coordinator coordinator(options.client, /*streaming=*/false);
  if (const int code = coordinator.Start()) return code;
  v1::ListJobEventsRequest request;
  request.set_job_id(options.job_id);
  request.set_page_size(kMaxPageSize);
  v1::ListJobEventsResponse all;
  do {
    v1::ListJobEventsResponse page;
    const grpc::Status status = coordinator.Call(&JobService::Stub::ListJobEvents, request, &page);
    if (!status.ok()) return coordinator.Fail(status, /*streamed=*/false);
    for (v1::JobEvent& event : *page.mutable_events()) *all.add_events() = std::move(event);
    request.set_page_token(page.next_page_token());
  } while (!request.page_token().empty());
  return PrintResult(coordinator.output(), all, [&] { return FormatEventTable(all.events()); });
}

int RunWatch(const JobOptions& options) {
  Coordinator coordinator(options.client, /*streaming=*/true);
  if (const int code = coordinator.Start()) return code;
  return FollowJob(coordinator, options.job_id);
}

// Registers a command that takes JOB_ID and runs `run`.
CLI::App* AddJobCommand(CLI::App& app, int* exit_code, const std::string& name,
                        const std::string& description, int (*run)(const JobOptions&),
                        std::shared_ptr<JobOptions> options) {
  CLI::App* command = app.add_subcommand(name, description);
  command->add_option("JOB_ID", options->job_id, "Job id, e.g. j-20261123-000001")
      ->required()
      ->check(JobId());
  AddClientOptions(command, &options->client);
  command->callback([options, exit_code, run] { *exit_code = run(*options); });
  return command;
}

// The states `list --state` selects, named in lower case ("running"; any case is accepted).
constexpr std::array<v1::JobState, 7> kListStates = {
    v1::JOB_STATE_PENDING,   v1::JOB_STATE_SCHEDULED, v1::JOB_STATE_RUNNING,
    v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED,    v1::JOB_STATE_CANCELLING,
    v1::JOB_STATE_CANCELLED};

std::string StateFlagName(v1::JobState state) { return absl::AsciiStrToLower(JobStateName(state)); }

struct ListOptions {
  ClientOptions client;
  std::vector<std::string> states;  // StateFlagName of kListStates, in any case.
  int limit = 100;
  std::string page_token;
};

// Pages through ListJobs until `limit` jobs or the last page. Prints the job table (and, on
// stderr, how to get the next page when there is one), or a ListJobsResponse as JSON or YAML
// holding every job and the next page's token.
int RunList(const ListOptions& options) {
  Coordinator coordinator(options.client, /*streaming=*/false);
  if (const int code = coordinator.Start()) return code;
  v1::ListJobsRequest request;
  for (const std::string& name : options.states) {
    for (v1::JobState state : kListStates) {
      if (absl::EqualsIgnoreCase(name, StateFlagName(state))) request.add_states(state);
    }
  }
  request.set_page_token(options.page_token);
  v1::ListJobsResponse all;
  do {
    request.set_page_size(std::min(options.limit - all.jobs_size(), kMaxPageSize));
    v1::ListJobsResponse page;
    const grpc::Status status = coordinator.Call(&JobService::Stub::ListJobs, request, &page);
    if (!status.ok()) return coordinator.Fail(status, /*streamed=*/false);
    for (v1::Job& job : *page.mutable_jobs()) *all.add_jobs() = std::move(job);
    request.set_page_token(page.next_page_token());
  } while (!request.page_token().empty() && all.jobs_size() < options.limit);
  all.set_next_page_token(request.page_token());
  const Output output = coordinator.output();
  if (const int code =
          PrintResult(output, all, [&] { return FormatJobTable(all.jobs(), absl::Now()); })) {
    return code;
  }
  if (output == Output::kTable && !all.next_page_token().empty()) {
    // The same query from the next page on: the hint keeps the filters.
    std::string again = "mimoctl list";
    if (!options.states.empty()) {
      absl::StrAppend(&again, " --state ",
                      absl::AsciiStrToLower(absl::StrJoin(options.states, ",")));
    }
    if (options.limit != ListOptions().limit) absl::StrAppend(&again, " --limit ", options.limit);
    std::cerr << "more jobs: " << again << " --page-token " << all.next_page_token() << '\n';
  }
  return 0;
}

void AddListCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<ListOptions>();
  CLI::App* command = app.add_subcommand("list", "List jobs, newest first");
  std::vector<std::string> names;
  for (v1::JobState state : kListStates) names.push_back(StateFlagName(state));
  command
      ->add_option("--state", options->states,
                   "Only jobs in these states (repeat the flag, or separate with commas)")
      ->type_name("STATE")
      ->delimiter(',')
      ->check(CLI::IsMember(names, CLI::ignore_case));
  command->add_option("--limit", options->limit, "At most this many jobs")
      ->type_name("N")
      ->check(IntegerIn(1, kMaxInt32))
      ->capture_default_str();
  command
      ->add_option("--page-token", options->page_token,
                   "Start at this page (the token a previous list printed)")
      ->type_name("TOKEN");
  AddClientOptions(command, &options->client);
  command->callback([options, exit_code] { *exit_code = RunList(*options); });
}

struct LogsOptions {
  ClientOptions client;
  std::string job_id;
  bool follow = false;
  int rank = -1;  // -1: every rank.
  int tail = 0;   // 0: every line.
  int attempt = 0;
};

// One StreamLogsResponse: "[rank R] text" lines (just "text" with --rank) in table format,
// otherwise each LogLine as a JSON line or a YAML document.
absl::StatusOr<std::string> RenderLogLines(const v1::StreamLogsResponse& response, Output output,
                                           bool with_rank) {
  std::string text;
  for (const v1::LogLine& line : response.lines()) {
    if (output == Output::kTable) {
      absl::StrAppend(&text, FormatLogLine(line, with_rank), "\n");
      continue;
    }
    absl::StatusOr<std::string> rendered = RenderUpdate(output, line);
    if (!rendered.ok()) return rendered.status();
    text += *rendered;
  }
  return text;
}

int RunLogs(const LogsOptions& options) {
  Coordinator coordinator(options.client, /*streaming=*/true);
  if (const int code = coordinator.Start()) return code;
  v1::StreamLogsRequest request;
  request.set_job_id(options.job_id);
  if (options.rank >= 0) request.set_rank(options.rank);
  request.set_tail_lines(options.tail);
  request.set_follow(options.follow);
  request.set_attempt(options.attempt);
  grpc::ClientContext context;
  coordinator.Prepare(&context, /*unary=*/false);
  const std::unique_ptr<grpc::ClientReader<v1::StreamLogsResponse>> reader =
      coordinator.stub().StreamLogs(&context, request);
  v1::StreamLogsResponse response;
  bool received = false;
  bool written = true;
  int attempt = 0;  // Of the line printed last.
  while (written && reader->Read(&response)) {
    received = true;
    // Followed through a restart, the lines go on with the next attempt's (and the failed one's
    // last lines, which may come after): each change of attempt is said on stderr, the log on
    // stdout being the workers' lines alone.
    for (int from = 0; written && from < response.lines_size();) {
      const int now = response.lines(from).attempt();
      int to = from + 1;
      while (to < response.lines_size() && response.lines(to).attempt() == now) ++to;
      if (attempt != 0 && now != attempt) {
        std::cout.flush();
        std::cerr << "logs: job " << options.job_id << ": attempt " << now << "'s lines\n";
      }
      attempt = now;
      v1::StreamLogsResponse run;
      for (int i = from; i < to; ++i) *run.add_lines() = response.lines(i);
      written = Write(RenderLogLines(run, coordinator.output(), options.rank < 0));
      from = to;
    }
  }
  if (!written) context.TryCancel();
  const grpc::Status status = reader->Finish();
  if (!written) return kExitFailed;
  return status.ok() ? 0 : coordinator.Fail(status, received);
}

void AddLogsCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<LogsOptions>();
  CLI::App* command = app.add_subcommand("logs", "Print a job's logs as \"[rank R] text\" lines");
  command->add_option("JOB_ID", options->job_id, "Job id, e.g. j-20261123-000001")
      ->required()
      ->check(JobId());
  command->add_flag("-f,--follow", options->follow,
                    "Keep printing new lines until the job ends; without --attempt, through "
                    "restarts: each new attempt's lines in turn");
  command->add_option("--rank", options->rank, "Only this rank's lines, printed without the prefix")
      ->type_name("R")
      ->check(IntegerIn(0, parallel::kMaxWorldSize - 1));
  command->add_option("--tail", options->tail, "Start with the last N lines (0: all)")
      ->type_name("N")
      ->check(IntegerIn(0, kMaxInt32))
      ->capture_default_str();
  command->add_option("--attempt", options->attempt, "Lines of this attempt (0: the latest)")
      ->type_name("A")
      ->check(IntegerIn(0, kMaxInt32))
      ->capture_default_str();
  AddClientOptions(command, &options->client);
  command->callback([options, exit_code] { *exit_code = RunLogs(*options); });
}

struct ValidateOptions {
  ClientOptions client;
  std::string spec_path;
};

int RunValidate(const ValidateOptions& options) {
  absl::StatusOr<v1::JobSpec> spec = ReadJobSpecFile(options.spec_path);
  if (!spec.ok()) return PrintError(spec.status());
  v1::ValidateJobRequest request;
  *request.mutable_spec() = *std::move(spec);
  if (absl::Status size = CheckRequestSize(request, options.spec_path); !size.ok()) {
    return PrintError(size);
  }
  Coordinator coordinator(options.client, /*streaming=*/false);
  if (const int code = coordinator.Start()) return code;
  v1::ValidateJobResponse response;
  const grpc::Status status = coordinator.Call(&JobService::Stub::ValidateJob, request, &response);
  if (!status.ok()) return coordinator.Fail(status, /*streamed=*/false);
  return PrintResult(coordinator.output(), response.plan(),
                     [&] { return FormatRankPlanTable(response.plan()); });
}

void AddValidateCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<ValidateOptions>();
  CLI::App* command = app.add_subcommand(
      "validate", "Check a spec with the coordinator and print its rank plan (creates no job)");
  command->add_option("SPEC", options->spec_path, "Job spec: a .yaml, .yml or .json file")
      ->required()
      ->check(CLI::ExistingFile);
  AddClientOptions(command, &options->client);
  command->callback([options, exit_code] { *exit_code = RunValidate(*options); });
}

}  // namespace

void AddClientCommands(CLI::App& app, int* exit_code) {
  AddSubmitCommand(app, exit_code);
  AddJobCommand(app, exit_code, "get", "Print a job, with why it is in its state", RunGet,
                std::make_shared<JobOptions>());
  AddListCommand(app, exit_code);
  auto cancel = std::make_shared<JobOptions>();
  AddJobCommand(app, exit_code, "cancel", "Cancel a job and print it", RunCancel, cancel)
      ->add_option("--reason", cancel->reason, "Why; recorded as the job's state reason")
      ->type_name("TEXT");
  auto checkpoint = std::make_shared<JobOptions>();
  CLI::App* save =
      AddJobCommand(app, exit_code, "checkpoint",
                    "Ask a running job to save a checkpoint after its next step, and print it",
                    RunCheckpoint, checkpoint);
  save->add_flag("--stop", checkpoint->stop,
                 "Then end the job (CANCELLED) once the checkpoint is committed; submitting the "
                 "spec again resumes from it");
  save->add_option("--reason", checkpoint->reason,
                   "Why; recorded in the job's events (and, with --stop, its state reason)")
      ->type_name("TEXT");
  AddJobCommand(app, exit_code, "events",
                "Print a job's history: every state change with its reason, and metrics reports",
                RunEvents, std::make_shared<JobOptions>());
  AddJobCommand(app, exit_code, "watch",
                "Follow a job's progress until it finishes; exit 0 only if it succeeds", RunWatch,
                std::make_shared<JobOptions>());
  AddLogsCommand(app, exit_code);
  AddValidateCommand(app, exit_code);
}

}  // namespace mimo::tools
