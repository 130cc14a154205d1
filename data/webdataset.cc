// WebDatasetSource: members grouped into samples by key at Open; Get maps the index through
// the epoch's permutation, reads the sample's members and decodes them.
#include "data/webdataset.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <system_error>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "data/brace_expand.h"
#include "data/image_decode.h"
#include "data/image_resize.h"
#include "data/npy.h"
#include "data/shuffle.h"

namespace mimo::data {
namespace {

// The extensions a sample reads, in order of preference.
constexpr const char* kImageExtensions[] = {"jpg", "jpeg", "png"};
constexpr const char* kCaptionExtensions[] = {"txt", "caption"};
constexpr const char* kAudioExtensions[] = {"mel.npy", "npy"};

// A member's key and extension (WebDataset's rule); false when it belongs to no sample.
bool SplitName(const std::string& name, std::string* key, std::string* extension) {
  const size_t slash = name.rfind('/');
  const size_t base = slash == std::string::npos ? 0 : slash + 1;
  if (base >= name.size() || name[base] == '.') return false;
  const size_t dot = name.find('.', base);
  if (dot == std::string::npos) return false;
  *key = name.substr(0, dot);
  *extension = absl::AsciiStrToLower(name.substr(dot + 1));
  return true;
}

}  // namespace

absl::Status ValidateWebDatasetOptions(const WebDatasetOptions& o) {
  const auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("WebDatasetOptions: ", what));
  };
  if (o.shards.empty()) return bad("shards is empty");
  if (o.image_size < 0) return bad(absl::StrCat("image_size ", o.image_size, " < 0"));
  if (o.image_size > 0 && o.num_channels != 1 && o.num_channels != 3) {
    return bad(absl::StrCat("num_channels ", o.num_channels, " (1 or 3)"));
  }
  if (o.num_mel_bins < 0) return bad(absl::StrCat("num_mel_bins ", o.num_mel_bins, " < 0"));
  if (o.num_mel_bins > 0 && (o.frames_per_token < 1 || o.max_frames < o.frames_per_token)) {
    return bad(absl::StrCat("audio needs max_frames >= frames_per_token >= 1, got ", o.max_frames,
                            " and ", o.frames_per_token));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<WebDatasetSource>> WebDatasetSource::Open(
    const WebDatasetOptions& options) {
  MIMO_RETURN_IF_ERROR(ValidateWebDatasetOptions(options));
  std::unique_ptr<WebDatasetSource> source(new WebDatasetSource(options));
  // Shards are compared by the file they name: compared as strings, "/a/good.tar",
  // "/a/./good.tar", "/a/b/../good.tar" and a symlink to it were four shards, and the file was
  // read twice. weakly_canonical resolves what exists; a path it cannot take is compared
  // lexically normalized (and fails at its Open below if it is missing).
  absl::flat_hash_map<std::string, std::string> seen;  // Canonical path: the path as named.
  for (const std::string& pattern : options.shards) {
    MIMO_ASSIGN_OR_RETURN(std::vector<std::string> paths, ExpandBraces(pattern));
    for (std::string& path : paths) {
      std::error_code error;
      std::filesystem::path canonical = std::filesystem::weakly_canonical(path, error);
      if (error) canonical = std::filesystem::path(path).lexically_normal();
      const auto [it, inserted] = seen.try_emplace(canonical.string(), path);
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat("WebDatasetOptions: shard ", path, " is named twice",
                         it->second == path ? "" : absl::StrCat(" (also as ", it->second, ")")));
      }
      source->paths_.push_back(std::move(path));
    }
  }
  if (source->paths_.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError("WebDatasetOptions: too many shards");
  }
  for (size_t i = 0; i < source->paths_.size(); ++i) {
    MIMO_ASSIGN_OR_RETURN(std::unique_ptr<TarReader> reader, TarReader::Open(source->paths_[i]));
    source->readers_.push_back(std::move(reader));
    MIMO_RETURN_IF_ERROR(source->IndexShard(static_cast<int32_t>(i)));
  }
  WebDatasetStats& stats = source->stats_;
  stats.shards = static_cast<int64_t>(source->paths_.size());
  stats.samples = source->num_samples();
  if (stats.samples == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WebDataset: no usable sample in ", stats.shards, " shard(s) (", options.shards[0],
        options.shards.size() > 1 ? ", ..." : "", ") of ", stats.members,
        " member(s): ", stats.without_image, " sample(s) without an image (jpg, jpeg or png), ",
        stats.without_caption, " without a caption (txt or caption)"));
  }
  return source;
}

