// The embedded mode's worker pool: mimo-worker processes this coordinator starts on its own host,
// supervised (restarted when they exit, their stderr forwarded and kept for crash reports).
#include "coordinator/local_workers.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>

#include "absl/strings/str_cat.h"

namespace mimo::coordinator {
namespace {

// Longest stderr line kept whole; longer ones are cut.
constexpr size_t kMaxLine = 4096;
// How often the supervisor looks at its processes when they are quiet.
constexpr int kPollMs = 100;

const char* DeviceFlag(v1::DeviceKind device) {
  return device == v1::DEVICE_KIND_CUDA ? "cuda" : "cpu";
}

}  // namespace

namespace local_workers_internal {

absl::StatusOr<pid_t> StartChild(const std::vector<std::string>& args, int output_fd,
                                 absl::FunctionRef<void(pid_t)> started) {
  std::vector<std::string> copies = args;
  std::vector<char*> argv;
  for (std::string& a : copies) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The child runs the program once `go` has no writer left: its own end is closed at once, ours
  // after `started`. Nothing is written (a child that died meanwhile, of a signal sent to the
  // process group say, would make the write raise SIGPIPE, which kills this process unless
  // something ignores it).
  int go[2];
  if (pipe2(go, O_CLOEXEC) != 0) {
    return absl::ErrnoToStatus(errno, "local workers: pipe2");
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(go[0]);
    close(go[1]);
    return absl::ErrnoToStatus(err, "local workers: fork");
  }
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec. The child dies with this thread (the
    // supervisor, which lives as long as the pool), so a killed coordinator leaves no orphans.
    // SIGINT stops a worker at once (SIGTERM would drain: save a checkpoint first, which needs
    // the coordinator's rendezvous store, gone with it).
    prctl(PR_SET_PDEATHSIG, SIGINT);
    if (getppid() != parent) _exit(127);
    // The coordinator blocks SIGTERM and SIGINT in every thread (it takes them with sigwait);
    // an exec'd program would inherit that mask and ignore its stop signal. An ignored SIGPIPE
    // would be inherited too (the metrics server ignores it in the coordinator).
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction default_action = {};
    default_action.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &default_action, nullptr);
    close(go[1]);
    char byte;
    ssize_t n;
    while ((n = read(go[0], &byte, 1)) < 0 && errno == EINTR) {
    }
    // Only the end of the pipe means go: the parent closed its end after `started`. Not a
    // parent that died first (its end closed with it), nor anything read.
    if (n != 0 || getppid() != parent) _exit(127);
    dup2(output_fd, STDOUT_FILENO);
    dup2(output_fd, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(go[0]);
  started(pid);
  close(go[1]);
  return pid;
}

bool AwaitExit(pid_t pid, bool wait,
               absl::FunctionRef<void(int exit_code, std::string how)> exited) {
  // WNOWAIT leaves the child a zombie, its pid not free for another process, while `exited` runs.
  siginfo_t info = {};
  int r;
  do {
    r = waitid(P_PID, pid, &info, WEXITED | WNOWAIT | (wait ? 0 : WNOHANG));
  } while (r < 0 && errno == EINTR);
  if (r == 0 && info.si_pid == 0) return false;  // Still running (WNOHANG).
  int exit_code = 0;
  std::string how;
  if (r < 0) {
    how = absl::StrCat("could not be waited for: ", std::strerror(errno));
    exit_code = -1;
  } else if (info.si_code == CLD_EXITED) {
    exit_code = info.si_status;
    how = absl::StrCat("exited with code ", exit_code);
  } else {  // CLD_KILLED or CLD_DUMPED.
    const int sig = info.si_status;
    exit_code = 128 + sig;
    how = absl::StrCat("was killed by signal ", sig, " (", strsignal(sig), ")");
  }
  exited(exit_code, std::move(how));
  if (r == 0) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  return true;
}

}  // namespace local_workers_internal

absl::Status LocalWorkers::CheckOptions(const LocalWorkersOptions& options) {
  if (options.count < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("local workers: count must be at least 1, got ", options.count));
  }
  if (access(options.worker_binary.c_str(), X_OK) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "local workers: cannot run ", options.worker_binary, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LocalWorkers>> LocalWorkers::Start(LocalWorkersOptions options,
                                                                  JobManager* manager) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  auto workers = std::unique_ptr<LocalWorkers>(new LocalWorkers(std::move(options), manager));
  workers->supervisor_ = std::thread([w = workers.get()] { w->Supervise(); });
  return workers;
}

LocalWorkers::LocalWorkers(LocalWorkersOptions options, JobManager* manager)
    : options_(std::move(options)), manager_(manager) {
  slots_.resize(options_.count);
  for (int i = 0; i < options_.count; ++i) slots_[i].index = i;
}

LocalWorkers::~LocalWorkers() { Stop(); }

int LocalWorkers::started() {
  absl::MutexLock lock(&mu_);
  return started_;
}

std::vector<pid_t> LocalWorkers::pids() {
  absl::MutexLock lock(&mu_);
  std::vector<pid_t> out;
  for (const Slot& slot : slots_) out.push_back(slot.pid);
  return out;
}

absl::Status LocalWorkers::Spawn(Slot& slot) {
  std::vector<std::string> args = {options_.worker_binary,
                                   "--coordinator",
                                   options_.coordinator_address,
                                   "--host",
                                   options_.host,
                                   "--local-index",
                                   absl::StrCat(slot.index),
                                   "--device",
                                   DeviceFlag(options_.device)};
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::ErrnoToStatus(errno, "local workers: pipe2");
  }
  // The manager knows the slot's pid before a worker with that pid can register (it refuses any
  // other).
  const absl::StatusOr<pid_t> pid = local_workers_internal::StartChild(
      args, fds[1], [&](pid_t pid) { manager_->WorkerProcessStarted(slot.index, pid); });
  close(fds[1]);
  if (!pid.ok()) {
    close(fds[0]);
    return pid.status();
  }
  fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
  slot.pid = *pid;
  slot.stderr_fd = fds[0];
  slot.partial.clear();
  slot.tail.clear();
  ++started_;
  return absl::OkStatus();
}

void LocalWorkers::Drain(Slot& slot) {
  if (slot.stderr_fd < 0) return;
  char buffer[8192];
  while (true) {
    const ssize_t n = read(slot.stderr_fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
        close(slot.stderr_fd);  // End of file: the process closed its end (it is exiting).
        slot.stderr_fd = -1;
      }
      break;
    }
    slot.partial.append(buffer, n);
    size_t start = 0;
    for (size_t nl; (nl = slot.partial.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string line = slot.partial.substr(start, std::min(nl - start, kMaxLine));
      std::cerr << "[worker " << slot.index << "] " << line << '\n';
      slot.tail.push_back(std::move(line));
      if (static_cast<int>(slot.tail.size()) > options_.stderr_tail_lines) slot.tail.pop_front();
    }
    slot.partial.erase(0, start);
    if (slot.partial.size() > kMaxLine) slot.partial.resize(kMaxLine);
  }
}

bool LocalWorkers::Reap(Slot& slot, bool wait) {
  if (slot.pid < 0) return false;
  // The manager is told while the pid is still the exited worker's (it clears the slot's pid):
  // once reaped, the pid may be another process's.
  return local_workers_internal::AwaitExit(
      slot.pid, wait, [&](int exit_code, std::string how) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        Drain(slot);
        if (!slot.partial.empty()) {
          slot.tail.push_back(std::move(slot.partial));
          slot.partial.clear();
        }
        if (slot.stderr_fd >= 0) {
          close(slot.stderr_fd);
          slot.stderr_fd = -1;
        }
        std::cerr << "[worker " << slot.index << "] pid " << slot.pid << " " << how << '\n';
        manager_->WorkerProcessExited(options_.host, slot.pid, exit_code, how,
                                      std::vector<std::string>(slot.tail.begin(), slot.tail.end()),
                                      absl::Now());
        slot.pid = -1;
        slot.tail.clear();
        slot.restart_at = absl::Now() + options_.restart_delay;
      });
}

