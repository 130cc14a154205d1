// RunReshard and RunImport: the target layout planned, each target rank described by the model
// code, its tensors read region by region from the source and written as that rank's files,
// committed as one checkpoint.
#include "tools/convert/reshard.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/consolidated_reader.h"
#include "checkpoint/safetensors.h"
#include "common/bfloat16.h"
#include "common/byte_buffer.h"
#include "common/status_macros.h"
#include "coordinator/plan_proto.h"
#include "coordinator/spec_validation.h"
#include "google/protobuf/util/json_util.h"
#include "kernels/allocator.h"
#include "nlohmann/json.hpp"
#include "parallel/component_spec.h"
#include "tools/convert/qkv_layout.h"
#include "tools/convert/source_files.h"
#include "tools/mimoctl/spec_file.h"
#include "worker/job_checkpoint.h"
#include "worker/model_spec.h"
#include "worker/rank_modules.h"
#include "worker/rank_state_format.h"

namespace mimo::tools {
namespace {

namespace fs = std::filesystem;
using checkpoint::ConsolidatedReader;
using checkpoint::Region;

// What the target checkpoint is for: the job with its new layout, and the plan of it.
struct Target {
  v1::JobSpec spec;
  std::optional<parallel::RankPlan> plan;
  google::protobuf::RepeatedPtrField<v1::ModulePlan> modules;
};

// The source: whole tensors, and where training stood.
struct Source {
  std::optional<ConsolidatedReader> reader;
  int64_t iteration = 0;
  int64_t step = 0;      // Optimizer updates.
  int64_t position = 0;  // Samples consumed.
  std::string layout;    // As metadata.json says (reshard).
};

// How a target tensor is made.
enum class Fill {
  kCopy,    // The source tensor's region.
  kMaster,  // The fp32 master from the (bf16) weight's region.
  kZero,    // AdamW's moments of a fresh start, and expert biases an import lacks.
};

struct TensorPlan {
  std::string name;    // In the target file.
  std::string source;  // In the source.
  std::string dtype;
  std::vector<int64_t> shape;  // On the target rank.
  Region region;               // Of the full tensor.
  Fill fill = Fill::kCopy;
  // Set for a fused QKV weight or bias read from an export: the source's rows are in
  // Megatron's order (tools/convert/qkv_layout.h), the region in mimo's.
  std::optional<QkvShape> megatron_qkv;
  uint64_t bytes() const {
    uint64_t n = checkpoint::DTypeBytes(dtype);
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    return n;
  }
};

// One target rank's two files.
struct RankPlan {
  worker::RankDescription description;
  std::vector<TensorPlan> model, optim;
};

// The module's spec by name, or null.
v1::Module* FindModule(v1::JobSpec& spec, const std::string& name) {
  for (v1::Module& m : *spec.mutable_modules()) {
    if (m.name() == name) return &m;
  }
  return nullptr;
}

// `spec` with the layout of `components` (none: the spec's own), planned and validated as the
// coordinator validates a job.
absl::StatusOr<Target> PlanTarget(v1::JobSpec spec, const std::vector<std::string>& components,
                                  int world) {
  if (world < 0)
    return absl::InvalidArgumentError(absl::StrCat("--world must be >= 0, got ", world));
  if (!components.empty()) {
    MIMO_ASSIGN_OR_RETURN(const std::vector<parallel::ModuleParallelism> layout,
                          parallel::ParseComponents(components));
    std::vector<std::string> problems, names;
    for (const v1::Module& m : spec.modules()) names.push_back(m.name());
    bool every_dp = true;
    int64_t ranks = 0;
    std::set<std::string> named;
    for (const parallel::ModuleParallelism& c : layout) {
      named.insert(c.name);
      // The job spec reads 0 as "not set" (a default): refused here, as the planner refuses it.
      for (const auto& [key, value] :
           {std::pair{"tp", c.tp}, std::pair{"cp", c.cp}, std::pair{"pp", c.pp},
            std::pair{"ep", c.ep}, std::pair{"etp", c.etp}, std::pair{"vpp", c.vpp},
            std::pair{"dp", c.dp.value_or(1)}}) {
        if (value < 1) {
          problems.push_back(
              absl::StrCat("component \"", c.name, "\": ", key, " must be >= 1, got ", value));
        }
      }
      if (c.rank_offset.value_or(0) < 0) {
        problems.push_back(absl::StrCat("component \"", c.name,
                                        "\": rank_offset must be >= 0, got ", *c.rank_offset));
      }
      v1::Module* m = FindModule(spec, c.name);
      if (m == nullptr) {
        problems.push_back(absl::StrCat("component \"", c.name, "\": the job has no module \"",
                                        c.name, "\" (its modules: ", absl::StrJoin(names, ", "),
                                        ")"));
        continue;
      }
      v1::Parallelism& p = *m->mutable_parallelism();
      p.set_tp(c.tp);
      p.set_cp(c.cp);
      p.set_pp(c.pp);
      p.set_ep(c.ep);
      p.set_etp(c.etp);
      p.set_vpp(c.vpp);  // The planner refuses a bad value.
      c.dp.has_value() ? p.set_dp(*c.dp) : p.clear_dp();
      c.rank_offset.has_value() ? p.set_rank_offset(*c.rank_offset) : p.clear_rank_offset();
      every_dp = every_dp && c.dp.has_value();
      ranks += int64_t{c.tp} * c.cp * c.pp * c.dp.value_or(0);
    }
    for (const std::string& name : names) {
      if (!named.contains(name)) {
        problems.push_back(
            absl::StrCat("module \"", name, "\" has no --component (give one per module)"));
      }
    }
    if (!problems.empty()) return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
    if (world == 0 && every_dp) {
      if (ranks > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(
            absl::StrCat("the components' ranks add up to ", ranks, ", more than a job holds"));
      }
      world = static_cast<int>(ranks);
    }
  }
  if (world > 0) spec.mutable_resources()->set_workers(world);
  // Checked as the coordinator checks a job: every problem, one "field: description" a line.
  absl::StatusOr<parallel::RankPlan> plan = coordinator::ValidateJobSpec(spec, nullptr);
  if (!plan.ok()) {
    return absl::Status(plan.status().code(),
                        absl::StrCat("the target layout is invalid: ", plan.status().message()));
  }
  Target out{.spec = std::move(spec)};
  coordinator::ModulesToProto(*plan, &out.modules);
  out.plan = *std::move(plan);
  return out;
}

// The source tensor `name` must be `dtype` (empty: F32 or BF16) of `full` shape.
absl::Status CheckSource(const ConsolidatedReader& reader, const std::string& name,
                         const std::string& dtype, const std::vector<int64_t>& full) {
  const auto it = reader.tensors().find(name);
  if (it == reader.tensors().end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the source has no tensor \"", name, "\" that the target's model needs (another model?)"));
  }
  const bool dtype_ok = dtype.empty() ? it->second.dtype == "F32" || it->second.dtype == "BF16"
                                      : it->second.dtype == dtype;
  if (!dtype_ok || it->second.shape != full) {
    return absl::InvalidArgumentError(
        absl::StrCat("the source's tensor \"", name, "\" is ", it->second.dtype, " [",
                     absl::StrJoin(it->second.shape, ", "), "]; the target's model needs ",
                     dtype.empty() ? "F32 or BF16" : dtype, " [", absl::StrJoin(full, ", "), "]"));
  }
  return absl::OkStatus();
}

