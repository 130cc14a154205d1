// Job checkpoints: the resume point, the save barrier through the store, metadata.json.
#include "worker/job_checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <type_traits>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "checkpoint/checkpoint_dir.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"

namespace mimo::worker {
namespace {

constexpr char kFormat[] = "mimo.checkpoint";
constexpr int kVersion = 2;  // 2: the job spec recorded, rank files of mimo.rank_state 2.

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

std::string LayoutOf(const google::protobuf::RepeatedPtrField<v1::ModulePlan>& modules) {
  std::vector<std::string> parts;
  for (const v1::ModulePlan& m : modules) {
    // vpp only when the stages are interleaved: older checkpoints' layouts stay the same.
    parts.push_back(absl::StrCat(
        m.name(), "=tp=", m.tp(), ",pp=", m.pp(), ",dp=", m.dp(), ",cp=", m.cp(),
        ",ep=", std::max(1, m.ep()), ",etp=", std::max(1, m.etp()),
        m.vpp() > 1 ? absl::StrCat(",vpp=", m.vpp()) : "", ",rank_offset=", m.rank_offset()));
  }
  return absl::StrJoin(parts, " ");
}

absl::Status VerifyRankFiles(const ResumePoint& resume, int rank) {
  for (const char* kind : {"model", "optim"}) {
    const std::string file = absl::StrFormat("%s_rank_%05d.safetensors", kind, rank);
    const auto it = resume.files.find(file);
    if (it == resume.files.end()) {
      return absl::DataLossError(
          absl::StrCat(MetadataPath(resume.dir), " lists no ", file, " (rank ", rank, "'s)"));
    }
    MIMO_ASSIGN_OR_RETURN(const checkpoint::FileDigest d,
                          checkpoint::DigestOf(resume.dir + "/" + file));
    if (!(d == it->second)) {
      return absl::DataLossError(
          absl::StrCat(resume.dir, "/", file, " has ", d.bytes, " bytes of CRC-32C ", d.crc32c,
                       "; ", MetadataPath(resume.dir), " says ", it->second.bytes,
                       " bytes of CRC-32C ", it->second.crc32c, ": the checkpoint is damaged"));
    }
  }
  return absl::OkStatus();
}

namespace {

// The checkpoint folder a job resumes from, or "" for a fresh start: the newest under dir (the
// run's own progress: a restarted attempt, or the job submitted again), else resume_from.
absl::StatusOr<std::string> ResumeFolder(const v1::Checkpointing& c) {
  if (!c.dir().empty()) {
    MIMO_ASSIGN_OR_RETURN(const std::optional<int64_t> latest,
                          checkpoint::LatestCheckpoint(c.dir()));
    if (latest.has_value()) {
      const std::string own = checkpoint::CommittedCheckpointFolder(c.dir(), *latest);
      if (!c.resume_from().empty() && c.resume_from() != "latest") {
        std::cerr << "note: resuming from " << own << ", the run's own progress under "
                  << "checkpointing.dir, not from checkpointing.resume_from " << c.resume_from()
                  << " (which only starts a run whose dir holds no checkpoint yet)\n";
      }
      return own;
    }
  }
  if (c.resume_from().empty() || c.resume_from() == "latest") return std::string();
  // A checkpoint root (say, mimo-convert reshard's --to): its latest checkpoint.
  std::error_code ec;
  if (!std::filesystem::exists(MetadataPath(c.resume_from()), ec) &&
      std::filesystem::exists(checkpoint::LatestFile(c.resume_from()), ec)) {
    MIMO_ASSIGN_OR_RETURN(const std::optional<int64_t> latest,
                          checkpoint::LatestCheckpoint(c.resume_from()));
    if (latest.has_value()) return checkpoint::CommittedCheckpointFolder(c.resume_from(), *latest);
  }
  return c.resume_from();
}

// A string or integer field of `meta`, or nullopt when it is missing or of another type.
template <typename T>
std::optional<T> Field(const nlohmann::json& meta, const char* key) {
  const auto it = meta.find(key);
  if (it == meta.end()) return std::nullopt;
  if constexpr (std::is_same_v<T, std::string>) {
    if (!it->is_string()) return std::nullopt;
  } else {
    if (!it->is_number_integer()) return std::nullopt;
  }
  return it->get<T>();
}

}  // namespace

absl::Status CheckCheckpointDirWritable(const v1::JobSpec& spec, int rank) {
  const std::string& dir = spec.checkpointing().dir();
  if (dir.empty()) return absl::OkStatus();
  auto refuse = [&dir](absl::string_view why) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpointing.dir ", dir, " cannot hold checkpoints: ", why));
  };
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return refuse(error.message());
  const std::string probe =
      (std::filesystem::path(dir) / absl::StrCat(".mimo-write-check-rank", rank, "-", getpid()))
          .string();
  const int fd = open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return refuse(absl::StrCat("cannot create a file there: ", std::strerror(errno)));
  const bool written = write(fd, "x", 1) == 1;
  const int write_error = errno;
  close(fd);
  std::filesystem::remove(probe, error);
  if (!written)
    return refuse(absl::StrCat("cannot write a file there: ", std::strerror(write_error)));
  return absl::OkStatus();
}

absl::StatusOr<std::optional<ResumePoint>> FindResumePoint(const v1::Assignment& assignment) {
  MIMO_ASSIGN_OR_RETURN(const std::string dir, ResumeFolder(assignment.spec().checkpointing()));
  if (dir.empty()) return std::optional<ResumePoint>();
  std::ifstream in(MetadataPath(dir));
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("no checkpoint to resume from: ", MetadataPath(dir), " cannot be read"));
  }
  const nlohmann::json meta = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  const bool object = !meta.is_discarded() && meta.is_object();
  const std::optional<std::string> format =
      object ? Field<std::string>(meta, "format") : std::nullopt;
  const std::optional<std::string> saved =
      object ? Field<std::string>(meta, "layout") : std::nullopt;
  const std::optional<int64_t> version = object ? Field<int64_t>(meta, "version") : std::nullopt;
  const std::optional<int64_t> iteration =
      object ? Field<int64_t>(meta, "iteration") : std::nullopt;
  const std::optional<int64_t> saved_world =
      object ? Field<int64_t>(meta, "world_size") : std::nullopt;
  if (format != kFormat || version != kVersion || !saved || !iteration || *iteration < 0 ||
      !saved_world) {
    return absl::DataLossError(absl::StrCat(MetadataPath(dir), " is not a ", kFormat, " version ",
                                            kVersion, " metadata file"));
  }
  const std::string layout = LayoutOf(assignment.modules());
  const int world = assignment.spec().resources().workers();
  if (*saved != layout || *saved_world != world) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", dir, " was saved by ", *saved_world, " ranks in layout \"", *saved,
        "\"; this job has ", world, " ranks in layout \"", layout,
        "\": resume it in its own layout, or reshard it to this one (mimo-convert reshard --from ",
        dir, " --to NEW_DIR --component ",
        absl::StrJoin(absl::StrSplit(layout, ' '), " --component "), ") and resume from NEW_DIR"));
  }
  if (*iteration > assignment.spec().training().steps()) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", dir, " is at iteration ", *iteration,
                     ", beyond the job's training.steps ", assignment.spec().training().steps()));
  }
  ResumePoint point{.dir = dir, .iteration = *iteration};
  const auto files = meta.find("files");
  if (files != meta.end() && files->is_object()) {
    for (const auto& [file, d] : files->items()) {
      if (!d.is_object() || !d.contains("bytes") || !d.contains("crc32c") ||
          !d["bytes"].is_number_unsigned() || !d["crc32c"].is_number_unsigned()) {
        return absl::DataLossError(
            absl::StrCat(MetadataPath(dir), ": file ", file, " without bytes and crc32c"));
      }
      point.files[file] = {.bytes = d["bytes"].get<uint64_t>(),
                           .crc32c = d["crc32c"].get<uint32_t>()};
    }
  }
  return std::optional<ResumePoint>(std::move(point));
}

