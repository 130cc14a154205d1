// Trainer::SaveState / CaptureState / LoadState: a rank's parameters, optimizer state, expert
// biases, step and data position as safetensors files, one tensor at a time through a host
// buffer, or copied to host memory whole to be written later.
#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/consolidated_reader.h"
#include "checkpoint/safetensors.h"
#include "common/byte_buffer.h"
#include "common/status_macros.h"
#include "mimo/moe_layer.h"
#include "nlohmann/json.hpp"
#include "worker/rank_state_format.h"
#include "worker/trainer.h"

namespace mimo::worker {
namespace {

using kernels::DType;
using kernels::Tensor;

// Writes device tensors into a safetensors file at `path`.
absl::StatusOr<checkpoint::FileDigest> Write(
    kernels::Ops& ops, const std::string& path,
    const std::vector<std::pair<std::string, Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::vector<checkpoint::TensorToWrite> specs;
  for (const auto& [name, t] : tensors) {
    specs.push_back({.name = name,
                     .dtype = SafetensorsDType(t.dtype()),
                     .shape = {t.shape().begin(), t.shape().end()}});
  }
  // Streamed through one host buffer, a tensor at a time (never the rank's whole state).
  MIMO_ASSIGN_OR_RETURN(checkpoint::SafetensorsStreamWriter writer,
                        checkpoint::SafetensorsStreamWriter::Create(path, specs, metadata));
  ByteBuffer host;
  for (const auto& [name, t] : tensors) {
    MIMO_RETURN_IF_ERROR(host.Resize(t.nbytes()));
    if (absl::Status s = ops.CopyToHost(host.data(), t.data(), host.size()); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("saving \"", name, "\": ", s.message()));
    }
    MIMO_RETURN_IF_ERROR(writer.Append(host.span()));
  }
  return writer.Finish();
}

// Checks `reader`'s metadata against what this trainer is; returns the saved step and position.
absl::Status CheckMetadata(const checkpoint::SafetensorsReader& reader, int rank, int64_t& step,
                           int64_t& position) {
  const std::map<std::string, std::string>& m = reader.header().metadata;
  auto get = [&](const char* key) -> std::string {
    const auto it = m.find(key);
    return it == m.end() ? "" : it->second;
  };
  int64_t saved_rank = -1;
  if (get("format") != kRankStateFormat || get("version") != kRankStateVersion ||
      !absl::SimpleAtoi(get("step"), &step) || !absl::SimpleAtoi(get("position"), &position) ||
      !absl::SimpleAtoi(get("rank"), &saved_rank)) {
    return absl::DataLossError(absl::StrCat(
        reader.path(), " is not a ", kRankStateFormat, " version ", kRankStateVersion,
        " file (its metadata: format \"", get("format"), "\", version \"", get("version"), "\")"));
  }
  if (saved_rank != rank) {
    return absl::InvalidArgumentError(
        absl::StrCat(reader.path(), " holds rank ", saved_rank, "'s state, not rank ", rank, "'s"));
  }
  return absl::OkStatus();
}

// `t`'s contents from the tensor `name` of `reader`, which must have its dtype and shape.
absl::Status Read(kernels::Ops& ops, const checkpoint::SafetensorsReader& reader,
                  const std::string& name, const Tensor& t, ByteBuffer& buffer) {
  const checkpoint::TensorEntry* e = reader.header().Find(name);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat(reader.path(), " has no tensor \"", name, "\""));
  }
  const std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
  if (e->dtype != SafetensorsDType(t.dtype()) || e->shape != shape) {
    // Only the dtype apart: the job trains in another precision than the checkpoint's run.
    const bool precision = e->shape == shape && (e->dtype == "F32" || e->dtype == "BF16");
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", name, "\" of ", reader.path(), " is ", e->dtype, " (",
        absl::StrJoin(e->shape, ", "), "); this trainer's is ", SafetensorsDType(t.dtype()), " (",
        absl::StrJoin(shape, ", "), "): ",
        precision ? "the checkpoint was trained in another precision (training.precision, or the "
                    "device kind when it is unset: bf16 on GPUs, fp32 on CPUs); set it to match, "
                    "or export and import the weights to change it"
                  : "a checkpoint of another model or layout"));
  }
  MIMO_RETURN_IF_ERROR(buffer.Resize(t.nbytes()));
  MIMO_RETURN_IF_ERROR(reader.Read(name, buffer.span()));
  if (t.nbytes() == 0) return absl::OkStatus();
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(t.data(), buffer.data(), t.nbytes()));
  return ops.Synchronize();  // The buffer is reused for the next tensor.
}

