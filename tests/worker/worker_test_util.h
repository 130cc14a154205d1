// Helpers of the worker tests: selftest specs, Worker objects on threads, mimo-worker processes,
// a fake rank that holds a job in rendezvous, and reading a job's logs.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/coordinator/test_server.h"
#include "worker/worker.h"

namespace mimo::worker::testing {

using coordinator::testing::Context;
using coordinator::testing::FakeWorker;

// SmallSpec as a selftest: vision tp=2 on ranks 0-1, language dp=2 ep=2 on ranks 2-3.
inline v1::JobSpec SelftestSpec(const std::string& name = "selftest") {
  v1::JobSpec spec = coordinator::testing::SmallSpec(name);
  spec.set_kind(v1::JobSpec::KIND_SELFTEST);
  return spec;
}

// The example layout on 8 CPU workers (examples/selftest-cpu.yaml): vision tp=2 on ranks 0-1,
// audio dp=2 on ranks 2-3, language tp=2 dp=2 ep=2 on ranks 4-7.
inline v1::JobSpec ExampleSelftestSpec() {
  v1::JobSpec spec = SelftestSpec("selftest-cpu");
  spec.mutable_modules(0)->mutable_parallelism()->set_tp(2);
  spec.mutable_modules(0)->mutable_parallelism()->set_dp(1);
  v1::Module language = spec.modules(1);
  spec.mutable_modules()->RemoveLast();
  v1::Module* audio = spec.add_modules();
  audio->set_name("audio");
  audio->mutable_audio()->set_num_mel_bins(40);
  audio->mutable_audio()->set_frames_per_token(4);
  audio->mutable_audio()->set_max_frames(64);
  *audio->mutable_audio()->mutable_transformer() = spec.modules(0).vision().transformer();
  audio->mutable_audio()->mutable_projector()->set_kind(v1::Projector::KIND_LINEAR);
  audio->mutable_parallelism()->set_dp(2);
  audio->mutable_parallelism()->set_rank_offset(2);
  language.mutable_parallelism()->set_tp(2);
  language.mutable_parallelism()->set_dp(2);
  language.mutable_parallelism()->set_ep(2);
  language.mutable_parallelism()->set_rank_offset(4);
  *spec.add_modules() = language;
  spec.mutable_resources()->set_workers(8);
  return spec;
}

// Only the language module, dp = `workers` (ep=2 when that divides it): every rank shares the dp
// group, so one missing rank holds all the others in rendezvous.
inline v1::JobSpec LanguageOnlySpec(int workers, const std::string& name = "language-only") {
  v1::JobSpec spec = SelftestSpec(name);
  v1::Module language = spec.modules(1);
  spec.clear_modules();
  language.mutable_parallelism()->set_dp(workers);
  language.mutable_parallelism()->set_ep(workers % 2 == 0 ? 2 : 1);
  language.mutable_parallelism()->set_rank_offset(0);
  *spec.add_modules() = language;
  spec.mutable_resources()->set_workers(workers);
  return spec;
}

// Worker options for the in-process coordinator on `port`: host "h", slot `index`, loopback.
inline WorkerOptions TestWorkerOptions(int port, int index) {
  WorkerOptions o;
  o.coordinator.address = absl::StrCat("127.0.0.1:", port);
  o.coordinator.call_timeout = absl::Seconds(5);
  o.host = "h";
  o.local_index = index;
  o.listen_address = "127.0.0.1";
  o.connect_timeout = absl::Seconds(5);
  o.assignment_wait = absl::Seconds(1);
  o.comm_timeout = absl::Seconds(20);
  o.log.flush_interval = absl::Milliseconds(50);
  return o;
}

// A Worker running on its own thread; stopped and joined on destruction.
class WorkerThread {
 public:
  explicit WorkerThread(WorkerOptions options) : worker_(std::move(options)) {
    thread_ = std::thread([this] {
      result_ = worker_.Run();
      done_ = true;
    });
  }
  ~WorkerThread() { Join().IgnoreError(); }
  Worker& worker() { return worker_; }
  bool done() const { return done_; }
  // Stops the worker and returns what Run() returned.
  absl::Status Join() {
    if (thread_.joinable()) {
      worker_.Stop("test over");
      thread_.join();
    }
    return result_;
  }
  // Waits until the worker registered.
  void AwaitRegistered(absl::Duration timeout = absl::Seconds(5)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (worker_.worker_id().empty() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    ASSERT_FALSE(worker_.worker_id().empty()) << "the worker did not register";
  }

 private:
  Worker worker_;
  std::thread thread_;
  absl::Status result_;
  std::atomic<bool> done_ = false;
};

// A registered fake worker that heartbeats (so it stays alive) but never fetches its assignment:
// the rank it is given never joins the rendezvous, so the real ranks of its job block there.
// Its rank is unbound by the coordinator as soon as the attempt ends.
class SilentRank {
 public:
  SilentRank(std::shared_ptr<grpc::Channel> channel, int index)
      : fake_(std::make_unique<FakeWorker>(channel, "h", index)) {
    thread_ = std::thread([this] {
      while (!stop_) {
        fake_->Heartbeat();
        absl::SleepFor(absl::Milliseconds(50));
      }
    });
  }
  ~SilentRank() { Stop(); }
  // Stops heartbeating: the coordinator drops it after its heartbeat timeout.
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::unique_ptr<FakeWorker> fake_;
  std::atomic<bool> stop_ = false;
  std::thread thread_;
};

// The mimo-worker binary, built into the folder of this test.
inline std::string WorkerBinary() {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  return self.substr(0, self.rfind('/') + 1) + "mimo-worker";
}

// A mimo-worker process for the coordinator on `port`, slot `index` on host "h"; its stderr goes
// to a file under the test's temp dir. Killed with SIGKILL on destruction if still running.
class WorkerProcess {
 public:
  WorkerProcess(int port, int index, std::vector<std::string> flags = {})
      : log_(absl::StrCat(::testing::TempDir(), "/mimo-worker-", getpid(), "-", port, "-", index,
                          ".log")) {
    std::vector<std::string> args = {WorkerBinary(),
                                     "--coordinator",
                                     absl::StrCat("127.0.0.1:", port),
                                     "--host",
                                     "h",
                                     "--local-index",
                                     absl::StrCat(index),
                                     "--listen-address",
                                     "127.0.0.1"};
    if (std::find(flags.begin(), flags.end(), "--connect-timeout") == flags.end()) {
      flags.insert(flags.end(), {"--connect-timeout", "5"});
    }
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // No orphans if the test dies.
      if (getppid() != parent) _exit(127);
      if (freopen(log_.c_str(), "w", stderr) == nullptr) _exit(126);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~WorkerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_; }
  void Signal(int sig) { kill(pid_, sig); }
  // The wait status once the process exited within `timeout`; nullopt if it is still running.
  std::optional<int> WaitExit(absl::Duration timeout) {
    if (exited_) return status_;
    const absl::Time deadline = absl::Now() + timeout;
    do {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        status_ = status;
        return status_;
      }
      absl::SleepFor(absl::Milliseconds(20));
    } while (absl::Now() < deadline);
    return std::nullopt;
  }
  // The process's stderr so far.
  std::string Log() const {
    std::ifstream in(log_);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = 0;
};

// Every stored log line of `job_id` (latest attempt) as "rank R: text".
inline std::vector<std::string> ReadLogs(v1::JobService::Stub& jobs, const std::string& job_id) {
  v1::StreamLogsRequest request;
  request.set_job_id(job_id);
  auto context = Context();
  auto reader = jobs.StreamLogs(context.get(), request);
  v1::StreamLogsResponse response;
  std::vector<std::string> lines;
  while (reader->Read(&response)) {
    for (const v1::LogLine& line : response.lines()) {
      lines.push_back(absl::StrCat("rank ", line.rank(), ": ", line.text()));
    }
  }
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  return lines;
}

// Whether some line of `lines` contains `text`.
inline bool HasLine(const std::vector<std::string>& lines, const std::string& text) {
  for (const std::string& line : lines) {
    if (absl::StrContains(line, text)) return true;
  }
  return false;
}

// Waits until the job's logs contain every one of `texts`.
inline bool AwaitLogs(v1::JobService::Stub& jobs, const std::string& job_id,
                      const std::vector<std::string>& texts,
                      absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const std::vector<std::string> lines = ReadLogs(jobs, job_id);
    bool all = true;
    for (const std::string& t : texts) all = all && HasLine(lines, t);
    if (all) return true;
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

}  // namespace mimo::worker::testing
