// Job checkpoints: the resume point, the save barrier through the store, metadata.json.
#include "worker/job_checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "checkpoint/checkpoint_dir.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace mimo::worker {
namespace {

constexpr char kFormat[] = "mimo.checkpoint";
constexpr int kVersion = 1;

std::string MetadataPath(const std::string& dir) { return dir + "/metadata.json"; }

absl::Status WriteAndSync(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
  absl::Status status;
  size_t done = 0;
  while (done < text.size() && status.ok()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno != EINTR)
      status = absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path));
    if (n > 0) done += static_cast<size_t>(n);
  }
  if (status.ok() && ::fsync(fd) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("cannot fsync ", path));
  }
  ::close(fd);
  return status;
}

}  // namespace

std::string LayoutOf(const v1::Assignment& assignment) {
  std::vector<std::string> parts;
  for (const v1::ModulePlan& m : assignment.modules()) {
    parts.push_back(absl::StrCat(m.name(), "=tp=", m.tp(), ",pp=", m.pp(), ",dp=", m.dp(),
                                 ",cp=", m.cp(), ",ep=", std::max(1, m.ep()),
                                 ",etp=", std::max(1, m.etp()), ",rank_offset=", m.rank_offset()));
  }
  return absl::StrJoin(parts, " ");
}

absl::StatusOr<std::optional<ResumePoint>> FindResumePoint(const v1::Assignment& assignment) {
  const v1::Checkpointing& c = assignment.spec().checkpointing();
  std::string dir;
  if (c.resume_from().empty() || c.resume_from() == "latest") {
    if (c.dir().empty()) return std::optional<ResumePoint>();
    MIMO_ASSIGN_OR_RETURN(const std::optional<int64_t> latest,
                          checkpoint::LatestCheckpoint(c.dir()));
    if (!latest.has_value()) return std::optional<ResumePoint>();
    dir = checkpoint::CheckpointDir(c.dir(), *latest);
  } else {
    dir = c.resume_from();
  }
  std::ifstream in(MetadataPath(dir));
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("no checkpoint to resume from: ", MetadataPath(dir), " cannot be read"));
  }
  const nlohmann::json meta = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (meta.is_discarded() || !meta.is_object() || meta.value("format", "") != kFormat ||
      meta.value("version", 0) != kVersion || !meta.contains("iteration") ||
      !meta["iteration"].is_number_integer() || !meta.contains("layout") ||
      !meta["layout"].is_string()) {
    return absl::DataLossError(absl::StrCat(MetadataPath(dir), " is not a ", kFormat, " version ",
                                            kVersion, " metadata file"));
  }
  const std::string layout = LayoutOf(assignment), saved = meta["layout"].get<std::string>();
  const int world = assignment.spec().resources().workers();
  if (saved != layout || meta.value("world_size", 0) != world) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", dir, " was saved by ", meta.value("world_size", 0), " ranks in layout \"",
        saved, "\"; this job has ", world, " ranks in layout \"", layout,
        "\": resume it in its own layout (resharding checkpoints is not supported yet)"));
  }
  return std::optional<ResumePoint>(
      ResumePoint{.dir = dir, .iteration = meta["iteration"].get<int64_t>()});
}

absl::Status SaveJobCheckpoint(const v1::Assignment& assignment, const Trainer& trainer,
                               int64_t iteration, comm::KeyValueStore* store,
                               absl::Duration timeout) {
  const v1::Checkpointing& c = assignment.spec().checkpointing();
  const int rank = assignment.rank().rank(), world = assignment.spec().resources().workers();
  if (world > 1 && store == nullptr) {
    return absl::FailedPreconditionError("a checkpoint of several ranks needs the job's store");
  }
  const std::string key = absl::StrCat("checkpoint/", iteration, "/");
  if (rank == 0) {
    MIMO_RETURN_IF_ERROR(checkpoint::PrepareStaging(c.dir(), iteration).status());
    if (world > 1) MIMO_RETURN_IF_ERROR(store->Set(key + "staged", "1"));
  } else {
    MIMO_RETURN_IF_ERROR(store->Wait({key + "staged"}, timeout).status());
  }
  const std::string staging = checkpoint::StagingDir(c.dir(), iteration);
  MIMO_RETURN_IF_ERROR(trainer.SaveState(staging, rank));
  if (rank != 0) return store->Set(absl::StrCat(key, "written/", rank), "1");
  std::vector<std::string> written;
  for (int r = 1; r < world; ++r) written.push_back(absl::StrCat(key, "written/", r));
  if (!written.empty()) MIMO_RETURN_IF_ERROR(store->Wait(written, timeout).status());
  nlohmann::json modules = nlohmann::json::array();
  for (const v1::ModulePlan& m : assignment.modules()) {
    modules.push_back({{"name", m.name()},
                       {"language", m.language()},
                       {"tp", m.tp()},
                       {"cp", m.cp()},
                       {"pp", m.pp()},
                       {"dp", m.dp()},
                       {"ep", m.ep()},
                       {"etp", m.etp()},
                       {"rank_offset", m.rank_offset()},
                       {"rank_count", m.rank_count()}});
  }
  const nlohmann::json meta = {{"format", kFormat},
                               {"version", kVersion},
                               {"iteration", iteration},
                               {"consumed_samples", trainer.position()},
                               {"world_size", world},
                               {"layout", LayoutOf(assignment)},
                               {"modules", modules},
                               {"files",
                                "model_rank_NNNNN.safetensors and optim_rank_NNNNN."
                                "safetensors for every rank NNNNN"}};
  MIMO_RETURN_IF_ERROR(WriteAndSync(MetadataPath(staging), meta.dump(2) + "\n"));
  return checkpoint::CommitCheckpoint(c.dir(), iteration, c.keep_last());
}

}  // namespace mimo::worker