// The optimizer file's "pieces" (parameter name -> {"offset": its first element, "shape": the
// parameter's}) of the distributed optimizer's runs; an empty object when it has none.
absl::StatusOr<nlohmann::json> PiecesOf(const checkpoint::SafetensorsReader& reader) {
  const auto it = reader.header().metadata.find("pieces");
  if (it == reader.header().metadata.end()) return nlohmann::json::object();
  nlohmann::json pieces = nlohmann::json::parse(it->second, nullptr, false);
  if (!pieces.is_object()) {
    return absl::DataLossError(absl::StrCat(reader.path(), ": \"pieces\" is not a JSON object"));
  }
  return pieces;
}

// The distributed optimizer's piece `piece` of tensor `name` into `t` ((elements,) fp32): from a
// run saved as the same piece, or sliced from the parameter's whole local tensor (as a run with
// the plain optimizer or mimo-convert writes it).
absl::Status ReadPiece(kernels::Ops& ops, const checkpoint::SafetensorsReader& reader,
                       const nlohmann::json& pieces, const std::string& name,
                       const DistributedOptimizer::StatePiece& piece, const Tensor& t,
                       ByteBuffer& buffer) {
  const checkpoint::TensorEntry* e = reader.header().Find(name);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat(reader.path(), " has no tensor \"", name, "\""));
  }
  const std::string& param = piece.param->name();
  const std::vector<int64_t> whole(piece.param->spec().shape.begin(),
                                   piece.param->spec().shape.end());
  int64_t skip = 0;
  if (e->dtype == "F32" && e->shape == whole) {
    skip = piece.param_offset;
  } else if (!(e->dtype == "F32" && e->shape == std::vector<int64_t>{piece.elements} &&
               pieces.contains(param) &&
               pieces[param] == nlohmann::json{{"offset", piece.param_offset}, {"shape", whole}})) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\" of ", reader.path(), " is ", e->dtype, " (",
                     absl::StrJoin(e->shape, ", "), "), neither the whole parameter (",
                     absl::StrJoin(whole, ", "), ") nor this rank's run of its elements from ",
                     piece.param_offset, ": a checkpoint of another model or layout"));
  }
  MIMO_RETURN_IF_ERROR(buffer.Resize(e->end - e->begin));
  MIMO_RETURN_IF_ERROR(reader.Read(name, buffer.span()));
  MIMO_RETURN_IF_ERROR(
      ops.CopyFromHost(t.data(), buffer.data() + skip * sizeof(float), t.nbytes()));
  return ops.Synchronize();  // The buffer is reused for the next tensor.
}

// Where a restored rank's tensors come from: its own files, or, for the replicas another rank
// saved (SaveState writes each once), any rank's files of the checkpoint read as whole tensors.
class StateSource {
 public:
  // `sources`: the ranks whose files hold what this rank's lack (empty: any rank's).
  StateSource(kernels::Ops& ops, std::string dir, std::vector<int> sources)
      : ops_(ops), dir_(std::move(dir)), sources_(std::move(sources)) {}

  // Tensor `name` of `own` into `t`, or, when `own` does not hold it, the region `spec` holds
  // (whole: `t`'s shape) of the checkpoint's tensor `name`.
  absl::Status Read(const checkpoint::SafetensorsReader& own, const std::string& name,
                    const ParameterSpec* spec, const Tensor& t) {
    if (own.header().Find(name) != nullptr) return worker::Read(ops_, own, name, t, buffer_);
    MIMO_RETURN_IF_ERROR(FromAll(name, spec, t));
    MIMO_RETURN_IF_ERROR(ops_.CopyFromHost(t.data(), buffer_.data(), t.nbytes()));
    return ops_.Synchronize();  // The buffer is reused for the next tensor.
  }

