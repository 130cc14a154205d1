// Checks on a tool's source before it is read: a checkpoint folder's rank files against the sizes
// and CRC-32C its metadata.json lists (what a resuming trainer checks) and as one save's, and a
// target folder that would write into the source or replace it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace mimo::tools {

// `meta`: the folder's parsed metadata.json. DataLoss naming the first file that is missing,
// damaged (another size or checksum), or a .safetensors file of `dir` that metadata.json does not
// list; and when metadata.json lists no files at all.
absl::Status VerifyCheckpointFiles(const std::string& dir, const nlohmann::json& meta);

// The step and data position that the rank files `paths` record ("step", "position" metadata):
// they are one save's, so all the same. DataLoss naming two files that differ, and, with
// `required`, a file that records none; nullopt when none records them (files not of a rank's
// state).
absl::StatusOr<std::optional<std::pair<int64_t, int64_t>>> SavedStep(
    const std::vector<std::string>& paths, bool required);

// InvalidArgument, before anything is written, when writing under the folder `to` would write
// into the folder `source` (described to the user as `source_what`, "the source checkpoint
// folder") or replace it: `to` is `source` or inside it, or `source` is (or is inside) an entry
// directly under `to` for whose name `replaces` is true (what a write there replaces or clears).
// Both paths are compared resolved (std::filesystem::weakly_canonical: symlinks followed, "."
// and ".." folded), so another spelling or a link to the source does not pass.
absl::Status CheckTargetApart(const std::string& source, const std::string& to,
                              absl::string_view source_what,
                              const std::function<bool(const std::string&)>& replaces);

}  // namespace mimo::tools
