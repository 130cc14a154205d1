// WriteSyntheticShards: WebDatasetSource reads the shards back as the synthetic samples (images
// within 8-bit rounding, captions and audio exactly); the pattern, reproducible files, refusing to
// overwrite without being asked, bad options.
#include "data/synthetic_shards.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "data/webdataset.h"
#include "tests/data/test_files.h"

namespace mimo::data {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

SyntheticShardsOptions Options(const std::string& dir) {
  return {.out_dir = dir,
          .num_shards = 3,
          .samples = {.num_samples = 10,
                      .image_size = 16,
                      .num_mel_bins = 8,
                      .frames_per_token = 2,
                      .max_frames = 16,
                      .seed = 7}};
}

TEST(SyntheticShardsTest, WebDatasetReadsTheSyntheticSamples) {
  TempDir dir;
  const SyntheticShardsOptions o = Options(dir.File("out/shards"));
  auto shards = WriteSyntheticShards(o);
  ASSERT_TRUE(shards.ok()) << shards.status();
  const std::string base = fs::path(dir.path()).lexically_normal().string() + "/out/shards/";
  EXPECT_THAT(shards->paths,
              ElementsAre(base + "shard-000.tar", base + "shard-001.tar", base + "shard-002.tar"));
  EXPECT_EQ(shards->pattern, base + "shard-{000..002}.tar");
  EXPECT_EQ(shards->samples, 10);
  EXPECT_EQ(shards->with_audio, 5);  // The odd samples.
  for (const std::string& p : shards->paths) EXPECT_FALSE(fs::exists(p + ".partial"));

  auto source = WebDatasetSource::Open({.shards = {shards->pattern},
                                        .image_size = 16,
                                        .num_mel_bins = 8,
                                        .frames_per_token = 2,
                                        .max_frames = 16,
                                        .shuffle = false});
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->stats().shards, 3);
  EXPECT_EQ((*source)->stats().members, 25);
  ASSERT_EQ((*source)->num_samples(), 10);
  EXPECT_EQ((*source)->SampleName(0), base + "shard-000.tar:000000");
  EXPECT_EQ((*source)->SampleName(3), base + "shard-001.tar:000003");  // Shards of 3, 3, 4.
  for (int64_t i = 0; i < 10; ++i) {
    SCOPED_TRACE(i);
    const Sample want = MakeSyntheticSample(o.samples, i);
    auto got = (*source)->Get(i);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->caption, want.caption);
    EXPECT_EQ(got->audio_frames, want.audio_frames);
    EXPECT_EQ(got->audio, want.audio);
    ASSERT_EQ(got->image.size(), want.image.size());
    float worst = 0;
    for (size_t k = 0; k < want.image.size(); ++k) {
      worst = std::max(worst, std::abs(got->image[k] - std::clamp(want.image[k], -1.0f, 1.0f)));
    }
    EXPECT_LE(worst, 0.5f / 127.5f + 1e-5f);
  }
}

TEST(SyntheticShardsTest, ReproducibleAndOverwrittenOnlyWhenAsked) {
  TempDir dir;
  SyntheticShardsOptions o = Options(dir.path());
  auto first = WriteSyntheticShards(o);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string bytes = ReadFile(first->paths[1]);
  auto again = WriteSyntheticShards(o);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(again.status().message(), HasSubstr(first->paths[0]));
  o.overwrite = true;
  again = WriteSyntheticShards(o);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(ReadFile(again->paths[1]), bytes);
}

TEST(SyntheticShardsTest, OneShardWithoutAudio) {
  TempDir dir;
  SyntheticShardsOptions o = Options(dir.path());
  o.num_shards = 1;
  o.samples.num_mel_bins = 0;
  auto shards = WriteSyntheticShards(o);
  ASSERT_TRUE(shards.ok()) << shards.status();
  EXPECT_EQ(shards->pattern, shards->paths[0]);
  EXPECT_EQ(shards->with_audio, 0);
  auto source = WebDatasetSource::Open({.shards = {shards->pattern}, .image_size = 16});
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->stats().members, 20);
}

TEST(SyntheticShardsTest, Refusals) {
  TempDir dir;
  SyntheticShardsOptions o = Options(dir.path());
  o.num_shards = 11;
  EXPECT_THAT(WriteSyntheticShards(o).status().message(), HasSubstr("11 shards for 10 samples"));
  o.num_shards = 0;
  EXPECT_EQ(WriteSyntheticShards(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = Options(dir.path());
  o.samples.max_frames = 1;
  EXPECT_THAT(WriteSyntheticShards(o).status().message(), HasSubstr("max_frames"));
  o = Options("");
  EXPECT_EQ(WriteSyntheticShards(o).status().code(), absl::StatusCode::kInvalidArgument);
  WriteFile(dir.File("file"), "x");
  o = Options(dir.File("file"));
  EXPECT_FALSE(WriteSyntheticShards(o).ok());
}

}  // namespace
}  // namespace mimo::data