void LocalWorkers::Supervise() {
  while (true) {
    std::vector<pollfd> fds;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) {
        StopAll();
        return;
      }
      const absl::Time now = absl::Now();
      for (Slot& slot : slots_) {
        if (slot.pid >= 0 || now < slot.restart_at) continue;
        if (absl::Status s = Spawn(slot); !s.ok()) {
          std::cerr << "mimo-coordinator: cannot start worker " << slot.index << ": " << s << '\n';
          slot.restart_at = now + options_.restart_delay;
        }
      }
      for (const Slot& slot : slots_) {
        if (slot.stderr_fd >= 0) fds.push_back({slot.stderr_fd, POLLIN, 0});
      }
    }
    poll(fds.data(), fds.size(), kPollMs);
    absl::MutexLock lock(&mu_);
    for (Slot& slot : slots_) {
      Drain(slot);
      Reap(slot, /*wait=*/false);
    }
  }
}

void LocalWorkers::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  // The supervisor stops the workers: they get SIGINT when it exits (PR_SET_PDEATHSIG), which
  // would cut their drain short.
  if (supervisor_.joinable()) supervisor_.join();
}

void LocalWorkers::StopAll() {
  // A drain first, as a preempted worker gets: the coordinator still serves until the workers
  // are gone, so a training job commits a checkpoint and its next start resumes from it without
  // using a restart. SIGINT then stops what has not drained in time.
  for (const auto& [sig, grace] :
       {std::pair{SIGTERM, options_.drain_grace}, std::pair{SIGINT, options_.stop_grace}}) {
    for (Slot& slot : slots_) {
      if (slot.pid >= 0) kill(slot.pid, sig);
    }
    const absl::Time deadline = absl::Now() + grace;
    while (absl::Now() < deadline) {
      bool running = false;
      for (Slot& slot : slots_) {
        Drain(slot);
        Reap(slot, /*wait=*/false);
        running |= slot.pid >= 0;
      }
      if (!running) return;
      mu_.Unlock();
      absl::SleepFor(absl::Milliseconds(20));
      mu_.Lock();
    }
  }
  for (Slot& slot : slots_) {
    if (slot.pid < 0) continue;
    kill(slot.pid, SIGKILL);
    Reap(slot, /*wait=*/true);
  }
}

}  // namespace mimo::coordinator
