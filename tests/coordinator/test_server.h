// A real coordinator on loopback with a fresh SQLite file, clients, and fake workers that speak
// WorkerService, for the coordinator's integration tests.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "coordinator/server.h"
#include "mimo/v1/job_service.grpc.pb.h"
#include "mimo/v1/worker_service.grpc.pb.h"

namespace mimo::coordinator::testing {

// A fresh database path under the test's temp dir.
inline std::string TempDbPath(const std::string& name) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/", name, "-", getpid(), "-",
                                        absl::ToUnixNanos(absl::Now()), ".db");
  std::remove(path.c_str());
  return path;
}

// Removes a database file and its WAL/SHM/journal companions.
inline void RemoveDb(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal", ".lock"}) {
    std::remove(absl::StrCat(path, suffix).c_str());
  }
}

// Fast timeouts so failure paths finish in well under a second.
inline ServerOptions FastOptions(const std::string& db_path) {
  ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.db_path = db_path;
  o.metrics_listen = "";
  o.tick_interval = absl::Milliseconds(20);
  o.shutdown_grace = absl::Seconds(2);
  o.manager.heartbeat_interval = absl::Milliseconds(50);
  o.manager.heartbeat_timeout = absl::Milliseconds(400);
  o.manager.reattach_grace = absl::Milliseconds(600);
  o.manager.cancel_grace = absl::Milliseconds(600);
  return o;
}

// The (field, description) pairs of a BadRequest carried in a status's details.
std::vector<std::pair<std::string, std::string>> FieldViolations(const grpc::Status& status);

// The example layout on 4 CPU workers: vision tp=2 on ranks 0-1, language dp=2 ep=2 on 2-3.
v1::JobSpec SmallSpec(const std::string& name = "small-job");

// Calls with the token when one is set.
std::unique_ptr<grpc::ClientContext> Context(const std::string& token = "",
                                             absl::Duration timeout = absl::Seconds(10));

// One registered fake worker: heartbeats on demand, reports whatever a test says.
class FakeWorker {
 public:
  FakeWorker(std::shared_ptr<grpc::Channel> channel, std::string host, int local_index,
             v1::DeviceKind device = v1::DEVICE_KIND_CPU, const v1::RunningAssignment& resume = {});
  const std::string& id() const { return id_; }
  // Waits up to `wait` for an assignment (unset if none).
  std::optional<v1::Assignment> Assignment(absl::Duration wait);
  v1::HeartbeatResponse::Command Heartbeat() { return Beat().command(); }
  // `leaving`: the worker says it exits now.
  v1::HeartbeatResponse Beat(bool leaving = false);
  grpc::Status Report(const v1::Assignment& a, v1::WorkerState state, int exit_code = 0,
                      const std::string& message = "", bool stopped_after_checkpoint = false,
                      bool leaving = false);
  grpc::Status Metrics(const v1::Assignment& a, int64_t step, double loss);
  grpc::Status Logs(const v1::Assignment& a, const std::vector<std::string>& lines);

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::string id_;
};

// Heartbeats workers from a thread of its own every `period` until destroyed, as live workers do
// while the test's thread waits on its calls (beating only between those calls left workers
// silent for as long as the calls took: past a 400 ms heartbeat timeout on a loaded machine).
// Each round sends every worker's heartbeat at once, so a round takes one call's time however
// many workers beat. It beats by worker id, over stubs of its own: it may outlive the
// FakeWorkers it beats, and be declared before them. Answers are not looked at (a worker the
// coordinator dropped hears COMMAND_REGISTER; a stopped server answers nothing): a test checks
// what it checks with calls of its own.
class BackgroundHeartbeats {
 public:
  explicit BackgroundHeartbeats(const std::vector<FakeWorker*>& workers = {},
                                absl::Duration period = absl::Milliseconds(20));
  ~BackgroundHeartbeats();
  BackgroundHeartbeats(const BackgroundHeartbeats&) = delete;
  BackgroundHeartbeats& operator=(const BackgroundHeartbeats&) = delete;

  void Add(const FakeWorker* worker);
  // Once it returns, `worker` is sent no more heartbeats from here: it is silent from then on.
  void Remove(const FakeWorker* worker);
  // Removes every worker. Before a test stops the server: a beat that finds it down puts the
  // connection, which every channel to that address shares, into a reconnect backoff (about 1 s),
  // and the restarted server would then hear from its workers only that much later.
  void Clear();

 private:
  struct Beating {
    std::string worker_id;
    std::unique_ptr<v1::WorkerService::Stub> stub;
  };
  void Run();
  void Round() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const absl::Duration period_;
  absl::Mutex mu_;  // Held through each round of heartbeats.
  std::vector<Beating> workers_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// The running server and a JobService client to it.
class CoordinatorFixture : public ::testing::Test {
 protected:
  // Stops the server and removes the database with its WAL files.
  void TearDown() override {
    server_.reset();
    RemoveDb(db_path_);
  }
  void StartServer(ServerOptions options);
  void StartServer() { StartServer(FastOptions(db_path_)); }
  void StopServer() { server_.reset(); }
  std::shared_ptr<grpc::Channel> Channel() const;

  v1::Job Submit(const v1::JobSpec& spec, const std::string& request_id = "");
  v1::Job Get(const std::string& id);
  // Polls until the job is in `state` or `timeout` passes; returns the last job seen. Workers
  // that must stay alive meanwhile beat from a BackgroundHeartbeats.
  v1::Job AwaitState(const std::string& id, v1::JobState state,
                     absl::Duration timeout = absl::Seconds(5));
  static std::vector<FakeWorker*> Ptrs(const std::vector<std::unique_ptr<FakeWorker>>& workers);
  // `n` fake CPU workers on host "h", devices 0..n-1.
  std::vector<std::unique_ptr<FakeWorker>> Workers(int n, const std::string& host = "h");
  // The same, each heartbeating from `beats` as soon as it has registered (registering them all
  // first left the first ones silent meanwhile: past the timeout on a loaded machine).
  std::vector<std::unique_ptr<FakeWorker>> Workers(int n, BackgroundHeartbeats& beats,
                                                   const std::string& host = "h");
  // Assignments of `workers` in rank order (fails the test if one is missing); they heartbeat
  // from a thread meanwhile.
  std::vector<v1::Assignment> Assignments(std::vector<std::unique_ptr<FakeWorker>>& workers);

  std::string db_path_ =
      TempDbPath(::testing::UnitTest::GetInstance()->current_test_info()->name());
  ServerOptions options_;
  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
};

}  // namespace mimo::coordinator::testing
