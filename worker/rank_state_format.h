// The two files of one rank's training state in a checkpoint folder, as Trainer::SaveState
// writes them and mimo-convert writes them for another layout: names, dtypes and metadata.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

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

}  // namespace mimo::worker