  // The distributed optimizer's run `piece` of `name`: from `own` (a run, or the whole
  // parameter), else sliced from the parameter's whole region in the checkpoint.
  absl::Status ReadPiece(const checkpoint::SafetensorsReader& own, const nlohmann::json& pieces,
                         const std::string& name, const DistributedOptimizer::StatePiece& piece,
                         const Tensor& t) {
    if (own.header().Find(name) != nullptr) {
      return worker::ReadPiece(ops_, own, pieces, name, piece, t, buffer_);
    }
    MIMO_RETURN_IF_ERROR(FromAll(name, &piece.param->spec(), Tensor()));
    MIMO_RETURN_IF_ERROR(ops_.CopyFromHost(
        t.data(), buffer_.data() + piece.param_offset * sizeof(float), t.nbytes()));
    return ops_.Synchronize();
  }

 private:
  // The region into buffer_, checked against the dtype and full shape expected.
  absl::Status FromAll(const std::string& name, const ParameterSpec* spec, const Tensor& t) {
    if (!all_.has_value() && sources_.empty()) {
      MIMO_ASSIGN_OR_RETURN(all_, checkpoint::ConsolidatedReader::Open(dir_));
    } else if (!all_.has_value()) {
      std::vector<int> ranks = sources_;
      std::sort(ranks.begin(), ranks.end());
      ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
      std::vector<std::string> paths;
      for (int r : ranks) {
        for (const char* kind : {"model", "optim"}) paths.push_back(RankStateFile(dir_, kind, r));
      }
      MIMO_ASSIGN_OR_RETURN(all_, checkpoint::ConsolidatedReader::OpenFiles(paths, true));
    }
    const auto it = all_->tensors().find(name);
    if (it == all_->tensors().end()) {
      return absl::NotFoundError(absl::StrCat("no file of ", dir_, " holds tensor \"", name, "\""));
    }
    std::vector<int64_t> full(t.shape().begin(), t.shape().end());
    checkpoint::Region region;
    if (spec != nullptr) {
      region = RegionOf(*spec, &full);
    } else {
      for (int64_t n : full) region.push_back({{0, n}});
    }
    const std::string dtype =
        t.data() != nullptr || spec == nullptr ? SafetensorsDType(t.dtype()) : std::string("F32");
    if (it->second.dtype != dtype || it->second.shape != full) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", name, "\" of ", dir_, " is ", it->second.dtype, " [",
                       absl::StrJoin(it->second.shape, ", "), "]; this trainer's is ", dtype, " [",
                       absl::StrJoin(full, ", "), "]: a checkpoint of another model or layout"));
    }
    int64_t elements = 1;
    for (const auto& dim : region) {
      int64_t n = 0;
      for (const auto& r : dim) n += r.second;
      elements *= n;
    }
    MIMO_RETURN_IF_ERROR(buffer_.Resize(elements * checkpoint::DTypeBytes(dtype)));
    return all_->ReadRegion(name, region, buffer_.span());
  }

  kernels::Ops& ops_;
  const std::string dir_;
  const std::vector<int> sources_;
  std::optional<checkpoint::ConsolidatedReader> all_;  // Opened on first need.
  ByteBuffer buffer_;
};

}  // namespace

