// `mimo-convert`: commands over checkpoints (checkpoint/): `inspect` (a checkpoint's layout,
// files and their checksums, whole tensors) and `verify` (two checkpoints' tensors equal after
// un-sharding, whatever their layouts). Resharding, export and import are still to come.
#pragma once

#include <ostream>
#include <string>

#include "CLI/CLI.hpp"

namespace mimo::tools {

// Prints a checkpoint folder (iter_NNNNNNN): metadata.json's iteration, world size and layout;
// every file with its size and whether its CRC-32C matches metadata.json; every whole tensor
// (name, dtype, full shape, slices). Returns 0, or 1 (the error on `err`) for a folder that does
// not read or a file whose checksum differs.
int RunInspect(const std::string& dir, std::ostream& out, std::ostream& err);

// Compares every tensor of two checkpoint folders after un-sharding: the same names, dtypes,
// shapes and bytes. Returns 0 when equal, 1 naming the first difference (for float tensors
// with the largest absolute difference) or an error.
int RunVerify(const std::string& a, const std::string& b, std::ostream& out, std::ostream& err);

// Registers `inspect` and `verify` on `app`; the exit code of the one that runs goes to
// `*exit_code`.
void AddConvertCommands(CLI::App& app, int* exit_code);

}  // namespace mimo::tools
