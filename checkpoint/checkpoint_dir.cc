// Checkpoint folders: staging, the fsync + rename commit, the latest pointer and retention.
#include "checkpoint/checkpoint_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "absl/algorithm/container.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

namespace mimo::checkpoint {
namespace {

namespace fs = std::filesystem;

constexpr absl::string_view kPrefix = "iter_";

absl::Status FsError(const std::error_code& ec, absl::string_view what, const std::string& path) {
  return absl::ErrnoToStatus(ec.value(), absl::StrCat(what, " ", path));
}

// fsync of a file or folder, so what was written (or renamed into it) survives a crash.
absl::Status Fsync(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return absl::ErrnoToStatus(err, absl::StrCat("cannot fsync ", path));
  return absl::OkStatus();
}

absl::Status RemoveAll(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) return FsError(ec, "cannot remove", path);
  return absl::OkStatus();
}

}  // namespace

std::string CheckpointDir(const std::string& root, int64_t step) {
  return absl::StrFormat("%s/%s%07d", root, kPrefix, step);
}

std::string StagingDir(const std::string& root, int64_t step) {
  return absl::StrFormat("%s/.%s%07d.staging", root, kPrefix, step);
}

std::string LatestFile(const std::string& root) {
  return root + "/latest_checkpointed_iteration.txt";
}

absl::StatusOr<std::string> PrepareStaging(const std::string& root, int64_t step) {
  if (step < 0) return absl::InvalidArgumentError(absl::StrCat("checkpoint step ", step, " < 0"));
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return FsError(ec, "cannot create", root);
  // A commit replacing the latest checkpoint that died between its renames left the old one
  // aside, whole: it goes back under its name (readers found it aside meanwhile:
  // CommittedCheckpointFolder). Best effort: readers keep finding it aside until it is back.
  std::string latest_aside;
  if (const absl::StatusOr<std::optional<int64_t>> latest = LatestCheckpoint(root);
      latest.ok() && latest->has_value()) {
    const std::string dir = CheckpointDir(root, **latest);
    latest_aside = dir + ".replaced";
    if (CommittedCheckpointFolder(root, **latest) == latest_aside) {
      std::error_code renamed;
      fs::rename(latest_aside, dir, renamed);
      if (!renamed) Fsync(root).IgnoreError();
    }
  }
  // What earlier saves left: staging folders of saves of earlier steps that died, checkpoints
  // that retention set aside but could not remove, and replaced checkpoints other than the
  // latest's aside copy (their successor is in place, or a removal stopped half-way). Best
  // effort: what cannot be removed now is tried again at the next save, and costs only disk.
  std::vector<std::string> stale;
  for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    absl::string_view rest = name;
    int64_t staged = 0;
    const bool hidden = absl::ConsumePrefix(&rest, ".") && absl::ConsumePrefix(&rest, kPrefix) &&
                        (absl::ConsumeSuffix(&rest, ".deleting") ||
                         (absl::ConsumeSuffix(&rest, ".staging") &&
                          absl::SimpleAtoi(rest, &staged) && staged < step));
    rest = name;
    std::error_code exists;
    const bool replaced = absl::StartsWith(rest, kPrefix) &&
                          absl::ConsumeSuffix(&rest, ".replaced") &&
                          (fs::is_directory(root + "/" + std::string(rest), exists) ||
                           e.path().string() != latest_aside);
    if (hidden || replaced) stale.push_back(e.path().string());
  }
  ec.clear();  // A folder that cannot be listed holds nothing to clear; creating staging tells.
  for (const std::string& path : stale) RemoveAll(path).IgnoreError();
  const std::string staging = StagingDir(root, step);
  MIMO_RETURN_IF_ERROR(RemoveAll(staging));
  fs::create_directory(staging, ec);
  if (ec) return FsError(ec, "cannot create", staging);
  return staging;
}

