// mimoctl: the command-line client of mimo.
#include "CLI/CLI.hpp"
#include "tools/mimoctl/plan_command.h"

int main(int argc, char** argv) {
  CLI::App app{"mimoctl: plan, submit and follow mimo training jobs"};
  app.require_subcommand(1);
  int exit_code = 0;
  mimo::tools::AddPlanCommand(app, &exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
