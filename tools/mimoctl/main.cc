// mimoctl: the command-line client of mimo.
#include <grpc/support/log.h>

#include <cstdlib>

#include "CLI/CLI.hpp"
#include "common/flag_parsing.h"
#include "tools/mimoctl/client_commands.h"
#include "tools/mimoctl/plan_command.h"

int main(int argc, char** argv) {
  CLI::App app{"mimoctl: plan, submit and follow mimo training jobs"};
  app.require_subcommand(1);
  int exit_code = 0;
  // gRPC logs a failed TLS handshake on stderr ("E1207 12:00:00.000 ... ssl_transport_security.cc
  // ...] Handshake failed ...") before mimoctl's error says the same; with GRPC_VERBOSITY set, for
  // debugging, its log stays.
  if (std::getenv("GRPC_VERBOSITY") == nullptr) gpr_set_log_function([](gpr_log_func_args*) {});
  mimo::tools::AddPlanCommand(app, &exit_code);
  mimo::tools::AddClientCommands(app, &exit_code);
  try {
    // "--reason=" as "--reason ''" (CLI11 alone refuses it).
    mimo::ParseFlags(app, argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help exits 0; every usage error exits 2, whatever CLI11's own code for it.
    return app.exit(e) == 0 ? 0 : 2;
  }
  return exit_code;
}