// `t`'s region of its source into `out`: one read, or for a source in Megatron's QKV order one
// per run of its rows there.
absl::Status ReadSource(const ConsolidatedReader& source, const TensorPlan& t,
                        absl::Span<char> out) {
  if (!t.megatron_qkv.has_value()) return source.ReadRegion(t.source, t.region, out);
  const checkpoint::WholeTensor& whole = source.tensors().at(t.source);
  uint64_t row_bytes = checkpoint::DTypeBytes(whole.dtype);  // Of one row of the region.
  for (size_t d = 1; d < t.region.size(); ++d) {
    uint64_t extent = 0;
    for (const auto& [first, count] : t.region[d]) extent += static_cast<uint64_t>(count);
    row_bytes *= extent;
  }
  uint64_t at = 0;
  for (const auto& [first, count] : t.region[0]) {
    for (const auto& [to, n] : MegatronRuns(*t.megatron_qkv, first, count)) {
      Region piece = t.region;
      piece[0] = {{to, n}};
      const uint64_t bytes = static_cast<uint64_t>(n) * row_bytes;
      if (at + bytes > out.size()) return absl::InternalError("QKV region larger than its buffer");
      MIMO_RETURN_IF_ERROR(source.ReadRegion(t.source, piece, out.subspan(at, bytes)));
      at += bytes;
    }
  }
  if (at != out.size()) return absl::InternalError("QKV region smaller than its buffer");
  return absl::OkStatus();
}