absl::StatusOr<std::optional<ResumePoint>> AgreeOnResumePoint(const v1::Assignment& assignment,
                                                              comm::KeyValueStore* store,
                                                              absl::Duration timeout) {
  const int rank = assignment.rank().rank(), world = assignment.spec().resources().workers();
  if (world == 1) return FindResumePoint(assignment);
  if (store == nullptr) {
    return absl::FailedPreconditionError("resuming several ranks needs the job's store");
  }
  constexpr char kKey[] = "checkpoint/resume";
  std::string chosen;  // The folder, or "" for a fresh start.
  if (rank == 0) {
    absl::StatusOr<std::optional<ResumePoint>> found = FindResumePoint(assignment);
    // The others learn of a failure too (and fail with rank 0's error, whichever rank the job's
    // failure is reported from), instead of waiting.
    const std::string value = !found.ok()
                                  ? absl::StrCat("error:", static_cast<int>(found.status().code()),
                                                 ":", found.status().message())
                                  : (found->has_value() ? "dir:" + (*found)->dir : "none");
    MIMO_RETURN_IF_ERROR(store->Set(kKey, value));
    return found;
  }
  MIMO_ASSIGN_OR_RETURN(const std::vector<std::string> values, store->Wait({kKey}, timeout));
  const std::string& value = values[0];
  if (value == "none") return std::optional<ResumePoint>();
  if (absl::string_view error = value; absl::ConsumePrefix(&error, "error:")) {
    int code = static_cast<int>(absl::StatusCode::kUnknown);
    const size_t colon = error.find(':');
    if (colon == absl::string_view::npos || !absl::SimpleAtoi(error.substr(0, colon), &code)) {
      return absl::UnknownError(absl::StrCat("rank 0: ", error));
    }
    return absl::Status(static_cast<absl::StatusCode>(code),
                        absl::StrCat("rank 0: ", error.substr(colon + 1)));
  }
  if (!absl::StartsWith(value, "dir:")) {
    return absl::DataLossError(absl::StrCat("rank 0 published no resume point: \"", value, "\""));
  }
  chosen = value.substr(4);
  // The folder rank 0 chose, read here (the same checks), whatever this rank's own view of
  // the latest pointer.
  v1::Assignment pinned = assignment;
  pinned.mutable_spec()->mutable_checkpointing()->clear_dir();
  pinned.mutable_spec()->mutable_checkpointing()->set_resume_from(chosen);
  absl::StatusOr<std::optional<ResumePoint>> found = FindResumePoint(pinned);
  if (found.ok() && !found->has_value()) {
    return absl::NotFoundError(absl::StrCat("rank 0 resumes from ", chosen,
                                            ", which this rank cannot read (is the checkpoint "
                                            "folder shared by every host?)"));
  }
  return found;
}

