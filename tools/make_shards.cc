// mimo-make-shards: writes the built-in synthetic dataset as WebDataset tar shards and prints the
// pattern to put in a spec's data.webdataset.shards, to try WebDataset training without data.
//   mimo-make-shards OUT_DIR [--samples N] [--shards K] [--image-size S] [--mel-bins B]
//                    [--frames-per-token F] [--max-frames M] [--seed S] [--force]
#include <cstdint>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "common/flag_parsing.h"
#include "data/synthetic_shards.h"

int main(int argc, char** argv) {
  CLI::App app(
      "Writes the built-in synthetic dataset (shapes, captions, optional tones) as WebDataset tar "
      "shards OUT_DIR/shard-000.tar, ... and prints the pattern for data.webdataset.shards");
  mimo::data::SyntheticShardsOptions o;
  o.samples.num_samples = 2000;
  o.samples.num_mel_bins = 0;
  o.samples.frames_per_token = 4;
  o.samples.max_frames = 64;
  app.add_option("OUT_DIR", o.out_dir, "folder for the shards (created when missing)")->required();
  app.add_option("--samples", o.samples.num_samples, "samples in all")
      ->check(CLI::Range(int64_t{1}, int64_t{100'000'000}))
      ->capture_default_str();
  app.add_option("--shards", o.num_shards, "shard files, the samples split evenly")
      ->check(CLI::Range(int64_t{1}, int64_t{1'000'000}))
      ->capture_default_str();
  app.add_option("--image-size", o.samples.image_size,
                 "image side in pixels (RGB PNGs; the vision encoder's image_size)")
      ->check(CLI::Range(int64_t{4}, int64_t{4096}))
      ->capture_default_str();
  app.add_option("--mel-bins", o.samples.num_mel_bins,
                 "log-mel bins of the audio clips (KEY.mel.npy on every other sample; the audio "
                 "encoder's num_mel_bins); 0: no audio")
      ->check(CLI::Range(int64_t{0}, int64_t{4096}))
      ->capture_default_str();
  app.add_option("--frames-per-token", o.samples.frames_per_token,
                 "clips are a multiple of this many frames (the audio encoder's frames_per_token)")
      ->check(CLI::Range(int64_t{1}, int64_t{1'000'000}))
      ->capture_default_str();
  app.add_option("--max-frames", o.samples.max_frames,
                 "the longest clip in frames (the audio encoder's max_frames)")
      ->check(CLI::Range(int64_t{1}, int64_t{1'000'000}))
      ->capture_default_str();
  app.add_option("--seed", o.samples.seed, "sample i depends on (seed, i) alone")
      ->capture_default_str();
  app.add_flag("--force", o.overwrite, "replace shard files that exist");
  try {
    // "--samples=" as "--samples ''" (CLI11 alone took the next argument for the value).
    mimo::ParseFlags(app, argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help exits 0, a usage error 2.
  }
  const absl::StatusOr<mimo::data::SyntheticShards> shards = mimo::data::WriteSyntheticShards(o);
  if (!shards.ok()) {
    std::cerr << "mimo-make-shards: " << shards.status().message();
    if (shards.status().code() == absl::StatusCode::kAlreadyExists) {
      std::cerr << " (--force replaces them)";
    }
    std::cerr << "\n";
    return 1;
  }
  std::cerr << "mimo-make-shards: wrote " << shards->samples << " samples (" << shards->with_audio
            << " with audio) in " << shards->paths.size() << " shards; in a spec:\n"
            << "  data: {webdataset: {shards: [\"" << shards->pattern << "\"]}}\n";
  std::cout << shards->pattern << "\n";
  return 0;
}