// Target rank `rank`'s tensors and where each comes from; marks the source tensors used.
absl::StatusOr<RankPlan> PlanRank(const Target& target, int rank, kernels::DType dtype,
                                  const ConsolidatedReader& source, bool fresh,
                                  std::set<std::string>& used) {
  RankPlan out;
  MIMO_ASSIGN_OR_RETURN(out.description,
                        worker::DescribeRank(target.spec, *target.plan, rank, dtype));
  const std::string weight = worker::SafetensorsDType(dtype);
  auto add = [&](std::vector<TensorPlan>& file, TensorPlan t,
                 const std::vector<int64_t>& full) -> absl::Status {
    if (t.fill != Fill::kZero) {
      // An import's weights may be F32 or BF16 whatever the target's: they are converted.
      const bool any_float = fresh && (t.fill == Fill::kMaster || t.dtype == weight);
      MIMO_RETURN_IF_ERROR(CheckSource(
          source, t.source, any_float ? "" : (t.fill == Fill::kMaster ? weight : t.dtype), full));
      used.insert(t.source);
    }
    file.push_back(std::move(t));
    return absl::OkStatus();
  };
  const worker::RankDescription& d = out.description;
  // An import's source holds fused QKV rows in Megatron's order (export writes them so).
  std::optional<QkvShape> qkv;
  if (fresh) {
    const std::string& module = target.plan->module_of(rank).config().name;
    for (const v1::Module& m : target.spec.modules()) {
      if (m.name() == module) {
        MIMO_ASSIGN_OR_RETURN(qkv, QkvShapeOf(m));
      }
    }
  }
  for (const ParameterSpec& p : d.parameters) {
    // Replicas are written once, by the rank that saves them (the others read them from its
    // files): what the workers' own saves do.
    if (!(d.routed.contains(p.name) ? d.saves_experts : d.saves_dense)) continue;
    std::vector<int64_t> full;
    const Region region = worker::RegionOf(p, &full);
    const std::vector<int64_t> shape(p.shape.begin(), p.shape.end());
    // Read from the weight of an export: in Megatron's order if a fused QKV.
    const std::optional<QkvShape> order = IsFusedQkv(p.name) ? qkv : std::nullopt;
    auto state = [&](const char* suffix, Fill how) {
      return TensorPlan{.name = p.name + suffix,
                        .source = how == Fill::kCopy ? p.name + suffix : p.name,
                        .dtype = "F32",
                        .shape = shape,
                        .region = region,
                        .fill = how,
                        .megatron_qkv = how == Fill::kMaster ? order : std::nullopt};
    };
    MIMO_RETURN_IF_ERROR(add(out.model,
                             {.name = p.name,
                              .source = p.name,
                              .dtype = weight,
                              .shape = shape,
                              .region = region,
                              .fill = Fill::kCopy,
                              .megatron_qkv = order},
                             full));
    if (dtype != kernels::DType::kF32) {
      MIMO_RETURN_IF_ERROR(
          add(out.optim, state(".master", fresh ? Fill::kMaster : Fill::kCopy), full));
    }
    for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
      MIMO_RETURN_IF_ERROR(add(out.optim, state(suffix, fresh ? Fill::kZero : Fill::kCopy), full));
    }
  }
  for (const std::string& name : d.saves_dense ? d.expert_biases : std::vector<std::string>()) {
    const int64_t e = out.description.experts;
    // An import copies the biases an export carries (zero where it has none).
    const bool copy = !fresh || source.tensors().contains(name);
    MIMO_RETURN_IF_ERROR(add(out.optim,
                             {.name = name,
                              .source = name,
                              .dtype = "F32",
                              .shape = {e},
                              .region = {{{0, e}}},
                              .fill = copy ? Fill::kCopy : Fill::kZero},
                             {e}));
  }
  return out;
}