absl::Status CommitCheckpoint(const std::string& root, int64_t step, int keep,
                              std::vector<std::string>* not_removed) {
  const std::string staging = StagingDir(root, step), final_dir = CheckpointDir(root, step);
  std::error_code ec;
  if (!fs::is_directory(staging, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat("no staging folder ", staging, " to commit step ", step, " from"));
  }
  MIMO_RETURN_IF_ERROR(Fsync(staging));
  if (fs::exists(final_dir, ec)) {
    // A checkpoint of this step already (a run resumed before it): the new one replaces it. The
    // old one goes aside first, so a crash here leaves one of the two under the step's name or
    // aside, never a half of each.
    const std::string aside = final_dir + ".replaced";
    MIMO_RETURN_IF_ERROR(RemoveAll(aside));
    fs::rename(final_dir, aside, ec);
    if (ec) return FsError(ec, "cannot move aside", final_dir);
    fs::rename(staging, final_dir, ec);
    if (ec) return FsError(ec, "cannot rename to", final_dir);
    MIMO_RETURN_IF_ERROR(Fsync(root));  // The new one in place before the old one goes.
    // Past this point the commit stands: an old copy that cannot go is the next save's to clear.
    if (absl::Status s = RemoveAll(aside); !s.ok() && not_removed != nullptr) {
      not_removed->push_back(std::string(s.message()));
    }
  } else {
    fs::rename(staging, final_dir, ec);
    if (ec) return FsError(ec, "cannot rename to", final_dir);
  }
  MIMO_RETURN_IF_ERROR(Fsync(root));
  const std::string latest = LatestFile(root), temp = latest + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << step << "\n";
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", temp));
  }
  MIMO_RETURN_IF_ERROR(Fsync(temp));
  fs::rename(temp, latest, ec);
  if (ec) return FsError(ec, "cannot rename to", latest);
  MIMO_RETURN_IF_ERROR(Fsync(root));
  if (keep <= 0) return absl::OkStatus();
  // The commit stands whatever happens below: a checkpoint that cannot be removed (a file held
  // open on NFS, a read-only folder) is reported and left, set aside under a name nothing lists
  // when the rename works, for the next save to clear.
  auto failed = [&](const absl::Status& s) {
    if (not_removed != nullptr) not_removed->push_back(std::string(s.message()));
  };
  absl::StatusOr<std::vector<int64_t>> steps = ListCheckpoints(root);
  if (!steps.ok()) {
    failed(steps.status());
    return absl::OkStatus();
  }
  for (size_t i = 0; i + keep < steps->size(); ++i) {
    if ((*steps)[i] == step) continue;  // The latest stays whatever the order.
    const std::string old = CheckpointDir(root, (*steps)[i]);
    const std::string aside = absl::StrFormat("%s/.%s%07d.deleting", root, kPrefix, (*steps)[i]);
    fs::rename(old, aside, ec);
    if (ec) {
      failed(FsError(ec, "cannot set aside", old));
      continue;
    }
    if (absl::Status s = RemoveAll(aside); !s.ok()) failed(s);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int64_t>> ListCheckpoints(const std::string& root) {
  std::vector<int64_t> steps;
  std::error_code ec;
  if (!fs::exists(root, ec)) return steps;
  for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    absl::string_view digits = name;
    int64_t step = 0;
    if (e.is_directory() && absl::ConsumePrefix(&digits, kPrefix) &&
        absl::c_all_of(digits, [](char c) { return c >= '0' && c <= '9'; }) && !digits.empty() &&
        absl::SimpleAtoi(digits, &step)) {
      steps.push_back(step);
    }
  }
  if (ec) return FsError(ec, "cannot list", root);
  std::sort(steps.begin(), steps.end());
  return steps;
}

absl::StatusOr<std::optional<int64_t>> LatestCheckpoint(const std::string& root) {
  const std::string latest = LatestFile(root);
  std::ifstream in(latest);
  if (!in) return std::optional<int64_t>();
  std::string text((std::istreambuf_iterator<char>(in)), {});
  int64_t step = 0;
  const absl::string_view stripped = absl::StripAsciiWhitespace(text);
  if (!absl::SimpleAtoi(stripped, &step) || step < 0) {
    // The text without its line break, so that the message stays one line.
    return absl::DataLossError(
        absl::StrCat(latest, " does not hold a step number: \"", stripped.substr(0, 40), "\""));
  }
  std::error_code ec;
  if (!fs::is_directory(CommittedCheckpointFolder(root, step), ec)) {
    return absl::DataLossError(absl::StrCat(latest, " names step ", step, " but ",
                                            CheckpointDir(root, step), " does not exist"));
  }
  return std::optional<int64_t>(step);
}

std::string CommittedCheckpointFolder(const std::string& root, int64_t step) {
  const std::string dir = CheckpointDir(root, step), aside = dir + ".replaced";
  std::error_code ec;
  // A commit replacing this step that died between its two renames: the old checkpoint, aside,
  // is still whole and still the latest.
  return !fs::is_directory(dir, ec) && fs::is_directory(aside, ec) ? aside : dir;
}

}  // namespace mimo::checkpoint
