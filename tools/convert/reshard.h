// `mimo-convert reshard` and `import`: a checkpoint written rank by rank for a target layout
// (every target rank's parameters and optimizer state as the workers of that layout would save
// them, described by the model code itself: worker/rank_modules.h), from any layout's checkpoint
// or from an export's whole tensors. The target layout is planned and validated as the
// coordinator validates a job before any byte is written; one tensor region is in memory at a
// time.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace mimo::tools {

struct ReshardOptions {
  // A checkpoint folder (iter_NNNNNNN), or a checkpoint root (its latest checkpoint).
  std::string from;
  // The root the resharded checkpoint is committed under (iter_NNNNNNN of the same iteration,
  // and latest_checkpointed_iteration.txt), as a job's checkpointing.dir or resume_from.
  std::string to;
  // One per module: NAME=tp=N[,pp=N,dp=N,cp=N,ep=N,etp=N,vpp=N,rank_offset=N] (mimoctl plan's
  // grammar); every module of the job named once.
  std::vector<std::string> components;
  // The target's ranks. 0: the sum of the modules' ranks when every component sets dp, else
  // the source job's world size (dp derived as the planner derives it).
  int world = 0;
  bool dry_run = false;    // Print the plan (which source files feed each target rank) only.
  bool overwrite = false;  // Replace a checkpoint of the same iteration under `to`.
  bool progress = false;   // A progress line on `err` (a terminal's), rewritten in place.
};

// Returns 0, or 1 with the error on `err`: a source that does not read or was saved without its
// job spec, a layout that does not parse or plan (every problem listed), a tensor of the source
// whose full shape or dtype is not the target's, a target that exists without `overwrite`, a
// `to` that is the source folder, inside it, or the root whose checkpoint it is (nothing written).
// A write that fails removes its staging folder and the folders of `to` it created. A replaced
// checkpoint of the same iteration that cannot be removed after the commit is a warning on `err`
// (the new checkpoint stands: 0).
int RunReshard(const ReshardOptions& options, std::ostream& out, std::ostream& err);

struct ImportOptions {
  // An export's folder (mimo-convert export): a subfolder per module of
  // model-0000k-of-0000N.safetensors files (or one model.safetensors).
  std::string from;
  std::string to;    // The root the checkpoint (iteration 0) is committed under.
  std::string spec;  // The job spec (.yaml/.json) whose model and layout the checkpoint is for.
  // Optional layout replacing the spec's, as for reshard.
  std::vector<std::string> components;
  int world = 0;
  bool dry_run = false;
  bool overwrite = false;
  bool progress = false;
};

// A fresh start from the export's weights: iteration and step 0, the fp32 masters from the
// weights, AdamW's moments and the expert biases zero. Returns 0, or 1 with the error on `err`
// (a `to` inside `from` among them); failures and warnings as RunReshard's.
int RunImport(const ImportOptions& options, std::ostream& out, std::ostream& err);

}  // namespace mimo::tools