// One line about target rank `rank`: its module and coordinates.
std::string RankLine(const Target& target, int rank) {
  const parallel::RankAssignment& a = target.plan->rank(rank);
  const parallel::ResolvedModule& m = target.plan->module_of(rank).config();
  std::string line =
      absl::StrFormat("rank %d %s tp %d/%d cp %d/%d dp %d/%d pp %d/%d", rank, m.name, a.dense.tp,
                      m.tp, a.dense.cp, m.cp, a.dense.dp, m.dp, a.dense.pp, m.pp);
  if (a.expert.has_value()) {
    absl::StrAppendFormat(&line, " ep %d/%d etp %d/%d", a.expert->ep, m.ep, a.expert->expt_tp,
                          m.etp);
  }
  return line;
}

// Writes one file of a target rank: each tensor made (read, converted or zero) and streamed.
absl::StatusOr<checkpoint::FileDigest> WriteFile(const std::string& path,
                                                 const std::vector<TensorPlan>& tensors,
                                                 const std::map<std::string, std::string>& metadata,
                                                 const ConsolidatedReader& source,
                                                 ByteBuffer& buffer, ByteBuffer& scratch) {
  std::vector<checkpoint::TensorToWrite> specs;
  for (const TensorPlan& t : tensors) {
    specs.push_back({.name = t.name, .dtype = t.dtype, .shape = t.shape});
  }
  MIMO_ASSIGN_OR_RETURN(checkpoint::SafetensorsStreamWriter writer,
                        checkpoint::SafetensorsStreamWriter::Create(path, specs, metadata));
  for (const TensorPlan& t : tensors) {
    MIMO_RETURN_IF_ERROR(buffer.Resize(t.bytes()));
    if (t.fill == Fill::kZero) {
      std::fill(buffer.data(), buffer.data() + buffer.size(), 0);
    } else {
      // The source's region in its dtype, converted when the target's differs: a master (F32)
      // from a bf16 weight, widened exactly, or an import's weight in the other precision (to
      // bf16: rounded to nearest even).
      const std::string& from = source.tensors().at(t.source).dtype;
      if (from == t.dtype) {
        MIMO_RETURN_IF_ERROR(ReadSource(source, t, buffer.span()));
      } else {
        const uint64_t n = t.bytes() / checkpoint::DTypeBytes(t.dtype);
        MIMO_RETURN_IF_ERROR(scratch.Resize(n * checkpoint::DTypeBytes(from)));
        MIMO_RETURN_IF_ERROR(ReadSource(source, t, scratch.span()));
        for (uint64_t i = 0; i < n; ++i) {
          if (from == "BF16") {
            uint16_t b;
            std::memcpy(&b, scratch.data() + 2 * i, 2);
            const float v = BFloat16ToFloat(b);
            std::memcpy(buffer.data() + 4 * i, &v, 4);
          } else {
            float v;
            std::memcpy(&v, scratch.data() + 4 * i, 4);
            const uint16_t b = FloatToBFloat16(v);
            std::memcpy(buffer.data() + 2 * i, &b, 2);
          }
        }
      }
    }
    MIMO_RETURN_IF_ERROR(writer.Append(buffer.span()));
  }
  return writer.Finish();
}

struct WriteOptions {
  // The folder the source is read from (a checkpoint's, an export's) and its name for the user:
  // the target must lie outside it and not replace it.
  std::string from, from_what;
  std::string to;
  bool dry_run = false;
  bool overwrite = false;
  bool progress = false;
  bool fresh = false;  // Import: masters from the weights, zero moments, biases if exported.
};