absl::StatusOr<std::vector<Trainer::StateFile>> Trainer::StateFiles(int rank) const {
  std::vector<Parameter*> params;
  AppendParameters(params);
  // Replicas are saved once, by member 0 of the group that holds copies of them (the dense
  // parameters' gradient group, the routed experts' expt_dp); the other members read them from
  // its files (LoadState). The distributed optimizer's runs are every rank's own.
  const absl::flat_hash_set<const Parameter*> routed(experts_.begin(), experts_.end());
  const bool dense_owner = ModelGroups::Rank(GradientGroup()) == 0;
  const bool expert_owner = ModelGroups::Rank(ExpertDataParallelGroup()) == 0;
  absl::flat_hash_set<std::string> replicas;  // Parameters another rank saves.
  StateFile model{.kind = "model"}, optim{.kind = "optim"};
  for (Parameter* p : params) {
    if (!(routed.contains(p) ? expert_owner : dense_owner)) {
      replicas.insert(p->name());
      continue;
    }
    model.tensors.push_back({p->name(), p->weight()});
    // The master, where the parameter keeps its own apart from its weight (the distributed
    // optimizer's shards hold the masters it released).
    if (p->master().data() != nullptr && p->master().data() != p->weight().data()) {
      optim.tensors.push_back({p->name() + ".master", p->master()});
    }
  }
  for (auto& [name, t] : update_.adamw->StateTensors()) {
    if (!replicas.contains(name.substr(0, name.rfind('.')))) optim.tensors.push_back({name, t});
  }
  // The distributed optimizer's shards by parameter: each piece a flat run of the parameter's
  // elements, placed by "pieces" (any layout reads them, as it reads whole ones).
  nlohmann::json pieces = nlohmann::json::object();
  if (update_.distributed != nullptr) {
    MIMO_ASSIGN_OR_RETURN(const auto state, update_.distributed->StatePieces());
    for (const DistributedOptimizer::StatePiece& piece : state) {
      const std::string& name = piece.param->name();
      if (piece.weight_dtype != DType::kF32) {
        optim.tensors.push_back({name + ".master", piece.master});
      }
      optim.tensors.push_back({name + ".exp_avg", piece.exp_avg});
      optim.tensors.push_back({name + ".exp_avg_sq", piece.exp_avg_sq});
      pieces[name] = {{"offset", piece.param_offset},
                      {"shape", std::vector<int64_t>(piece.param->spec().shape.begin(),
                                                     piece.param->spec().shape.end())}};
    }
  }
  for (const MoeLayer* layer : MoeLayers()) {
    if (layer->expert_bias_enabled() && dense_owner) {
      optim.tensors.push_back({layer->expert_bias_name(), layer->expert_bias()});
    }
  }
  std::vector<ParameterSpec> specs;
  for (const Parameter* p : params) specs.push_back(p->spec());
  // The optimizer's tensors of a sharded parameter lie where its weight does ("shards").
  model.metadata = RankStateMetadata(update_.adamw->steps(), position_, rank, specs);
  optim.metadata = model.metadata;
  if (!pieces.empty()) optim.metadata["pieces"] = pieces.dump();
  std::vector<StateFile> files;
  files.push_back(std::move(model));
  files.push_back(std::move(optim));
  return files;
}

absl::StatusOr<std::map<std::string, checkpoint::FileDigest>> Trainer::SaveState(
    const std::string& dir, int rank) const {
  MIMO_ASSIGN_OR_RETURN(const std::vector<StateFile> files, StateFiles(rank));
  MIMO_RETURN_IF_ERROR(ops_.Synchronize());
  std::map<std::string, checkpoint::FileDigest> digests;
  for (const StateFile& file : files) {
    const std::string path = RankStateFile(dir, file.kind, rank);
    MIMO_ASSIGN_OR_RETURN(digests[path.substr(dir.size() + 1)],
                          Write(ops_, path, file.tensors, file.metadata));
  }
  return digests;
}

absl::StatusOr<std::unique_ptr<HostRankState>> Trainer::CaptureState(int rank) const {
  MIMO_ASSIGN_OR_RETURN(const std::vector<StateFile> files, StateFiles(rank));
  MIMO_RETURN_IF_ERROR(ops_.Synchronize());
  auto state = std::make_unique<HostRankState>();
  state->rank = rank;
  state->position = position_;
  for (const StateFile& file : files) {
    HostStateFile& host = state->files.emplace_back();
    host.kind = file.kind;
    host.metadata = file.metadata;
    host.tensors.resize(file.tensors.size());
    for (size_t i = 0; i < file.tensors.size(); ++i) {
      const auto& [name, t] = file.tensors[i];
      HostTensor& h = host.tensors[i];
      h.name = name;
      h.dtype = SafetensorsDType(t.dtype());
      h.shape.assign(t.shape().begin(), t.shape().end());
      MIMO_RETURN_IF_ERROR(h.bytes.Resize(t.nbytes()));
      MIMO_RETURN_IF_ERROR(ops_.CopyToHost(h.bytes.data(), t.data(), t.nbytes()));
    }
  }
  MIMO_RETURN_IF_ERROR(ops_.Synchronize());
  return state;
}

