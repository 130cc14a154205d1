// Parses Megatron's MIMO component syntax:
// NAME=tp=N[,pp=N,dp=N,cp=N,ep=N,etp=N,vpp=N,rank_offset=N].
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "parallel/module_parallelism.h"

namespace mimo::parallel {

// One component: the module name before the first '=', then comma-separated KEY=VALUE tokens.
// Names, keys and values are trimmed; empty tokens are skipped ("language=" means all
// defaults). Keys: tp, pp, dp, cp, ep, etp, vpp, rank_offset; values are integers (range checks are
// the planner's). Errors name the component and the token at fault.
absl::StatusOr<ModuleParallelism> ParseComponent(absl::string_view text);

// Parses every component, collecting all errors (one per line in the InvalidArgument message);
// also rejects an empty list and a module named by two components.
absl::StatusOr<std::vector<ModuleParallelism>> ParseComponents(
    absl::Span<const std::string> components);

// The supported keys, in the order the syntax lists them.
inline constexpr absl::string_view kComponentKeys[] = {"tp", "pp",  "dp",  "cp",
                                                       "ep", "etp", "vpp", "rank_offset"};

}  // namespace mimo::parallel