// The whole target checkpoint from `source`: planned (every rank described and checked
// against the source first), printed on a dry run, else written and committed.
absl::Status WriteCheckpoint(const Source& source, const Target& target, const WriteOptions& o,
                             const std::string& what, std::ostream& out, std::ostream& err) {
  // A target inside the source (or the source itself) would get the new files among the ones
  // being read; a source under --to as the checkpoint a commit replaces (--overwrite), or as what
  // a save clears (staging folders, checkpoints set aside), would be lost. Refused before
  // anything is written, a dry run included.
  const std::string target_name =
      fs::path(checkpoint::CheckpointDir(o.to, source.iteration)).filename().string();
  MIMO_RETURN_IF_ERROR(CheckTargetApart(o.from, o.to, o.from_what, [&](const std::string& name) {
    return name == target_name || absl::StartsWith(name, ".iter_") ||
           (absl::StartsWith(name, "iter_") && absl::EndsWith(name, ".replaced"));
  }));
  const ConsolidatedReader& reader = *source.reader;
  // The weights' dtype: the one the target spec trains in. A reshard's spec is the source job's,
  // so it is the source's; an import converts the export's weights to it.
  bool any_weight = false;
  for (const auto& [name, t] : reader.tensors()) {
    any_weight = any_weight || (!t.optimizer && (t.dtype == "BF16" || t.dtype == "F32"));
  }
  if (!any_weight) return absl::InvalidArgumentError("the source holds no bf16 or fp32 weights");
  const kernels::DType dtype = worker::ComputeDType(
      target.spec.training().precision(), target.spec.resources().device() == v1::DEVICE_KIND_CUDA);
  const int world = target.plan->world_size();
  std::vector<RankPlan> ranks;
  std::set<std::string> used;
  uint64_t total = 0;
  for (int r = 0; r < world; ++r) {
    absl::StatusOr<RankPlan> plan = PlanRank(target, r, dtype, reader, o.fresh, used);
    if (!plan.ok()) {
      return absl::Status(plan.status().code(),
                          absl::StrCat("target rank ", r, ": ", plan.status().message()));
    }
    for (const auto* file : {&plan->model, &plan->optim}) {
      for (const TensorPlan& t : *file) total += t.bytes();
    }
    ranks.push_back(*std::move(plan));
  }
  for (const auto& [name, t] : reader.tensors()) {
    if (!used.contains(name) && !(o.fresh && t.optimizer)) {
      return absl::InvalidArgumentError(absl::StrCat("the source's tensor \"", name,
                                                     "\" has no place in the target's model "
                                                     "(a checkpoint of another model?)"));
    }
  }
  const std::string layout = worker::LayoutOf(target.modules);
  if (o.dry_run) {
    out << what << "\n  to layout " << layout << " (" << world << " ranks, "
        << kernels::FormatBytes(static_cast<int64_t>(total)) << "):\n";
    for (int r = 0; r < world; ++r) {
      std::set<std::string> files;
      uint64_t bytes = 0;
      for (const auto* file : {&ranks[r].model, &ranks[r].optim}) {
        for (const TensorPlan& t : *file) {
          bytes += t.bytes();
          if (t.fill == Fill::kZero) continue;
          for (int f : reader.FilesOf(t.source, t.region)) {
            files.insert(fs::path(reader.files()[f]).filename().string());
          }
        }
      }
      out << "  " << RankLine(target, r) << ": " << ranks[r].model.size() + ranks[r].optim.size()
          << " tensors, " << kernels::FormatBytes(static_cast<int64_t>(bytes)) << " <- "
          << absl::StrJoin(files, ", ") << "\n";
    }
    out << "dry run: nothing written\n";
    return absl::OkStatus();
  }
  if (!o.overwrite) {
    MIMO_ASSIGN_OR_RETURN(const std::vector<int64_t> existing, checkpoint::ListCheckpoints(o.to));
    // The latest pointer also names a checkpoint a crash left aside mid-commit (which a trainer
    // resumes from), or one that is gone: either way --to is in use.
    const absl::StatusOr<std::optional<int64_t>> latest = checkpoint::LatestCheckpoint(o.to);
    if (!existing.empty() || !latest.ok() || latest->has_value()) {
      return absl::AlreadyExistsError(absl::StrCat(
          o.to, " already holds checkpoints (",
          !existing.empty() ? absl::StrCat("iteration ", existing.back())
          : latest.ok()     ? absl::StrCat("iteration ", **latest, ", set aside by a commit")
                            : std::string(latest.status().message()),
          "); refusing to write over them without --overwrite"));
    }
  }
  // The outermost folder of --to that does not exist yet: with the staging folder, what a write
  // that fails removes again, leaving --to as it was.
  fs::path to_path, created;
  {
    std::error_code ec;
    to_path = fs::absolute(o.to, ec).lexically_normal();
    if (!to_path.has_filename() && to_path.has_relative_path()) to_path = to_path.parent_path();
    for (fs::path p = to_path; !ec && p.has_relative_path() && !fs::exists(p, ec) && !ec;
         p = p.parent_path()) {
      created = p;
    }
  }
  const std::string staging = checkpoint::StagingDir(o.to, source.iteration);
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  uint64_t done = 0;
  // A commit replacing a checkpoint of the same iteration sets it aside, then removes it; what
  // could not be removed is reported (the new checkpoint stands).
  std::vector<std::string> not_removed;
  auto write = [&]() -> absl::Status {
    MIMO_RETURN_IF_ERROR(checkpoint::PrepareStaging(o.to, source.iteration).status());
    nlohmann::json files = nlohmann::json::object();
    ByteBuffer buffer, scratch;
    for (int r = 0; r < world; ++r) {
      const std::map<std::string, std::string> metadata = worker::RankStateMetadata(
          source.step, source.position, r, ranks[r].description.parameters);
      for (const auto& [kind, tensors] :
           {std::pair{"model", &ranks[r].model}, {"optim", &ranks[r].optim}}) {
        const std::string path = worker::RankStateFile(staging, kind, r);
        absl::StatusOr<checkpoint::FileDigest> digest =
            WriteFile(path, *tensors, metadata, reader, buffer, scratch);
        if (!digest.ok()) {
          return absl::Status(digest.status().code(),
                              absl::StrCat("target rank ", r, ": ", digest.status().message()));
        }
        files[fs::path(path).filename().string()] = {{"bytes", digest->bytes},
                                                     {"crc32c", digest->crc32c}};
        for (const TensorPlan& t : *tensors) done += t.bytes();
      }
      if (o.progress) {
        const int width = 30, filled = static_cast<int>(width * (r + 1) / world);
        err << "\r[" << std::string(filled, '#') << std::string(width - filled, ' ') << "] "
            << r + 1 << "/" << world << " ranks  "
            << kernels::FormatBytes(static_cast<int64_t>(done)) << "  "
            << kernels::FormatBytes(static_cast<int64_t>(done / std::max(seconds(), 1e-9))) << "/s"
            << std::flush;
      }
    }
    if (o.progress) err << "\n";
    MIMO_RETURN_IF_ERROR(worker::WriteCheckpointMetadata(
        staging, worker::CheckpointMetadata(target.spec, target.modules, source.iteration,
                                            source.position, files)));
    return checkpoint::CommitCheckpoint(o.to, source.iteration, /*keep=*/0, &not_removed);
  };
  if (absl::Status status = write(); !status.ok()) {
    // The staging folder goes (its files are of no use to a rerun, which starts it afresh), then
    // the folders of --to this write created, as far as they are empty.
    std::error_code ec, gone;
    fs::remove_all(staging, ec);
    // Not an error where there is none to remove (a --to below a file: ENOTDIR).
    if (ec && fs::symlink_status(staging, gone).type() != fs::file_type::not_found) {
      status = absl::Status(status.code(),
                            absl::StrCat(status.message(), "\nthe staging folder ", staging,
                                         " could not be removed: ", ec.message()));
    }
    for (fs::path p = to_path; !created.empty(); p = p.parent_path()) {
      std::error_code kept;  // A folder that holds anything stays, and so do its parents.
      if ((fs::remove(p, kept), kept) || p == created || !p.has_relative_path()) break;
    }
    return status;
  }
  const double s = seconds();
  out << what << "\n  to layout " << layout << ": " << world << " ranks, "
      << kernels::FormatBytes(static_cast<int64_t>(done)) << " in " << absl::StrFormat("%.2f", s)
      << " s (" << kernels::FormatBytes(static_cast<int64_t>(done / std::max(s, 1e-9))) << "/s) -> "
      << checkpoint::CheckpointDir(o.to, source.iteration) << "\n";
  for (const std::string& problem : not_removed) {
    err << "warning: the checkpoint this one replaced was set aside but could not be removed ("
        << problem
        << "); it takes disk space until removed by hand or cleared by the next save under " << o.to
        << "\n";
  }
  return absl::OkStatus();
}