absl::Status Trainer::LoadState(const std::string& dir, int rank, const std::vector<int>& sources) {
  if (update_.adamw->steps() != 0 || position_ != options_.start_position) {
    return absl::FailedPreconditionError(
        "Trainer::LoadState: into a trainer that has stepped (restore into a new one)");
  }
  MIMO_ASSIGN_OR_RETURN(const checkpoint::SafetensorsReader model,
                        checkpoint::SafetensorsReader::Open(RankStateFile(dir, "model", rank)));
  MIMO_ASSIGN_OR_RETURN(const checkpoint::SafetensorsReader optim,
                        checkpoint::SafetensorsReader::Open(RankStateFile(dir, "optim", rank)));
  int64_t step = 0, position = 0, step2 = 0, position2 = 0;
  MIMO_RETURN_IF_ERROR(CheckMetadata(model, rank, step, position));
  MIMO_RETURN_IF_ERROR(CheckMetadata(optim, rank, step2, position2));
  if (step != step2 || position != position2) {
    return absl::DataLossError(absl::StrCat("the model and optimizer files of rank ", rank, " in ",
                                            dir, " are of different steps (", step, " and ", step2,
                                            ")"));
  }
  std::vector<Parameter*> params;
  AppendParameters(params);
  absl::flat_hash_map<std::string, const ParameterSpec*> spec_of;
  for (const Parameter* p : params) spec_of[p->name()] = &p->spec();
  StateSource source(ops_, dir, sources);
  for (Parameter* p : params) {
    MIMO_RETURN_IF_ERROR(source.Read(model, p->name(), &p->spec(), p->weight()));
    if (p->master().data() != nullptr && p->master().data() != p->weight().data()) {
      MIMO_RETURN_IF_ERROR(source.Read(optim, p->name() + ".master", &p->spec(), p->master()));
    }
  }
  for (const auto& [name, t] : update_.adamw->StateTensors()) {
    MIMO_RETURN_IF_ERROR(source.Read(optim, name, spec_of.at(name.substr(0, name.rfind('.'))), t));
  }
  if (update_.distributed != nullptr) {
    MIMO_ASSIGN_OR_RETURN(const auto state, update_.distributed->StatePieces());
    MIMO_ASSIGN_OR_RETURN(const nlohmann::json pieces, PiecesOf(optim));
    for (const DistributedOptimizer::StatePiece& piece : state) {
      const std::string& name = piece.param->name();
      if (piece.weight_dtype == DType::kF32) {
        // The weight is the master: the optimizer's copy of it from the weight just read.
        MIMO_RETURN_IF_ERROR(ops_.Copy(piece.master.data(),
                                       piece.param->weight().data<float>() + piece.param_offset,
                                       piece.master.nbytes()));
      } else {
        MIMO_RETURN_IF_ERROR(
            source.ReadPiece(optim, pieces, name + ".master", piece, piece.master));
      }
      MIMO_RETURN_IF_ERROR(
          source.ReadPiece(optim, pieces, name + ".exp_avg", piece, piece.exp_avg));
      MIMO_RETURN_IF_ERROR(
          source.ReadPiece(optim, pieces, name + ".exp_avg_sq", piece, piece.exp_avg_sq));
    }
    update_.distributed->set_steps(step);
  }
  for (MoeLayer* layer : MoeLayers()) {
    if (layer->expert_bias_enabled()) {
      MIMO_RETURN_IF_ERROR(
          source.Read(optim, layer->expert_bias_name(), nullptr, layer->expert_bias()));
    }
  }
  update_.adamw->set_steps(step);
  position_ = position;
  return absl::OkStatus();
}

}  // namespace mimo::worker
