// `mimoctl plan`: validates a layout (flags, or a job spec file) offline and prints its rank plan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"

namespace mimo::tools {

struct PlanOptions {
  std::string spec_path;                   // SPEC: a job spec file; excludes the layout flags.
  int world_size = 0;                      // --world: total ranks (required without SPEC).
  std::string language = "language";       // --language: the language module's name.
  std::vector<std::string> components;     // --component NAME=KEY=VALUE[,...], one per module.
  int64_t seed = 1234;                     // --seed: the job seed.
  bool data_parallel_random_init = false;  // --data-parallel-random-init.
  bool json = false;                       // --json: machine-readable output.
};

// Registers `plan` on `app`; when it runs, its exit code is stored in `*exit_code`.
void AddPlanCommand(CLI::App& app, int* exit_code);

// Plans and prints to stdout; every error goes to stderr. Returns the process exit code.
int RunPlan(const PlanOptions& options);

}  // namespace mimo::tools