// The checkpoint folder `from` names: itself when it holds metadata.json, else the latest
// checkpoint of the root it is.
absl::StatusOr<std::string> CheckpointFolder(const std::string& from) {
  std::error_code ec;
  if (fs::exists(from + "/metadata.json", ec)) return from;
  MIMO_ASSIGN_OR_RETURN(const std::optional<int64_t> latest, checkpoint::LatestCheckpoint(from));
  if (!latest.has_value()) {
    return absl::NotFoundError(
        absl::StrCat(from,
                     " is neither a checkpoint folder (no metadata.json) nor a checkpoint root "
                     "(no latest_checkpointed_iteration.txt)"));
  }
  return checkpoint::CommittedCheckpointFolder(from, *latest);
}

int Fail(const absl::Status& status, std::ostream& err) {
  for (absl::string_view line : absl::StrSplit(status.message(), '\n')) {
    err << "error: " << line << "\n";
  }
  return 1;
}

// A path flag given empty ("--from=", an unset variable) names no folder: "" + "/metadata.json"
// would be the filesystem root's. Refused by name before any path is read.
absl::Status NoneEmpty(std::initializer_list<std::pair<const char*, const std::string*>> flags) {
  for (const auto& [flag, value] : flags) {
    if (value->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " is empty: give it a path"));
    }
  }
  return absl::OkStatus();
}

