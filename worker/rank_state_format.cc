// RankStateFile, SafetensorsDType and RankStateMetadata.
#include "worker/rank_state_format.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace mimo::worker {

std::string RankStateFile(const std::string& dir, const char* kind, int rank) {
  return absl::StrFormat("%s/%s_rank_%05d.safetensors", dir, kind, rank);
}

std::string SafetensorsDType(kernels::DType dtype) {
  switch (dtype) {
    case kernels::DType::kF32:
      return "F32";
    case kernels::DType::kBF16:
      return "BF16";
    case kernels::DType::kI32:
      return "I32";
    case kernels::DType::kI64:
      return "I64";
  }
  return "";
}

std::map<std::string, std::string> RankStateMetadata(int64_t step, int64_t position, int rank,
                                                     const std::vector<ParameterSpec>& params) {
  std::map<std::string, std::string> metadata = {{"format", kRankStateFormat},
                                                 {"version", kRankStateVersion},
                                                 {"step", absl::StrCat(step)},
                                                 {"position", absl::StrCat(position)},
                                                 {"rank", absl::StrCat(rank)}};
  nlohmann::json shards = nlohmann::json::object();
  for (const ParameterSpec& p : params) {
    if (p.shards.empty()) continue;
    nlohmann::json dims = nlohmann::json::array();
    for (const ParameterShard& shard : p.shards) {
      nlohmann::json ranges = nlohmann::json::array();
      for (const ShardRange& r : ShardRanges(shard, p.shape[shard.dim])) {
        ranges.push_back({r.start, r.size});
      }
      dims.push_back({{"dim", shard.dim}, {"full_size", shard.full_size}, {"ranges", ranges}});
    }
    shards[p.name] = dims;
  }
  if (!shards.empty()) metadata["shards"] = shards.dump();
  return metadata;
}

checkpoint::Region RegionOf(const ParameterSpec& p, std::vector<int64_t>* full) {
  checkpoint::Region region;
  for (int64_t n : p.shape) region.push_back({{0, n}});
  if (full != nullptr) full->assign(p.shape.begin(), p.shape.end());
  for (const ParameterShard& shard : p.shards) {
    region[shard.dim].clear();
    for (const ShardRange& r : ShardRanges(shard, p.shape[shard.dim])) {
      region[shard.dim].push_back({r.start, r.size});
    }
    if (full != nullptr) (*full)[shard.dim] = shard.full_size;
  }
  return region;
}

absl::StatusOr<std::map<std::string, checkpoint::FileDigest>> WriteRankState(
    const HostRankState& state, const std::string& dir) {
  std::map<std::string, checkpoint::FileDigest> digests;
  for (const HostStateFile& file : state.files) {
    const std::string path = RankStateFile(dir, file.kind.c_str(), state.rank);
    std::vector<checkpoint::TensorToWrite> specs;
    for (const HostTensor& t : file.tensors) {
      specs.push_back({.name = t.name, .dtype = t.dtype, .shape = t.shape});
    }
    MIMO_ASSIGN_OR_RETURN(checkpoint::SafetensorsStreamWriter writer,
                          checkpoint::SafetensorsStreamWriter::Create(path, specs, file.metadata));
    for (const HostTensor& t : file.tensors) MIMO_RETURN_IF_ERROR(writer.Append(t.bytes.span()));
    MIMO_ASSIGN_OR_RETURN(digests[path.substr(dir.size() + 1)], writer.Finish());
  }
  return digests;
}

}  // namespace mimo::worker
