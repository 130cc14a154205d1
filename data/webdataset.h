// WebDatasetSource: WebDataset-style tar shards of image-text (and audio-text) samples as a
// SampleSource: every shard indexed once at Open, then any sample read by its global index
// (shuffled per epoch, the same on every rank) with preads, so ranks share no state and training
// resumes from the consumed-samples count.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/sample_source.h"
#include "data/tar_reader.h"

namespace mimo::data {

struct WebDatasetOptions {
  // The shard files: paths or brace patterns ("/data/shard-{000..099}.tar",
  // "/data/{train,extra}-{0..9}.tar"; brace_expand.h), expanded in order; at least one, no file
  // twice.
  std::vector<std::string> shards;
  // Images: (num_channels, image_size, image_size) in [-1, 1] (image_resize.h); num_channels 1
  // or 3. image_size 0: images are not used (not read; Sample::image stays empty).
  int64_t image_size = 32;
  int64_t num_channels = 3;
  // false: images are found as above (the same samples are kept and skipped) but not read or
  // decoded; Sample::image stays empty and Sample::image_undecoded is set. For ranks that only
  // count an image's tokens (the language module's, whose encoder runs elsewhere).
  bool decode_images = true;
  // Audio: log-mel frames from .npy members (frames, num_mel_bins); 0 mel bins: audio is not
  // used. Clips are cut to at most max_frames frames, then to a multiple of frames_per_token
  // (>= 1); max_frames >= frames_per_token.
  int64_t num_mel_bins = 0;
  int64_t frames_per_token = 1;
  int64_t max_frames = 0;
  // Samples without a caption member: skipped (true) or kept with an empty caption (false).
  bool require_caption = true;
  // The order: with shuffle, each epoch a different permutation of all samples keyed by (seed,
  // epoch) (shuffle.h); without, shard by shard in the shards' order, each shard's samples in
  // archive order, every epoch alike.
  uint64_t seed = 1234;
  bool shuffle = true;
};

// InvalidArgument naming the field.
absl::Status ValidateWebDatasetOptions(const WebDatasetOptions& options);

// What Open found.
struct WebDatasetStats {
  int64_t shards = 0;
  int64_t members = 0;  // Regular files in the shards.
  int64_t samples = 0;  // Kept: num_samples().
  // Skipped: images are used (image_size > 0) and the sample has no jpg, jpeg or png member.
  int64_t without_image = 0;
  // Skipped: require_caption and the sample has no txt or caption member, or it has nothing
  // the model reads at all (no used image or audio, no caption).
  int64_t without_caption = 0;
  // Links in the shards that name no member (TarReader::skipped_links), left out, and the first
  // of them ("shard: 'NAME' (symlink to 'TARGET'): why"), for a log line.
  int64_t unresolved_links = 0;
  std::string first_unresolved_link;
};

// Grouping, as WebDataset does it: a member's key is its directory and file name up to the
// file name's first dot ("a/b.c/0001.mel.npy": key "a/b.c/0001"), its extension the rest,
// lowercased ("mel.npy"); members sharing a key within a shard make one sample, wherever they
// are in the archive (a repeated extension: the last wins). Members without a dot in their file
// name, or whose file name starts with a dot, belong to no sample. A sample reads:
//   image:   the first of jpg, jpeg, png present (PNG or JPEG told by the bytes, image_decode.h);
//   caption: txt, else caption (UTF-8, leading and trailing whitespace stripped);
//   audio:   mel.npy, else npy (npy.h: float32 or float16, shape (frames, num_mel_bins)); a clip
//            shorter than frames_per_token leaves the sample without audio.
// Other members (json, cls, ...) are ignored. Every shard stays open (one descriptor each; mind
// RLIMIT_NOFILE with thousands of shards) until the source is destroyed.
class WebDatasetSource : public SampleSource {
 public:
  // Validates `options`, expands the patterns, opens and indexes every shard (headers only).
  // InvalidArgument for bad options or patterns, a shard named twice, or no usable sample in
  // all the shards (the message says how many were skipped and why); a shard's open error
  // (NotFound naming it for a missing file) or DataLoss for a corrupt one (tar_reader.h).
  static absl::StatusOr<std::unique_ptr<WebDatasetSource>> Open(const WebDatasetOptions& options);

  int64_t num_samples() const override { return static_cast<int64_t>(entries_.size()); }
  // Decodes sample `index` of the global order (sample_source.h). Errors name the shard and the
  // member: InvalidArgument for an image that does not decode, an npy that does not parse or
  // whose mel bins are not num_mel_bins; DataLoss when a shard was truncated after Open.
  absl::StatusOr<Sample> Get(int64_t index) const override;

  // "SHARD:KEY" of sample `index` (>= 0), for logs and errors.
  std::string SampleName(int64_t index) const;
  // Sample `index`'s position in the unshuffled order (shard by shard, archive order): what
  // Get(index) reads.
  int64_t Position(int64_t index) const;

  const WebDatasetOptions& options() const { return options_; }
  const std::vector<std::string>& shard_paths() const { return paths_; }
  const WebDatasetStats& stats() const { return stats_; }

 private:
  // One sample: its shard and the members it reads (indices into the shard's members(), -1:
  // none).
  struct Entry {
    int32_t shard = 0;
    int32_t image = -1;
    int32_t caption = -1;
    int32_t audio = -1;
    int32_t any = 0;  // A member of it, for its key.
  };

  explicit WebDatasetSource(const WebDatasetOptions& options) : options_(options) {}
  absl::Status IndexShard(int32_t shard);
  absl::Status ReadAudio(const Entry& e, Sample* sample) const;

  WebDatasetOptions options_;
  std::vector<std::string> paths_;
  std::vector<std::unique_ptr<TarReader>> readers_;
  std::vector<Entry> entries_;
  WebDatasetStats stats_;
};

}  // namespace mimo::data
