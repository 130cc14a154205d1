// mimo-convert: checkpoint tools (tools/convert/convert_commands.h).
//   mimo-convert inspect DIR
//   mimo-convert verify A B
//   mimo-convert export --from DIR --to OUT [--max-shard-bytes N] [--overwrite]
//   mimo-convert reshard --from DIR --to ROOT --component NAME=tp=N,... ... [--dry-run]
//   mimo-convert import --from EXPORT --to ROOT --spec JOB.yaml [--component ...] [--dry-run]
#include "CLI/CLI.hpp"
#include "common/flag_parsing.h"
#include "tools/convert/convert_commands.h"

int main(int argc, char** argv) {
  CLI::App app("mimo-convert: inspect, verify, reshard, export and import checkpoints");
  int exit_code = 0;
  mimo::tools::AddConvertCommands(app, &exit_code);
  try {
    // "--from=" as "--from ''" (CLI11 alone refuses it).
    mimo::ParseFlags(app, argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  return exit_code;
}
