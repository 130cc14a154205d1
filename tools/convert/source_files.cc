// Checks a checkpoint folder's rank files against the sizes and CRC-32C its metadata.json lists.
#include "tools/convert/source_files.h"

#include <cstdint>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "checkpoint/safetensors.h"
#include "common/status_macros.h"

namespace mimo::tools {

absl::Status VerifyCheckpointFiles(const std::string& dir, const nlohmann::json& meta) {
  const std::string metadata = dir + "/metadata.json";
  if (!meta.is_object() || !meta.contains("files") || !meta["files"].is_object() ||
      meta["files"].empty()) {
    return absl::DataLossError(
        absl::StrCat(metadata, " lists no files with their checksums: not a complete checkpoint"));
  }
  const nlohmann::json& files = meta["files"];
  for (const auto& [file, d] : files.items()) {
    if (!d.is_object() || !d.contains("bytes") || !d.contains("crc32c") ||
        !d["bytes"].is_number_unsigned() || !d["crc32c"].is_number_unsigned()) {
      return absl::DataLossError(
          absl::StrCat(metadata, ": file ", file, " without bytes and crc32c"));
    }
    const absl::StatusOr<checkpoint::FileDigest> got = checkpoint::DigestOf(dir + "/" + file);
    if (!got.ok()) {
      return absl::DataLossError(absl::StrCat(metadata, " lists ", file,
                                              ", which cannot be read: ", got.status().message()));
    }
    const uint64_t bytes = d["bytes"].get<uint64_t>();
    const uint64_t crc = d["crc32c"].get<uint64_t>();
    if (got->bytes != bytes || got->crc32c != crc) {
      return absl::DataLossError(absl::StrCat(
          dir, "/", file, " has ", got->bytes, " bytes of CRC-32C ", got->crc32c, "; ", metadata,
          " says ", bytes, " bytes of CRC-32C ", crc, ": the checkpoint is damaged"));
    }
  }
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".safetensors" && !files.contains(name)) {
      return absl::DataLossError(
          absl::StrCat(dir, "/", name, " is not listed in ", metadata,
                       " (a file from another save?): the checkpoint is not as it was written"));
    }
  }
  if (ec) return absl::ErrnoToStatus(ec.value(), absl::StrCat("cannot list ", dir));
  return absl::OkStatus();
}

}  // namespace mimo::tools
