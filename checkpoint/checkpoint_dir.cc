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
  const std::string staging = StagingDir(root, step);
  MIMO_RETURN_IF_ERROR(RemoveAll(staging));
  fs::create_directory(staging, ec);
  if (ec) return FsError(ec, "cannot create", staging);
  return staging;
}

absl::Status CommitCheckpoint(const std::string& root, int64_t step, int keep) {
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
    MIMO_RETURN_IF_ERROR(RemoveAll(aside));
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
  MIMO_ASSIGN_OR_RETURN(const std::vector<int64_t> steps, ListCheckpoints(root));
  for (size_t i = 0; i + keep < steps.size(); ++i) {
    if (steps[i] == step) continue;  // The latest stays whatever the order.
    MIMO_RETURN_IF_ERROR(RemoveAll(CheckpointDir(root, steps[i])));
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
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &step) || step < 0) {
    return absl::DataLossError(
        absl::StrCat(latest, " does not hold a step number: \"", text.substr(0, 40), "\""));
  }
  std::error_code ec;
  if (!fs::is_directory(CheckpointDir(root, step), ec)) {
    return absl::DataLossError(absl::StrCat(latest, " names step ", step, " but ",
                                            CheckpointDir(root, step), " does not exist"));
  }
  return std::optional<int64_t>(step);
}

}  // namespace mimo::checkpoint
