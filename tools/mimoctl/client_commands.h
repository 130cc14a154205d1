// mimoctl's job commands (submit, get, list, cancel, watch, logs, validate): calls to JobService.
#pragma once

#include "CLI/CLI.hpp"

namespace mimo::tools {

// Registers the job commands on `app`. When one runs, its exit code is stored in `*exit_code`:
// 0 success; 1 the request failed, or the job did not succeed (`submit --wait`, `watch`); 3 the
// coordinator could not be reached (UNAVAILABLE, or no connection within --timeout).
void AddClientCommands(CLI::App& app, int* exit_code);

}  // namespace mimo::tools
