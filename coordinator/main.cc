// mimo-coordinator: the control plane's server process.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "common/flag_parsing.h"
#include "coordinator/server.h"

namespace {

// Parses "10s", "500ms", "2m" with absl's duration syntax.
absl::Duration ParseDuration(const std::string& text, const char* flag) {
  absl::Duration d;
  if (!absl::ParseDuration(text, &d) || d <= absl::ZeroDuration()) {
    throw CLI::ValidationError(flag, "expected a positive duration such as 10s or 500ms");
  }
  return d;
}

// A CLI11 check that refuses a value with `check`'s message.
CLI::Validator Checked(std::function<absl::Status(const std::string&)> check) {
  return CLI::Validator([check = std::move(check)](
                            std::string& value) { return std::string(check(value).message()); },
                        "");
}

// mimo-worker in the folder of this program.
std::string WorkerBinaryBesideUs() {
  char self[4096] = {};
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::string path = n > 0 ? std::string(self, n) : std::string();
  return path.substr(0, path.rfind('/') + 1) + "mimo-worker";
}

// The CUDA devices `worker_binary` can use, as it reports them (`--count-gpus`): the coordinator
// itself links no CUDA. Throws CLI::ValidationError when the count cannot be read.
int CountGpus(const std::string& worker_binary) {
  std::string quoted = "'";
  for (char c : worker_binary) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  quoted += "' --count-gpus";
  FILE* pipe = popen(quoted.c_str(), "r");
  std::string output;
  if (pipe != nullptr) {
    char buffer[256];
    while (fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  }
  const int status = pipe != nullptr ? pclose(pipe) : -1;
  int count = 0;
  if (status != 0 || !absl::SimpleAtoi(absl::StripAsciiWhitespace(output), &count) || count < 0) {
    throw CLI::ValidationError(
        "--gpu-workers", "auto: could not count GPUs with '" + worker_binary +
                             " --count-gpus': " + std::string(absl::StripAsciiWhitespace(output)));
  }
  if (count == 0) {
    throw CLI::ValidationError("--gpu-workers",
                               "auto: " + worker_binary +
                                   " sees no CUDA device (check "
                                   "CUDA_VISIBLE_DEVICES and the driver, or use --cpu-workers N)");
  }
  return count;
}

}  // namespace

int main(int argc, char** argv) {
  mimo::coordinator::ServerOptions options;
  std::string token_file, heartbeat_timeout = "10s", reattach_grace = "30s", cancel_grace = "30s",
                          join_timeout = "10m", finished_job_ttl, drain_grace = "30s";
  CLI::App app{"mimo-coordinator: the mimo control plane (job API, job store, scheduling)"};
  // Addresses and the database path are checked here, before anything is created or bound.
  app.add_option("--listen", options.listen, "gRPC address")
      ->type_name("HOST:PORT")
      ->check(Checked([](const std::string& address) {
        return mimo::CheckHostPort(address, mimo::coordinator::kListenRules);
      }))
      ->capture_default_str();
  app.add_option("--db", options.db_path, "SQLite database file")
      ->check(Checked(mimo::coordinator::CheckDatabasePath))
      ->capture_default_str();
  app.add_option("--metrics-listen", options.metrics_listen,
                 "Prometheus /metrics address; empty disables it")
      ->type_name("HOST:PORT")
      ->check(Checked([](const std::string& address) {
        return address.empty()
                   ? absl::OkStatus()
                   : mimo::CheckHostPort(address, mimo::coordinator::kMetricsListenRules);
      }))
      ->capture_default_str();
  app.add_option("--auth-token-file", token_file,
                 "Require 'authorization: Bearer <token>' with the token in this file")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-cert", options.tls_cert_file, "PEM certificate chain (enables TLS)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", options.tls_key_file, "PEM private key (with --tls-cert)")
      ->check(CLI::ExistingFile);
  app.add_option("--heartbeat-timeout", heartbeat_timeout,
                 "A worker silent this long is declared dead")
      ->capture_default_str();
  app.add_option("--reattach-grace", reattach_grace,
                 "After a restart, how long running jobs wait for their workers")
      ->capture_default_str();
  app.add_option("--cancel-grace", cancel_grace,
                 "How long a cancelled job waits for its workers to stop")
      ->capture_default_str();
  app.add_option("--join-timeout", join_timeout,
                 "How long a job waits for enough workers to register before it fails")
      ->capture_default_str();
  app.add_option("--finished-job-ttl", finished_job_ttl,
                 "Delete a job that ended, this long after its last update, with its events and "
                 "logs (such as 720h; default: keep every job)");
  int cpu_workers = 0;
  std::string gpu_workers;
  std::string worker_binary = WorkerBinaryBesideUs();
  CLI::Option* cpu = app.add_option("--cpu-workers", cpu_workers,
                                    "Embedded mode: start and supervise N CPU workers on this host "
                                    "(no other worker may register)")
                         ->check(CLI::Range(1, 4096));
  CLI::Option* gpu = app.add_option("--gpu-workers", gpu_workers,
                                    "Embedded mode: start and supervise N GPU workers on this host "
                                    "(GPUs 0..N-1), or 'auto': one per GPU the workers can use; no "
                                    "other worker may register")
                         ->type_name("N|auto");
  cpu->excludes(gpu);
  app.add_option("--worker-binary", worker_binary,
                 "The mimo-worker program for embedded mode; a wrapper script must exec "
                 "mimo-worker (a worker registers only from the pid the coordinator started)")
      ->capture_default_str();
  app.add_option("--drain-grace", drain_grace,
                 "Embedded mode, on SIGTERM: how long the workers get to save a checkpoint and "
                 "stop (SIGTERM to them) before they are stopped at once (SIGINT)")
      ->capture_default_str();
  try {
    // "--metrics-listen=" as "--metrics-listen ''" (CLI11 alone refuses it).
    mimo::ParseFlags(app, argc, argv);
    int gpus = 0;
    if (gpu_workers == "auto") {
      gpus = CountGpus(worker_binary);
    } else if (!gpu_workers.empty() &&
               (!absl::SimpleAtoi(gpu_workers, &gpus) || gpus < 1 || gpus > 64)) {
      throw CLI::ValidationError(
          "--gpu-workers", "expected a number in [1, 64] or 'auto', got '" + gpu_workers + "'");
    }
    if (cpu_workers > 0 || gpus > 0) {
      options.local_workers.count = cpu_workers > 0 ? cpu_workers : gpus;
      options.local_workers.device =
          cpu_workers > 0 ? mimo::v1::DEVICE_KIND_CPU : mimo::v1::DEVICE_KIND_CUDA;
      options.local_workers.worker_binary = worker_binary;
      if (!token_file.empty()) options.local_workers.extra_args = {"--token-file", token_file};
    }
    options.manager.heartbeat_timeout = ParseDuration(heartbeat_timeout, "--heartbeat-timeout");
    options.manager.heartbeat_interval = options.manager.heartbeat_timeout / 5;
    options.manager.reattach_grace = ParseDuration(reattach_grace, "--reattach-grace");
    options.manager.cancel_grace = ParseDuration(cancel_grace, "--cancel-grace");
    options.manager.join_timeout = ParseDuration(join_timeout, "--join-timeout");
    options.local_workers.drain_grace = ParseDuration(drain_grace, "--drain-grace");
    if (!finished_job_ttl.empty()) {
      options.manager.finished_job_ttl = ParseDuration(finished_job_ttl, "--finished-job-ttl");
    }
    if (!token_file.empty()) {
      std::ifstream in(token_file);
      std::stringstream ss;
      ss << in.rdbuf();
      options.auth_token = std::string(absl::StripAsciiWhitespace(ss.str()));
      if (options.auth_token.empty()) {
        throw CLI::ValidationError("--auth-token-file", "the token file is empty");
      }
    }
  } catch (const CLI::ParseError& e) {
    // --help exits 0; every usage error exits 2, as mimoctl and mimo-worker do.
    return app.exit(e) == 0 ? 0 : 2;
  }

  // Signals are taken by sigwait below, so every thread the server starts must block them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<mimo::coordinator::CoordinatorServer>> server =
      mimo::coordinator::CoordinatorServer::Start(options);
  if (!server.ok()) {
    std::cerr << "mimo-coordinator: " << server.status().message() << '\n';
    return 1;
  }
  std::cerr << "mimo-coordinator: serving on port " << (*server)->port() << " (database "
            << options.db_path << ", auth " << (options.auth_token.empty() ? "off" : "on")
            << ", TLS " << (options.tls_cert_file.empty() ? "off" : "on");
  if ((*server)->metrics_port() != 0)
    std::cerr << ", metrics on port " << (*server)->metrics_port();
  if (options.local_workers.count > 0) {
    std::cerr << ", " << options.local_workers.count << (cpu_workers > 0 ? " CPU" : " GPU")
              << " workers";
  }
  std::cerr << ")" << std::endl;
  int signal = 0;
  sigwait(&signals, &signal);
  std::cerr << "mimo-coordinator: " << (signal == SIGTERM ? "SIGTERM" : "SIGINT")
            << ", shutting down" << std::endl;
  const absl::Time stop_start = absl::Now();
  (*server)->Shutdown();
  std::cerr << "mimo-coordinator: stopped (shutdown took "
            << absl::FormatDuration(absl::Now() - stop_start) << ")" << std::endl;
  return 0;
}