nlohmann::json CheckpointMetadata(const v1::JobSpec& spec,
                                  const google::protobuf::RepeatedPtrField<v1::ModulePlan>& plans,
                                  int64_t iteration, int64_t consumed_samples,
                                  const nlohmann::json& files) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  auto to_json = [&](const google::protobuf::Message& m) {
    std::string text;
    return google::protobuf::util::MessageToJsonString(m, &text, options).ok()
               ? nlohmann::json::parse(text, nullptr, false)
               : nlohmann::json();
  };
  // Each module's plan, and its spec (the model's configuration) in the proto JSON mapping.
  std::map<std::string, nlohmann::json> specs;
  for (const v1::Module& m : spec.modules()) specs[m.name()] = to_json(m);
  nlohmann::json modules = nlohmann::json::array();
  for (const v1::ModulePlan& m : plans) {
    modules.push_back({{"name", m.name()},
                       {"spec", specs.contains(m.name()) ? specs[m.name()] : nlohmann::json()},
                       {"language", m.language()},
                       {"tp", m.tp()},
                       {"cp", m.cp()},
                       {"pp", m.pp()},
                       {"dp", m.dp()},
                       {"ep", m.ep()},
                       {"etp", m.etp()},
                       {"vpp", std::max(1, m.vpp())},
                       {"rank_offset", m.rank_offset()},
                       {"rank_count", m.rank_count()}});
  }
  return {{"format", kFormat},
          {"version", kVersion},
          {"iteration", iteration},
          {"consumed_samples", consumed_samples},
          {"world_size", spec.resources().workers()},
          {"layout", LayoutOf(plans)},
          {"modules", modules},
          {"job_spec", to_json(spec)},
          {"files", files}};
}

absl::Status WriteCheckpointMetadata(const std::string& staging, const nlohmann::json& metadata) {
  return WriteAndSync(MetadataPath(staging), metadata.dump(2) + "\n");
}

