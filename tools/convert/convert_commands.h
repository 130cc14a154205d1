// `mimo-convert`: commands over checkpoints (checkpoint/): `inspect` (a checkpoint's layout,
// files and their checksums, whole tensors), `verify` (two checkpoints' tensors equal after
// un-sharding, whatever their layouts), `export` (whole tensors per module in the layout
// Hugging Face's readers expect), `reshard` and `import` (tools/convert/reshard.h).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "CLI/CLI.hpp"

namespace mimo::tools {

// Prints a checkpoint folder (iter_NNNNNNN): metadata.json's iteration, world size and layout;
// every file with its size and whether its CRC-32C matches metadata.json; every whole tensor
// (name, dtype, full shape, slices). Returns 0, or 1 (the error on `err`) for a folder that does
// not read, a file whose size or checksum differs (or that is missing, or has no unsigned
// integers to compare in metadata.json), a .safetensors file metadata.json does not list, or a
// metadata.json that is missing, does not parse or lists no files.
int RunInspect(const std::string& dir, std::ostream& out, std::ostream& err);

// Compares every tensor of two checkpoint folders after un-sharding (the parameters and the
// optimizer state; only the parameters with `weights_only`): the same names, dtypes, shapes
// and bytes. Returns 0 when equal, 1 naming the first difference (for float tensors with the
// largest absolute difference) or an error.
int RunVerify(const std::string& a, const std::string& b, bool weights_only, std::ostream& out,
              std::ostream& err);

struct ExportOptions {
  std::string from;  // A checkpoint folder (iter_NNNNNNN).
  std::string to;    // The export's folder: one subfolder per module.
  // Bytes per safetensors file at most (a larger tensor gets a file of its own); > 0.
  uint64_t max_shard_bytes = 5'000'000'000;
  bool overwrite = false;  // Replace the modules' subfolders when `to` already has files.
};

// Writes every module's whole tensors (the compute-dtype weights, under their full names
// "language.decoder.layers.0.self_attention.linear_qkv.weight", ...) into TO/<module>/ as
// model-0000k-of-0000N.safetensors (files of at most max_shard_bytes, tensors in name order),
// model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map": {name: file}}) and
// config.json (the module's spec from the checkpoint's metadata.json, its iteration and source
// layout), one tensor in memory at a time. Returns 0, or 1 with the error on `err` (a checkpoint
// that does not read, TO holding files without `overwrite`, TO inside FROM or holding it where
// the export writes). A module's earlier export that cannot be removed once the new one is in
// place is a warning on `err`.
int RunExport(const ExportOptions& options, std::ostream& out, std::ostream& err);

// Registers `inspect`, `verify`, `export`, `reshard` and `import` on `app`; the exit code of
// the one that runs goes to `*exit_code`.
void AddConvertCommands(CLI::App& app, int* exit_code);

}  // namespace mimo::tools