absl::Status WebDatasetSource::IndexShard(int32_t shard) {
  const std::vector<TarMember>& members = readers_[shard]->members();
  if (members.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("shard ", paths_[shard], ": too many members"));
  }
  stats_.members += static_cast<int64_t>(members.size());
  const std::vector<std::string>& links = readers_[shard]->skipped_links();
  stats_.unresolved_links += readers_[shard]->skipped_link_count();
  if (stats_.first_unresolved_link.empty() && !links.empty()) {
    stats_.first_unresolved_link = absl::StrCat(paths_[shard], ": ", links.front());
  }
  // Members by key, in order of the key's first appearance: (extension, member index) pairs.
  absl::flat_hash_map<std::string, size_t> slot;
  std::vector<std::vector<std::pair<std::string, int32_t>>> groups;
  std::string key, extension;
  for (size_t m = 0; m < members.size(); ++m) {
    if (!SplitName(members[m].name, &key, &extension)) continue;
    const auto [it, inserted] = slot.try_emplace(key, groups.size());
    if (inserted) groups.emplace_back();
    groups[it->second].emplace_back(std::move(extension), static_cast<int32_t>(m));
  }
  const bool images = options_.image_size > 0, audio = options_.num_mel_bins > 0;
  for (const auto& group : groups) {
    // The last member with `ext` (a later one replaces an earlier, as in tar), or -1.
    const auto find = [&group](const char* ext) {
      int32_t found = -1;
      for (const auto& [e, m] : group) {
        if (e == ext) found = m;
      }
      return found;
    };
    const auto first_of = [&find](const auto& extensions) {
      for (const char* ext : extensions) {
        if (const int32_t m = find(ext); m >= 0) return m;
      }
      return -1;
    };
    Entry e{.shard = shard, .any = group.front().second};
    if (images) e.image = first_of(kImageExtensions);
    e.caption = first_of(kCaptionExtensions);
    if (audio) e.audio = first_of(kAudioExtensions);
    if (images && e.image < 0) {
      ++stats_.without_image;
    } else if ((options_.require_caption && e.caption < 0) ||
               (e.image < 0 && e.caption < 0 && e.audio < 0)) {
      ++stats_.without_caption;
    } else {
      entries_.push_back(e);
    }
  }
  return absl::OkStatus();
}

int64_t WebDatasetSource::Position(int64_t index) const {
  const int64_t n = num_samples();
  const int64_t position = index % n;
  if (!options_.shuffle) return position;
  return ShuffledPosition(position, n, options_.seed, static_cast<uint64_t>(index / n));
}

std::string WebDatasetSource::SampleName(int64_t index) const {
  const Entry& e = entries_[Position(index)];
  std::string key, extension;
  const std::string& member = readers_[e.shard]->members()[e.any].name;
  if (!SplitName(member, &key, &extension)) key = member;
  return absl::StrCat(paths_[e.shard], ":", key);
}

absl::Status WebDatasetSource::ReadAudio(const Entry& e, Sample* sample) const {
  const TarReader& reader = *readers_[e.shard];
  const TarMember& member = reader.members()[e.audio];
  const std::string name = absl::StrCat(paths_[e.shard], ":", member.name);
  MIMO_ASSIGN_OR_RETURN(const std::string bytes, reader.Read(member));
  MIMO_ASSIGN_OR_RETURN(NpyArray mel, ParseNpy(bytes, name));
  if (mel.shape.size() != 2 || mel.shape[1] != options_.num_mel_bins) {
    std::string shape;
    for (const int64_t d : mel.shape) absl::StrAppend(&shape, shape.empty() ? "" : ", ", d);
    return absl::InvalidArgumentError(absl::StrCat(
        "audio '", name, "': shape (", shape, "), expected (frames, ", options_.num_mel_bins, ")"));
  }
  int64_t frames = std::min(mel.shape[0], options_.max_frames);
  frames -= frames % options_.frames_per_token;
  if (frames == 0) return absl::OkStatus();  // Too short for one token: no audio.
  mel.data.resize(frames * options_.num_mel_bins);
  // A NaN or infinity would reach the loss, skip the step (no update) and name no sample.
  for (size_t i = 0; i < mel.data.size(); ++i) {
    if (!std::isfinite(mel.data[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "audio '", name, "': value ", mel.data[i], " at frame ", i / options_.num_mel_bins,
          ", mel bin ", i % options_.num_mel_bins, " is not finite"));
    }
  }
  sample->audio = std::move(mel.data);
  sample->audio_frames = frames;
  return absl::OkStatus();
}

absl::StatusOr<Sample> WebDatasetSource::Get(int64_t index) const {
  if (index < 0) return absl::InvalidArgumentError(absl::StrCat("sample index ", index, " < 0"));
  const Entry& e = entries_[Position(index)];
  const TarReader& reader = *readers_[e.shard];
  Sample sample;
  if (e.image >= 0 && !options_.decode_images) {
    sample.image_undecoded = true;
  } else if (e.image >= 0) {
    const TarMember& member = reader.members()[e.image];
    MIMO_ASSIGN_OR_RETURN(const std::string bytes, reader.Read(member));
    MIMO_ASSIGN_OR_RETURN(const DecodedImage image,
                          DecodeImage(bytes, absl::StrCat(paths_[e.shard], ":", member.name)));
    sample.image = ResizeAndCrop(image, options_.image_size, options_.num_channels);
  }
  if (e.caption >= 0) {
    MIMO_ASSIGN_OR_RETURN(const std::string text, reader.Read(reader.members()[e.caption]));
    sample.caption = std::string(absl::StripAsciiWhitespace(text));
  }
  if (e.audio >= 0) MIMO_RETURN_IF_ERROR(ReadAudio(e, &sample));
  return sample;
}

}  // namespace mimo::data
