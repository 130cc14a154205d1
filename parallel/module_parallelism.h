// Per-module parallelism settings and the layout request that the planner validates.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mimo::parallel {

// The largest world the planner accepts; keeps every rank and rank product in 32 bits.
inline constexpr int kMaxWorldSize = 1 << 24;

// The parallelism of one module (an encoder, or the language model) and where its ranks start.
// Dense model-parallel size = tp*cp*pp; the module spans dense*dp consecutive global ranks.
struct ModuleParallelism {
  std::string name;  // Module name ("vision", "audio", "language"); non-empty and unique.
  int tp = 1;        // Tensor-parallel size; a power of two.
  int cp = 1;        // Context-parallel size.
  int pp = 1;        // Pipeline-parallel size.
  // Data-parallel size. Unset: derived from LayoutSpec::world_size (see ResolveLayout).
  std::optional<int> dp;
  int ep = 1;   // Expert-parallel size; the language module only (encoders are dense).
  int etp = 1;  // Expert tensor-parallel size; the language module only.
  // Virtual pipeline stages (model chunks) per rank, Megatron's
  // virtual_pipeline_model_parallel_size: the language module only, with pp > 1. It places
  // layers, not ranks.
  int vpp = 1;
  // First global rank of the module. Unset: 0, or, when dp is derived for several modules,
  // the module's position in the order given times its share of the world.
  std::optional<int> rank_offset;
};

// Everything the planner needs: the modules, the world, and the seed inputs.
struct LayoutSpec {
  // Total number of ranks. Unset: the sum of the modules' rank counts (every dp must be set).
  std::optional<int> world_size;
  std::string language = "language";       // Name of the language (MoE) module; must exist.
  std::vector<ModuleParallelism> modules;  // In the order given; at least one.
  int64_t seed = 1234;                     // Job seed, in [0, 2^62]; Megatron's default.
  bool data_parallel_random_init = false;  // Give data-parallel replicas different init seeds.
};

}  // namespace mimo::parallel
