// mimo-coordinator's server: the gRPC services, health and reflection, metrics, the tick thread,
// and graceful shutdown.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/host_port.h"
#include "coordinator/database_lock.h"
#include "coordinator/job_manager.h"
#include "coordinator/job_store.h"
#include "coordinator/local_workers.h"
#include "coordinator/metrics.h"
#include "coordinator/services.h"

namespace mimo::coordinator {

struct ServerOptions {
  // gRPC address; port 0 picks a free port (see CoordinatorServer::port()).
  std::string listen = "0.0.0.0:50051";
  // SQLite database holding every job.
  std::string db_path = "mimo-coordinator.db";
  // How long a write waits for another connection's lock on the database before it fails (and
  // is tried again later). Heartbeats wait behind it and count from their answer
  // (JobManager::Heartbeat).
  absl::Duration db_busy_timeout = JobStore::Options{}.busy_timeout;
  // Prometheus /metrics address (":PORT": every interface); empty disables the endpoint.
  std::string metrics_listen = "0.0.0.0:9464";
  // Non-empty: every JobService/WorkerService call needs "authorization: Bearer <token>".
  std::string auth_token;
  // PEM files; both set: TLS, both empty: plaintext.
  std::string tls_cert_file;
  std::string tls_key_file;
  // How long graceful shutdown waits for calls in flight before cancelling them.
  absl::Duration shutdown_grace = absl::Seconds(10);
  // How often JobManager::Tick runs.
  absl::Duration tick_interval = absl::Milliseconds(200);
  JobManager::Options manager;
  // Embedded mode: with count > 0, worker processes this coordinator starts on its own host and
  // supervises (their coordinator_address, and host when empty, are filled in by Start); no other
  // worker may register then. Count 0: workers are started by something else and register over
  // the network.
  LocalWorkersOptions local_workers;
};

// OK when `path` can name the database: not empty and not a folder (":memory:" is a database of
// the process alone). InvalidArgument saying what is wrong; nothing is created.
absl::Status CheckDatabasePath(const std::string& path);

// How --listen and --metrics-listen are read (CheckHostPort): port 0 is any free one; ":9464" is
// the metrics on every interface (gRPC takes no address without a host).
inline constexpr HostPortRules kListenRules = {.name = "the address",
                                               .example = "0.0.0.0:50051",
                                               .ipv6_example = "[::]:50051",
                                               .listen = true};
inline constexpr HostPortRules kMetricsListenRules = {.name = "the address",
                                                      .example = "0.0.0.0:9464",
                                                      .ipv6_example = "[::]:9464",
                                                      .listen = true,
                                                      .any_host = true};

// What Start checks before it touches anything (no file created, no port bound): the database
// path, the gRPC and (when set) metrics addresses, TLS files both or neither, and for local
// workers no TLS and LocalWorkers::CheckOptions (a worker binary that can run). InvalidArgument
// saying what is wrong.
absl::Status CheckServerOptions(const ServerOptions& options);

class CoordinatorServer {
 public:
  // Checks `options` (CheckServerOptions), opens the database, recovers unfinished jobs, and
  // starts serving.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(const ServerOptions& options);
  // Shuts down if still serving.
  ~CoordinatorServer();

  int port() const { return port_; }
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  // The embedded worker pool; null without local workers.
  LocalWorkers* local_workers() const { return local_workers_.get(); }

  // Health goes NOT_SERVING, local workers are stopped (they report while the server still
  // answers), streams end with UNAVAILABLE, calls in flight get `shutdown_grace`, then the tick
  // thread stops and the database closes. Idempotent.
  void Shutdown();

 private:
  CoordinatorServer() = default;
  void TickLoop();

  ServerOptions options_;
  std::unique_ptr<DatabaseLock> database_lock_;  // Before store_: released after it closes.
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<JobManager> manager_;
  std::unique_ptr<CoordinatorMetrics> metrics_;
  std::unique_ptr<JobServiceImpl> job_service_;
  std::unique_ptr<WorkerServiceImpl> worker_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<LocalWorkers> local_workers_;
  int port_ = 0;
  std::thread ticker_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ = false;
};

}  // namespace mimo::coordinator
