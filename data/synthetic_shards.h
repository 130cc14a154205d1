// WriteSyntheticShards: the synthetic dataset (synthetic.h) written as WebDataset tar shards
// (webdataset.h reads them back), so the WebDataset path can be tried without data of one's own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/synthetic.h"

namespace mimo::data {

struct SyntheticShardsOptions {
  std::string out_dir;     // Created with its parents when missing.
  int64_t num_shards = 4;  // 1 .. samples.num_samples.
  // What to generate: sample i is MakeSyntheticSample(samples, i), i < samples.num_samples.
  SyntheticOptions samples;
  // Replace shard files that exist already; without it they are an error and nothing is written.
  bool overwrite = false;
};

struct SyntheticShards {
  std::vector<std::string> paths;  // OUT_DIR/shard-000.tar, ... (absolute).
  // The paths as one brace pattern for a spec's data.webdataset.shards
  // ("/abs/dir/shard-{000..003}.tar"; the path itself for one shard).
  std::string pattern;
  int64_t samples = 0;
  int64_t with_audio = 0;
};

// Shard s holds samples [s * n / K, (s + 1) * n / K), each as members KEY.png (the image as 8-bit
// gray or RGB: [-1, 1] mapped to 0..255), KEY.txt (the caption) and, when it has audio,
// KEY.mel.npy (float32, (frames, num_mel_bins)); KEY is the sample's index, zero-padded to six
// digits or more. Members are written at mtime 0, so equal options give identical files. Each
// shard is written to a ".partial" file renamed into place once complete. InvalidArgument for
// bad options; AlreadyExists naming the file for a shard there without `overwrite`; the OS
// error's status naming the path otherwise.
absl::StatusOr<SyntheticShards> WriteSyntheticShards(const SyntheticShardsOptions& options);

}  // namespace mimo::data
