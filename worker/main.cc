// mimo-worker: one worker process per GPU (or CPU slot), serving the coordinator's assignments.
#include <pthread.h>
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/flag_parsing.h"
#include "worker/device_info.h"
#include "worker/worker.h"

namespace {

// Reads a bearer token file, trimming surrounding whitespace (a trailing newline above all).
std::string ReadToken(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(text.str()));
  if (!in || token.empty()) {
    throw CLI::ValidationError("--token-file", absl::StrCat("no token in ", path));
  }
  return token;
}

}  // namespace

int main(int argc, char** argv) {
  using mimo::worker::kExitStopped;
  using mimo::worker::kExitUsage;

  mimo::worker::WorkerOptions options;
  std::string device = "cpu", token_file;
  double connect_timeout_seconds = 30;
  CLI::App app{
      "mimo-worker: registers with a mimo coordinator and runs the job ranks it assigns, one at "
      "a time, until stopped"};
  app.add_option("--coordinator", options.coordinator.address, "The coordinator's gRPC address")
      ->type_name("HOST:PORT")
      ->envname("MIMO_COORDINATOR")
      ->required();
  app.add_option("--host", options.host, "Host name to register with (default: gethostname)");
  app.add_option("--local-index", options.local_index, "Device ordinal (or CPU slot) on the host")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--device", device, "Device kind this worker offers")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--listen-address", options.listen_address,
                 "Address Gloo listens on for peer ranks (default: the host name's address)");
  // MIMO_TOKEN is read only when neither flag is given: a flag beats the environment (CLI11's
  // envname would count it as --token, which --token-file excludes).
  CLI::Option* token =
      app.add_option("--token", options.coordinator.token,
                     "Bearer token, sent as 'authorization: Bearer TOKEN' metadata (default: "
                     "$MIMO_TOKEN unless --token-file is given)")
          ->type_name("TOKEN");
  CLI::Option* token_file_option =
      app.add_option("--token-file", token_file, "Read the bearer token from this file")
          ->check(CLI::ExistingFile)
          ->excludes(token);
  app.add_option("--tls-ca", options.coordinator.tls_ca_file,
                 "Use TLS, trusting this root CA certificate (PEM); plaintext without it")
      ->check(CLI::ExistingFile);
  app.add_option("--connect-timeout", connect_timeout_seconds,
                 "Seconds to wait for the first connection to the coordinator")
      ->type_name("SECONDS")
      // CLI::PositiveNumber's message prints the range up to DBL_MAX in full.
      ->transform(CLI::Validator(
          [](std::string& value) {
            double seconds = 0;
            return CLI::detail::lexical_cast(value, seconds) && seconds > 0
                       ? std::string()
                       : "'" + value + "' is not a positive number of seconds, such as 30 or 0.5";
          },
          ""))
      ->capture_default_str();
  app.add_flag_callback(
      "--count-gpus",
      [] {
        std::cout << mimo::worker::CudaDeviceCount() << std::endl;
        throw CLI::Success();
      },
      "Print the number of CUDA devices this worker can use and exit (0 without CUDA)");
  app.footer(
      "Exit codes: 0 stopped by SIGTERM or SIGINT (SIGTERM: a training job that saves checkpoints\n"
      "saves one after its current step and stops, and the coordinator restarts it from there;\n"
      "other jobs, or SIGINT or a second SIGTERM: the running job is aborted and reported\n"
      "STOPPED); 1 fatal error (e.g. registration refused, other than for a device held by\n"
      "another worker, which is retried; bad token); 2 usage error; 3 the\n"
      "coordinator cannot be reached within --connect-timeout, or stopped answering for longer\n"
      "than its heartbeat timeout and reattach grace, whichever is longer (the running job is\n"
      "aborted first).");
  try {
    // "--host=" as "--host ''" (CLI11 alone refuses it).
    mimo::ParseFlags(app, argc, argv);
    if (!token_file.empty()) {
      options.coordinator.token = ReadToken(token_file);
    } else if (token->count() == 0 && token_file_option->count() == 0) {
      if (const char* env = std::getenv("MIMO_TOKEN")) options.coordinator.token = env;
    }
  } catch (const CLI::ParseError& e) {
    // --help exits 0; every usage error exits 2, whatever CLI11's own code for it.
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
  options.device = device == "cuda" ? mimo::v1::DEVICE_KIND_CUDA : mimo::v1::DEVICE_KIND_CPU;
  options.connect_timeout = absl::Seconds(connect_timeout_seconds);

  // SIGTERM and SIGINT are taken by sigwait in one thread, so every other thread (gRPC's, Gloo's)
  // must block them: block before any thread starts. SIGUSR1 only wakes that thread at the end.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  mimo::worker::Worker worker(options);
  std::thread signal_thread([&] {
    // The first SIGTERM drains (a training job saves and stops); SIGINT, or a second SIGTERM,
    // stops at once.
    bool drained = false;
    while (true) {
      int signal = 0;
      sigwait(&signals, &signal);
      if (signal == SIGUSR1) return;
      const std::string name = signal == SIGTERM ? "SIGTERM" : "SIGINT";
      if (signal == SIGTERM && !drained) {
        drained = true;
        std::cerr << "mimo-worker: SIGTERM, draining" << std::endl;
        worker.Drain("the worker received SIGTERM");
        continue;
      }
      std::cerr << "mimo-worker: " << name << ", stopping" << std::endl;
      worker.Stop(absl::StrCat("the worker received ", name));
    }
  });
  const absl::Status status = worker.Run();
  pthread_kill(signal_thread.native_handle(), SIGUSR1);
  signal_thread.join();
  const int code = mimo::worker::ExitCodeFor(status);
  if (!status.ok()) std::cerr << "mimo-worker: " << status.message() << std::endl;
  if (code == kExitStopped) std::cerr << "mimo-worker: stopped" << std::endl;
  return code;
}
