// WriteSyntheticShards: generate, quantize and encode each sample, stream it into its shard with
// TarWriter.
#include "data/synthetic_shards.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "data/image_encode.h"
#include "data/npy.h"
#include "data/tar_writer.h"

namespace mimo::data {
namespace {

namespace fs = std::filesystem;

// Digits of the largest of the numbers 0 .. count - 1, at least `min_width`.
int Width(int64_t count, int min_width) {
  return std::max<int>(min_width, static_cast<int>(absl::StrCat(count - 1).size()));
}

// (C, S, S) floats in [-1, 1] to (S, S, C) bytes.
std::vector<uint8_t> Quantize(const std::vector<float>& image, int64_t channels, int64_t size) {
  std::vector<uint8_t> pixels(image.size());
  const int64_t plane = size * size;
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t p = 0; p < plane; ++p) {
      const float v = std::clamp(image[c * plane + p], -1.0f, 1.0f);
      pixels[p * channels + c] = static_cast<uint8_t>(std::lround((v + 1.0f) * 127.5f));
    }
  }
  return pixels;
}

absl::Status WriteShard(const SyntheticShardsOptions& o, const std::string& path, int64_t first,
                        int64_t end, int key_width, int64_t* with_audio) {
  const std::string partial = path + ".partial";
  MIMO_ASSIGN_OR_RETURN(std::unique_ptr<TarWriter> tar, TarWriter::Create(partial));
  const SyntheticOptions& s = o.samples;
  for (int64_t i = first; i < end; ++i) {
    const Sample sample = MakeSyntheticSample(s, i);
    const std::string key = absl::StrFormat("%0*d", key_width, i);
    MIMO_ASSIGN_OR_RETURN(const std::string png,
                          EncodePng(static_cast<int>(s.image_size), static_cast<int>(s.image_size),
                                    static_cast<int>(s.num_channels),
                                    Quantize(sample.image, s.num_channels, s.image_size)));
    MIMO_RETURN_IF_ERROR(tar->AddFile(key + ".png", png));
    MIMO_RETURN_IF_ERROR(tar->AddFile(key + ".txt", sample.caption));
    if (sample.audio_frames > 0) {
      MIMO_ASSIGN_OR_RETURN(const std::string npy,
                            EncodeNpy({sample.audio_frames, s.num_mel_bins}, sample.audio));
      MIMO_RETURN_IF_ERROR(tar->AddFile(key + ".mel.npy", npy));
      ++*with_audio;
    }
  }
  MIMO_RETURN_IF_ERROR(tar->Close());
  std::error_code error;
  fs::rename(partial, path, error);
  if (error) {
    return absl::ErrnoToStatus(error.value(),
                               absl::StrCat("cannot rename ", partial, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SyntheticShards> WriteSyntheticShards(const SyntheticShardsOptions& o) {
  MIMO_RETURN_IF_ERROR(ValidateSyntheticOptions(o.samples));
  const int64_t n = o.samples.num_samples;
  if (o.out_dir.empty()) return absl::InvalidArgumentError("synthetic shards: no output folder");
  if (o.num_shards < 1 || o.num_shards > n) {
    return absl::InvalidArgumentError(absl::StrCat("synthetic shards: ", o.num_shards,
                                                   " shards for ", n,
                                                   " samples (1 to the number of samples)"));
  }
  std::error_code error;
  const fs::path dir = fs::absolute(o.out_dir, error).lexically_normal();
  if (error) {
    return absl::ErrnoToStatus(error.value(), absl::StrCat("cannot resolve ", o.out_dir));
  }
  // Checked before anything is written, so a refusal leaves the folder as it was.
  const int shard_width = Width(o.num_shards, 3);
  SyntheticShards result;
  for (int64_t k = 0; k < o.num_shards; ++k) {
    result.paths.push_back((dir / absl::StrFormat("shard-%0*d.tar", shard_width, k)).string());
    if (!o.overwrite && fs::exists(result.paths.back(), error)) {
      return absl::AlreadyExistsError(
          absl::StrCat(result.paths.back(), " exists; shards are not overwritten"));
    }
  }
  fs::create_directories(dir, error);
  if (error)
    return absl::ErrnoToStatus(error.value(), absl::StrCat("cannot create ", dir.string()));
  const int key_width = Width(n, 6);
  for (int64_t k = 0; k < o.num_shards; ++k) {
    const absl::Status status =
        WriteShard(o, result.paths[k], k * n / o.num_shards, (k + 1) * n / o.num_shards, key_width,
                   &result.with_audio);
    if (!status.ok()) {
      fs::remove(result.paths[k] + ".partial", error);
      return status;
    }
  }
  result.samples = n;
  result.pattern = o.num_shards == 1 ? result.paths[0]
                                     : (dir / absl::StrFormat("shard-{%0*d..%0*d}.tar", shard_width,
                                                              0, shard_width, o.num_shards - 1))
                                           .string();
  return result;
}

}  // namespace mimo::data