absl::Status Reshard(const ReshardOptions& o, std::ostream& out, std::ostream& err) {
  MIMO_RETURN_IF_ERROR(NoneEmpty({{"--from", &o.from}, {"--to", &o.to}}));
  MIMO_ASSIGN_OR_RETURN(const std::string dir, CheckpointFolder(o.from));
  std::ifstream in(dir + "/metadata.json");
  if (!in) {  // A root's latest folder without it: another tool's checkpoint (Megatron's .pt).
    return absl::NotFoundError(absl::StrCat(dir, "/metadata.json cannot be read (",
                                            std::strerror(errno), "): not a mimo checkpoint"));
  }
  const nlohmann::json meta = nlohmann::json::parse(in, nullptr, false);
  if (!meta.is_object() || !meta.contains("iteration") || !meta["iteration"].is_number_integer()) {
    return absl::DataLossError(absl::StrCat(dir, "/metadata.json is not a checkpoint's metadata"));
  }
  if (!meta.contains("job_spec") || !meta["job_spec"].is_object()) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir,
                     "/metadata.json records no job_spec (a checkpoint saved before resharding was "
                     "supported): resume it in its own layout and save again"));
  }
  MIMO_ASSIGN_OR_RETURN(const v1::JobSpec spec,
                        ParseJobSpec(meta["job_spec"].dump(), SpecFormat::kJson));
  MIMO_ASSIGN_OR_RETURN(const Target target, PlanTarget(spec, o.components, o.world));
  // Damaged files would be copied under fresh checksums: checked first, as a resume checks them.
  MIMO_RETURN_IF_ERROR(VerifyCheckpointFiles(dir, meta));
  Source source{.iteration = meta["iteration"].get<int64_t>(),
                .layout = meta.value("layout", std::string())};
  MIMO_ASSIGN_OR_RETURN(source.reader, ConsolidatedReader::Open(dir));
  // The step and data position as the ranks' files record them: every file the same (files of
  // different saves, their checksums listed anew, would be written out as one save's).
  MIMO_ASSIGN_OR_RETURN(const auto saved, SavedStep(source.reader->files(), /*required=*/true));
  std::tie(source.step, source.position) = *saved;
  const WriteOptions w{.from = dir,
                       .from_what = "the source checkpoint folder",
                       .to = o.to,
                       .dry_run = o.dry_run,
                       .overwrite = o.overwrite,
                       .progress = o.progress};
  return WriteCheckpoint(
      source, target, w,
      absl::StrCat("iteration ", source.iteration, " of ", dir, " (layout ", source.layout, ")"),
      out, err);
}

