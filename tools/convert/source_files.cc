// Checks a checkpoint folder's rank files against the sizes and CRC-32C its metadata.json lists,
// and a target folder against the source it is written from.
#include "tools/convert/source_files.h"

#include <cstdint>
#include <filesystem>
#include <system_error>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/safetensors.h"
#include "common/status_macros.h"

namespace mimo::tools {
namespace {

namespace fs = std::filesystem;

// `path` absolute, its symlinks resolved as far as it exists, without a trailing separator.
absl::StatusOr<fs::path> Resolved(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::absolute(path, ec);
  if (!ec) p = fs::weakly_canonical(p, ec);
  if (ec) return absl::ErrnoToStatus(ec.value(), absl::StrCat("cannot resolve the path ", path));
  if (!p.has_filename() && p.has_relative_path()) p = p.parent_path();  // "a/b/" -> "a/b".
  return p;
}

// Whether `inner` is `outer` or inside it; `*below`: inner's first component under outer (empty
// when they are equal).
bool Within(const fs::path& inner, const fs::path& outer, fs::path* below) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
    if (i == inner.end() || *i != *o) return false;
  }
  *below = i == inner.end() ? fs::path() : *i;
  return true;
}

}  // namespace

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

absl::StatusOr<std::optional<std::pair<int64_t, int64_t>>> SavedStep(
    const std::vector<std::string>& paths, bool required) {
  std::optional<std::pair<int64_t, int64_t>> saved;
  std::string first;  // The file `saved` is from.
  for (const std::string& path : paths) {
    MIMO_ASSIGN_OR_RETURN(const checkpoint::SafetensorsReader file,
                          checkpoint::SafetensorsReader::Open(path));
    const auto& m = file.header().metadata;
    int64_t step = 0, position = 0;
    if (!m.contains("step") || !m.contains("position") || !absl::SimpleAtoi(m.at("step"), &step) ||
        !absl::SimpleAtoi(m.at("position"), &position)) {
      if (!required) continue;
      return absl::DataLossError(
          absl::StrCat(path, " records no step and position (not a rank's state file)"));
    }
    if (!saved.has_value()) {
      saved = {step, position};
      first = path;
    } else if (saved->first != step || saved->second != position) {
      return absl::DataLossError(
          absl::StrCat(path, " records step ", step, " and position ", position, ", ", first,
                       " step ", saved->first, " and position ", saved->second,
                       ": files of different saves (the checkpoint is not as one save wrote it)"));
    }
  }
  return saved;
}

absl::Status CheckTargetApart(const std::string& source, const std::string& to,
                              absl::string_view source_what,
                              const std::function<bool(const std::string&)>& replaces) {
  MIMO_ASSIGN_OR_RETURN(const fs::path from, Resolved(source));
  MIMO_ASSIGN_OR_RETURN(const fs::path target, Resolved(to));
  // The resolved paths, where the user's spelling (a link, "..") hides them.
  auto as_given = [](const std::string& given, const fs::path& resolved) {
    return absl::StrCat(given, resolved.string() == given ? "" : " (" + resolved.string() + ")");
  };
  fs::path below;
  if (Within(target, from, &below)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--to ", as_given(to, target), below.empty() ? " is " : " is inside ", source_what, " ",
        as_given(source, from),
        ": the output would be written into the folder it is read from; give --to a folder "
        "outside it"));
  }
  if (Within(from, target, &below) && !below.empty() && replaces(below.string())) {
    return absl::InvalidArgumentError(absl::StrCat(
        source_what, " ", as_given(source, from), from == target / below ? " is " : " is inside ",
        below.string(), " of --to ", as_given(to, target),
        ", which writing there replaces or clears; give --to a folder that does not hold it"));
  }
  return absl::OkStatus();
}

}  // namespace mimo::tools
