// Trainer::SaveState / LoadState: a rank's parameters, optimizer state, expert biases, step and
// data position as safetensors files, one tensor at a time through a host buffer.
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/safetensors.h"
#include "common/status_macros.h"
#include "mimo/moe_layer.h"
#include "nlohmann/json.hpp"
#include "worker/trainer.h"

namespace mimo::worker {
namespace {

using kernels::DType;
using kernels::Tensor;

constexpr char kFormat[] = "mimo.rank_state";
constexpr char kVersion[] = "1";

std::string SafetensorsDType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
  }
  return "";
}

std::string FileName(const std::string& dir, const char* kind, int rank) {
  return absl::StrFormat("%s/%s_rank_%05d.safetensors", dir, kind, rank);
}

// A named device tensor to save or restore.
struct Named {
  std::string name;
  Tensor tensor;
};

absl::StatusOr<checkpoint::FileDigest> Write(kernels::Ops& ops, const std::string& path,
                                             const std::vector<Named>& tensors,
                                             const std::map<std::string, std::string>& metadata) {
  std::vector<checkpoint::TensorToWrite> specs;
  for (const Named& n : tensors) {
    specs.push_back({.name = n.name,
                     .dtype = SafetensorsDType(n.tensor.dtype()),
                     .shape = {n.tensor.shape().begin(), n.tensor.shape().end()}});
  }
  // Streamed through one host buffer, a tensor at a time (never the rank's whole state).
  MIMO_ASSIGN_OR_RETURN(checkpoint::SafetensorsStreamWriter writer,
                        checkpoint::SafetensorsStreamWriter::Create(path, specs, metadata));
  std::vector<char> host;
  for (const Named& n : tensors) {
    host.resize(n.tensor.nbytes());
    if (absl::Status s = ops.CopyToHost(host.data(), n.tensor.data(), host.size()); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("saving \"", n.name, "\": ", s.message()));
    }
    MIMO_RETURN_IF_ERROR(writer.Append(host));
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
  if (get("format") != kFormat || get("version") != kVersion ||
      !absl::SimpleAtoi(get("step"), &step) || !absl::SimpleAtoi(get("position"), &position) ||
      !absl::SimpleAtoi(get("rank"), &saved_rank)) {
    return absl::DataLossError(absl::StrCat(
        reader.path(), " is not a ", kFormat, " version ", kVersion,
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
                  const std::string& name, const Tensor& t, std::vector<char>& buffer) {
  const checkpoint::TensorEntry* e = reader.header().Find(name);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat(reader.path(), " has no tensor \"", name, "\""));
  }
  const std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
  if (e->dtype != SafetensorsDType(t.dtype()) || e->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", name, "\" of ", reader.path(), " is ", e->dtype, " (",
        absl::StrJoin(e->shape, ", "), "); this trainer's is ", SafetensorsDType(t.dtype()), " (",
        absl::StrJoin(shape, ", "), "): a checkpoint of another model or layout"));
  }
  buffer.resize(t.nbytes());
  MIMO_RETURN_IF_ERROR(reader.Read(name, absl::MakeSpan(buffer)));
  if (t.nbytes() == 0) return absl::OkStatus();
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(t.data(), buffer.data(), t.nbytes()));
  return ops.Synchronize();  // The buffer is reused for the next tensor.
}

}  // namespace