absl::Status SaveJobCheckpoint(const v1::Assignment& assignment, int64_t iteration,
                               int64_t consumed_samples, const RankStateWriter& write,
                               comm::KeyValueStore* store, absl::Duration timeout) {
  const v1::Checkpointing& c = assignment.spec().checkpointing();
  const int rank = assignment.rank().rank(), world = assignment.spec().resources().workers();
  if (world > 1 && store == nullptr) {
    return absl::FailedPreconditionError("a checkpoint of several ranks needs the job's store");
  }
  // Every rank's report goes into the store whether its part went well or not ({"error",
  // "code"} when not), so that the ranks waiting on it fail at once instead of at the timeout.
  const std::string key = absl::StrCat("checkpoint/", iteration, "/");
  auto report = [&](const std::string& name, const absl::Status& status,
                    const nlohmann::json& ok_value) -> absl::Status {
    if (world == 1) return status;
    const nlohmann::json value = status.ok()
                                     ? ok_value
                                     : nlohmann::json{{"error", std::string(status.message())},
                                                      {"code", static_cast<int>(status.code())}};
    const absl::Status set = store->Set(key + name, value.dump());
    return status.ok() ? set : status;  // The rank's own error first.
  };
  // A report from rank `from` for `what`: its JSON, or the error it reports.
  auto read = [&](const std::string& value, int from,
                  absl::string_view what) -> absl::StatusOr<nlohmann::json> {
    nlohmann::json theirs = nlohmann::json::parse(value, nullptr, false);
    if (!theirs.is_object()) {
      return absl::DataLossError(
          absl::StrCat("rank ", from, "'s report of ", what, " is not JSON"));
    }
    if (theirs.contains("error")) {
      const int code = theirs.value("code", 0);
      return absl::Status(
          code > 0 && code <= static_cast<int>(absl::StatusCode::kUnauthenticated)
              ? static_cast<absl::StatusCode>(code)
              : absl::StatusCode::kUnknown,
          absl::StrCat("rank ", from, " could not ", what, " of checkpoint iteration ", iteration,
                       ": ", theirs.value("error", std::string())));
    }
    return theirs;
  };
  if (rank == 0) {
    MIMO_RETURN_IF_ERROR(report("staged", checkpoint::PrepareStaging(c.dir(), iteration).status(),
                                nlohmann::json::object()));
  } else {
    MIMO_ASSIGN_OR_RETURN(const std::vector<std::string> staged,
                          store->Wait({key + "staged"}, timeout));
    MIMO_RETURN_IF_ERROR(read(staged[0], 0, "prepare the staging folder").status());
  }
  const std::string staging = checkpoint::StagingDir(c.dir(), iteration);
  absl::StatusOr<std::map<std::string, checkpoint::FileDigest>> digests = write(staging);
  // Each rank's files with their sizes and CRC-32Cs, for rank 0's metadata.json.
  nlohmann::json files = nlohmann::json::object();
  if (digests.ok()) {
    for (const auto& [file, d] : *digests) {
      files[file] = {{"bytes", d.bytes}, {"crc32c", d.crc32c}};
    }
  }
  if (rank != 0) {
    return report(absl::StrCat("written/", rank), digests.status(), files);
  }
  MIMO_RETURN_IF_ERROR(digests.status());
  std::vector<std::string> written;
  for (int r = 1; r < world; ++r) written.push_back(absl::StrCat(key, "written/", r));
  if (!written.empty()) {
    MIMO_ASSIGN_OR_RETURN(const std::vector<std::string> values, store->Wait(written, timeout));
    for (size_t i = 0; i < values.size(); ++i) {
      MIMO_ASSIGN_OR_RETURN(const nlohmann::json theirs,
                            read(values[i], static_cast<int>(i) + 1, "write its files"));
      files.update(theirs);
    }
  }
  MIMO_RETURN_IF_ERROR(
      WriteCheckpointMetadata(staging, CheckpointMetadata(assignment.spec(), assignment.modules(),
                                                          iteration, consumed_samples, files)));
  std::vector<std::string> not_removed;
  MIMO_RETURN_IF_ERROR(
      checkpoint::CommitCheckpoint(c.dir(), iteration, c.keep_last(), &not_removed));
  // The checkpoint is committed; an old one that stays only costs disk (the next save retries).
  for (const std::string& why : not_removed) {
    std::cerr << "warning: checkpoint " << iteration << " committed, but keep_last "
              << c.keep_last() << " could not remove an older one: " << why << "\n";
  }
  return absl::OkStatus();
}

}  // namespace mimo::worker
