// Validates a LayoutSpec and resolves it into concrete module rank ranges (dp and offsets set).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/layout_violation.h"
#include "parallel/module_parallelism.h"

namespace mimo::parallel {

// A module with every size known and its rank range fixed.
struct ResolvedModule {
  std::string name;
  int spec_index = 0;  // Position in LayoutSpec::modules.
  bool is_language = false;
  int tp = 1, cp = 1, pp = 1, dp = 1, ep = 1, etp = 1;
  int vpp = 1;  // Model chunks per rank (interleaved pipeline stages).
  int rank_offset = 0;

  int dense_size() const { return tp * cp * pp; }  // Model-parallel ranks of one replica.
  int size() const { return dense_size() * dp; }   // Ranks of the module.
  int rank_end() const { return rank_offset + size(); }
  // Expert-data-parallel size: the language span refactored as (etp, ep, expt_dp, pp).
  int expt_dp() const { return size() / (etp * ep * pp); }
};

struct ResolvedLayout {
  int world_size = 0;
  int language_index = 0;               // Index into `modules`.
  std::vector<ResolvedModule> modules;  // In LayoutSpec order.
};

// Checks the spec and derives what it leaves unset. Collects every problem rather than stopping
// at the first: sizes positive and rank offsets non-negative; module names non-empty and unique;
// the language module present; encoders dense (ep = etp = 1) and in plain stages (vpp = 1); vpp
// > 1 only with pp > 1; every tp a power of two; for the
// language module, tp*cp*dp divisible by etp*ep and etp <= 100 (so that, within a pipeline stage,
// ranks holding different expert shards get different expert seeds; see rng_seeds.h);
// rank ranges tiling [0, world_size) exactly (overlaps, gaps, short and over coverage each
// reported); for every pair of modules, one dp dividing the other.
//
// dp derivation when some dp is unset and world_size is set: a single module gets
// dp = world_size / (tp*cp*pp); with several modules, each gets world_size / (number of modules)
// ranks, dp = that / (tp*cp*pp), and a module without rank_offset is placed at its position in
// the order given times that share. Any inexact division is an error.
//
// On failure returns InvalidArgument listing every problem, one per line, and, when `violations`
// is not null, stores them there with their module index and field.
absl::StatusOr<ResolvedLayout> ResolveLayout(const LayoutSpec& spec,
                                             std::vector<LayoutViolation>* violations = nullptr);

}  // namespace mimo::parallel
