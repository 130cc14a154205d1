// The two files of one rank's training state in a checkpoint folder, as Trainer::SaveState
// writes them and mimo-convert writes them for another layout: names, dtypes and metadata.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/consolidated_reader.h"
#include "checkpoint/safetensors.h"
#include "common/byte_buffer.h"
#include "kernels/dtype.h"
#include "mimo/parameter.h"

namespace mimo::worker {

inline constexpr char kRankStateFormat[] = "mimo.rank_state";
inline constexpr char kRankStateVersion[] = "2";

// "<dir>/model_rank_00003.safetensors" (kind "model") or ".../optim_rank_00003.safetensors".
std::string RankStateFile(const std::string& dir, const char* kind, int rank);

// The safetensors dtype of `dtype` ("F32", "BF16", "I32", "I64").
std::string SafetensorsDType(kernels::DType dtype);

// Both files' metadata: format, version, step, position, rank and, when any parameter is split
// over ranks, "shards": for each such parameter, per split dimension {"dim", "full_size",
// "ranges": [[start, size], ...]} (the ranges of the full dimension the rank holds, in order).
std::map<std::string, std::string> RankStateMetadata(int64_t step, int64_t position, int rank,
                                                     const std::vector<ParameterSpec>& params);

// The region of its full tensor a rank's parameter `p` holds (per dimension, the ranges of the
// full dimension: its shards', else the whole dimension), and the full shape into `full`.
checkpoint::Region RegionOf(const ParameterSpec& p, std::vector<int64_t>* full = nullptr);

// A rank's state copied to host memory (Trainer::CaptureState), to be written apart from the
// device.
struct HostTensor {
  std::string name;
  std::string dtype;  // Safetensors'.
  std::vector<int64_t> shape;
  ByteBuffer bytes;
};
struct HostStateFile {
  std::string kind;  // "model" or "optim".
  std::vector<HostTensor> tensors;
  std::map<std::string, std::string> metadata;
};
struct HostRankState {
  int rank = 0;
  int64_t position = 0;  // Samples the group consumed: the checkpoint's consumed_samples.
  std::vector<HostStateFile> files;
};

// Writes `state`'s files into `dir` (what Trainer::SaveState would have written when it was
// captured); returns each file's digest by file name.
absl::StatusOr<std::map<std::string, checkpoint::FileDigest>> WriteRankState(
    const HostRankState& state, const std::string& dir);

}  // namespace mimo::worker
