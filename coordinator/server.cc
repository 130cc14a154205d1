// mimo-coordinator's server: the gRPC services, health and reflection, metrics, the tick thread,
// and graceful shutdown.
#include "coordinator/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/message_limits.h"

namespace mimo::coordinator {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// TLS credentials from the files `o` names (both or neither, as CheckServerOptions checked).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerOptions& o) {
  if (o.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  MIMO_ASSIGN_OR_RETURN(pair.private_key, ReadFile(o.tls_key_file));
  MIMO_ASSIGN_OR_RETURN(pair.cert_chain, ReadFile(o.tls_cert_file));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

absl::Status CheckDatabasePath(const std::string& path) {
  if (path.empty()) {
    return absl::InvalidArgumentError(
        "the database path is empty; give a file, e.g. mimo-coordinator.db");
  }
  std::error_code error;
  if (path.back() == '/' || std::filesystem::is_directory(path, error)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "' is a folder; give a file, e.g. ",
                     (std::filesystem::path(path) / "mimo-coordinator.db").string()));
  }
  return absl::OkStatus();
}

absl::Status CheckServerOptions(const ServerOptions& options) {
  MIMO_RETURN_IF_ERROR(CheckDatabasePath(options.db_path));
  MIMO_RETURN_IF_ERROR(CheckHostPort(options.listen, kListenRules));
  if (!options.metrics_listen.empty()) {
    MIMO_RETURN_IF_ERROR(CheckHostPort(options.metrics_listen, kMetricsListenRules));
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key");
  }
  if (options.local_workers.count > 0) {
    if (!options.tls_cert_file.empty()) {
      return absl::InvalidArgumentError(
          "local workers reach the coordinator over loopback without TLS; with TLS, start "
          "workers separately (mimo-worker --coordinator HOST:PORT --tls-ca CA)");
    }
    MIMO_RETURN_IF_ERROR(LocalWorkers::CheckOptions(options.local_workers));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const ServerOptions& options) {
  MIMO_RETURN_IF_ERROR(CheckServerOptions(options));
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  s->options_ = options;
  MIMO_ASSIGN_OR_RETURN(auto credentials, Credentials(options));
  MIMO_ASSIGN_OR_RETURN(s->database_lock_, DatabaseLock::Acquire(options.db_path));
  MIMO_ASSIGN_OR_RETURN(s->store_, JobStore::Open({.path = options.db_path,
                                                   .busy_timeout = options.db_busy_timeout}));
  LocalWorkersOptions local = options.local_workers;
  if (local.count > 0 && local.host.empty()) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    local.host = host;
  }
  JobManager::Options manager_options = options.manager;
  if (local.count > 0) {
    // Only these slots may register (see JobManager::Options::embedded).
    manager_options.embedded = {.count = local.count, .host = local.host, .device = local.device};
  }
  s->manager_ = std::make_unique<JobManager>(s->store_.get(), manager_options);
  MIMO_RETURN_IF_ERROR(s->manager_->Recover(absl::Now()));
  if (!options.metrics_listen.empty()) {
    MIMO_ASSIGN_OR_RETURN(s->metrics_, CoordinatorMetrics::Serve(options.metrics_listen));
  }
  const ServiceContext ctx{
      .manager = s->manager_.get(), .metrics = s->metrics_.get(), .auth_token = options.auth_token};
  s->job_service_ = std::make_unique<JobServiceImpl>(ctx);
  s->worker_service_ = std::make_unique<WorkerServiceImpl>(ctx);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &s->port_);
  builder.RegisterService(s->job_service_.get());
  builder.RegisterService(s->worker_service_.get());
  // A second coordinator on a busy port must fail, not silently share its traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // The largest request received (gRPC's default); mimoctl checks its requests against it first.
  builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
  // Keepalive: ping idle connections (long watches and log follows) and accept client pings.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    s->server_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen, " (address in use or invalid)"));
  }
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  s->ticker_ = std::thread([server = s.get()] { server->TickLoop(); });
  if (options.local_workers.count > 0) {
    local.coordinator_address = absl::StrCat("127.0.0.1:", s->port_);
    MIMO_ASSIGN_OR_RETURN(s->local_workers_, LocalWorkers::Start(local, s->manager_.get()));
  }
  return s;
}

void CoordinatorServer::TickLoop() {
  absl::MutexLock lock(&mu_);
  while (!mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.tick_interval)) {
    mu_.Unlock();
    manager_->Tick(absl::Now());
    if (metrics_) {
      if (auto counts = store_->CountByState(); counts.ok()) metrics_->SetJobCounts(*counts);
      metrics_->SetWorkers(manager_->num_workers());
      if (auto running = store_->ListJobs(1000, "", {v1::JOB_STATE_RUNNING}); running.ok()) {
        metrics_->SetRunningJobs(running->jobs);
      }
    }
    mu_.Lock();
  }
}

void CoordinatorServer::Shutdown() {
  if (stopped_ || server_ == nullptr) return;  // Stopped, or never started.
  stopped_ = true;
  server_->GetHealthCheckService()->SetServingStatus(false);
  // The embedded workers drain while the server still answers: a training job saves a
  // checkpoint and ends as a preemption; other stops fail no job (the next start's Recover
  // decides what becomes of them).
  if (local_workers_) {
    manager_->BeginDrain();
    local_workers_->Stop();
  }
  manager_->Shutdown();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + options_.shutdown_grace));
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  ticker_.join();
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

}  // namespace mimo::coordinator