absl::Status Import(const ImportOptions& o, std::ostream& out, std::ostream& err) {
  MIMO_RETURN_IF_ERROR(NoneEmpty({{"--from", &o.from}, {"--to", &o.to}, {"--spec", &o.spec}}));
  MIMO_ASSIGN_OR_RETURN(const v1::JobSpec spec, ReadJobSpecFile(o.spec));
  MIMO_ASSIGN_OR_RETURN(const Target target, PlanTarget(spec, o.components, o.world));
  // Every safetensors file of the export's module folders (or of the folder itself); hidden
  // entries skipped (an export's folders in the making, or an earlier one's set aside).
  std::vector<std::string> paths;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(o.from, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->path().filename().string().starts_with(".")) {
      it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file() && it->path().extension() == ".safetensors") {
      paths.push_back(it->path().string());
    }
  }
  if (ec) return absl::ErrnoToStatus(ec.value(), absl::StrCat("cannot list ", o.from));
  if (paths.empty()) {
    return absl::NotFoundError(absl::StrCat(o.from, " holds no .safetensors files"));
  }
  // A checkpoint's rank files hold mimo's layout (its fused QKV rows, shards), not an export's
  // whole Megatron-ordered tensors: read as weights they would be scrambled. And an export holds
  // each tensor once: one in two files (two exports under --from) is ambiguous.
  std::sort(paths.begin(), paths.end());
  std::map<std::string, std::string> file_of;
  for (const std::string& path : paths) {
    MIMO_ASSIGN_OR_RETURN(const checkpoint::SafetensorsReader file,
                          checkpoint::SafetensorsReader::Open(path));
    const auto format = file.header().metadata.find("format");
    if (format != file.header().metadata.end() && format->second == worker::kRankStateFormat) {
      return absl::InvalidArgumentError(absl::StrCat(
          path,
          " is a mimo checkpoint's rank file, not exported weights: reshard the checkpoint "
          "(mimo-convert reshard --from CHECKPOINT), or export it first"));
    }
    for (const checkpoint::TensorEntry& t : file.header().tensors) {
      const auto [it, inserted] = file_of.emplace(t.name, path);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, " is in both ",
                                                       it->second, " and ", path,
                                                       ": --from holds more than one export"));
      }
    }
  }
  // The attention sizes an export's fused QKV rows were ordered by (its config.json's spec) must
  // be the target's: read by other sizes they would be scrambled, and shapes do not tell (with
  // one query group per head, any head count gives the same ones).
  std::set<std::string> folders;
  for (const std::string& path : paths) folders.insert(fs::path(path).parent_path().string());
  for (const std::string& folder : folders) {
    std::ifstream in(folder + "/config.json");
    const nlohmann::json config = in ? nlohmann::json::parse(in, nullptr, false) : nullptr;
    if (!config.is_object() || !config.contains("spec") || !config["spec"].is_object()) continue;
    v1::Module exported;
    google::protobuf::util::JsonParseOptions lenient;  // An export of a later version's spec.
    lenient.ignore_unknown_fields = true;
    if (!google::protobuf::util::JsonStringToMessage(config["spec"].dump(), &exported, lenient)
             .ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(folder, "/config.json: its spec is not a module's spec"));
    }
    const absl::StatusOr<QkvShape> from = QkvShapeOf(exported);
    for (const v1::Module& m : target.spec.modules()) {
      const absl::StatusOr<QkvShape> to = QkvShapeOf(m);
      if (m.model_case() != exported.model_case() || !from.ok() || !to.ok()) continue;
      if (from->heads != to->heads || from->groups != to->groups ||
          from->head_dim != to->head_dim) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s was exported from a model with %d attention heads in %d query groups of width "
            "%d (its config.json), the spec's module \"%s\" has %d in %d of width %d: another "
            "model, whose fused QKV rows would be read in the wrong order",
            folder, from->heads, from->groups, from->head_dim, m.name(), to->heads, to->groups,
            to->head_dim));
      }
    }
  }
  Source source;
  MIMO_ASSIGN_OR_RETURN(source.reader, ConsolidatedReader::OpenFiles(paths));
  const WriteOptions w{.from = o.from,
                       .from_what = "the export folder (--from)",
                       .to = o.to,
                       .dry_run = o.dry_run,
                       .overwrite = o.overwrite,
                       .progress = o.progress,
                       .fresh = true};
  return WriteCheckpoint(source, target, w, absl::StrCat("the weights of ", o.from), out, err);
}

}  // namespace

int RunReshard(const ReshardOptions& options, std::ostream& out, std::ostream& err) {
  const absl::Status status = Reshard(options, out, err);
  return status.ok() ? 0 : Fail(status, err);
}

int RunImport(const ImportOptions& options, std::ostream& out, std::ostream& err) {
  const absl::Status status = Import(options, out, err);
  return status.ok() ? 0 : Fail(status, err);
}

}  // namespace mimo::tools
