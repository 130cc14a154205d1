// Checks a checkpoint folder's rank files against the sizes and CRC-32C its metadata.json lists,
// before a tool reads them (what a resuming trainer checks).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace mimo::tools {

// `meta`: the folder's parsed metadata.json. DataLoss naming the first file that is missing,
// damaged (another size or checksum), or a .safetensors file of `dir` that metadata.json does not
// list; and when metadata.json lists no files at all.
absl::Status VerifyCheckpointFiles(const std::string& dir, const nlohmann::json& meta);

}  // namespace mimo::tools