absl::StatusOr<std::map<std::string, checkpoint::FileDigest>> Trainer::SaveState(
    const std::string& dir, int rank) const {
  std::vector<Parameter*> params;
  AppendParameters(params);
  std::vector<Named> model, optim;
  for (Parameter* p : params) {
    model.push_back({p->name(), p->weight()});
    // The master, where the parameter keeps its own apart from its weight (the distributed
    // optimizer's shards hold the masters it released).
    if (p->master().data() != nullptr && p->master().data() != p->weight().data()) {
      optim.push_back({p->name() + ".master", p->master()});
    }
  }
  for (auto& [name, t] : update_.adamw->StateTensors()) optim.push_back({name, t});
  if (update_.distributed != nullptr) {
    for (auto& [name, t] : update_.distributed->StateTensors()) {
      optim.push_back({"distributed." + name, t});
    }
  }
  const std::vector<MoeLayer*> layers = MoeLayers();
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i]->expert_bias_enabled()) {
      optim.push_back({absl::StrCat("moe.", i, ".expert_bias"), layers[i]->expert_bias()});
    }
  }
  // Where each sharded parameter's slice lies in its full tensor (for resharding): per name,
  // for each split dimension the ranges of it this rank holds, in order, and the full size.
  nlohmann::json shards = nlohmann::json::object();
  for (Parameter* p : params) {
    if (p->spec().shards.empty()) continue;
    nlohmann::json dims = nlohmann::json::array();
    for (const ParameterShard& shard : p->spec().shards) {
      nlohmann::json ranges = nlohmann::json::array();
      for (const ShardRange& r : ShardRanges(shard, p->spec().shape[shard.dim])) {
        ranges.push_back({r.start, r.size});
      }
      dims.push_back({{"dim", shard.dim}, {"full_size", shard.full_size}, {"ranges", ranges}});
    }
    shards[p->name()] = dims;
  }
  std::map<std::string, std::string> metadata = {{"format", kFormat},
                                                 {"version", kVersion},
                                                 {"step", absl::StrCat(update_.adamw->steps())},
                                                 {"position", absl::StrCat(position_)},
                                                 {"rank", absl::StrCat(rank)}};
  MIMO_RETURN_IF_ERROR(ops_.Synchronize());
  std::map<std::string, checkpoint::FileDigest> digests;
  for (const auto& [kind, tensors] : {std::pair{"model", &model}, {"optim", &optim}}) {
    const std::string path = FileName(dir, kind, rank);
    std::map<std::string, std::string> file_metadata = metadata;
    if (tensors == &model && !shards.empty()) file_metadata["shards"] = shards.dump();
    MIMO_ASSIGN_OR_RETURN(const checkpoint::FileDigest digest,
                          Write(ops_, path, *tensors, file_metadata));
    digests[path.substr(dir.size() + 1)] = digest;
  }
  return digests;
}

absl::Status Trainer::LoadState(const std::string& dir, int rank) {
  if (update_.adamw->steps() != 0 || position_ != options_.start_position) {
    return absl::FailedPreconditionError(
        "Trainer::LoadState: into a trainer that has stepped (restore into a new one)");
  }
  MIMO_ASSIGN_OR_RETURN(const checkpoint::SafetensorsReader model,
                        checkpoint::SafetensorsReader::Open(FileName(dir, "model", rank)));
  MIMO_ASSIGN_OR_RETURN(const checkpoint::SafetensorsReader optim,
                        checkpoint::SafetensorsReader::Open(FileName(dir, "optim", rank)));
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
  std::vector<char> buffer;
  for (Parameter* p : params) {
    MIMO_RETURN_IF_ERROR(Read(ops_, model, p->name(), p->weight(), buffer));
    if (p->master().data() != nullptr && p->master().data() != p->weight().data()) {
      MIMO_RETURN_IF_ERROR(Read(ops_, optim, p->name() + ".master", p->master(), buffer));
    }
  }
  for (const auto& [name, t] : update_.adamw->StateTensors()) {
    MIMO_RETURN_IF_ERROR(Read(ops_, optim, name, t, buffer));
  }
  if (update_.distributed != nullptr) {
    for (const auto& [name, t] : update_.distributed->StateTensors()) {
      MIMO_RETURN_IF_ERROR(Read(ops_, optim, "distributed." + name, t, buffer));
    }
    update_.distributed->set_steps(step);
  }
  const std::vector<MoeLayer*> layers = MoeLayers();
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i]->expert_bias_enabled()) {
      MIMO_RETURN_IF_ERROR(Read(ops_, optim, absl::StrCat("moe.", i, ".expert_bias"),
                                layers[i]->expert_bias(), buffer));
    }
  }
  update_.adamw->set_steps(step);
  position_ = position;
  return absl::OkStatus();
}

}  // namespace mimo::worker
