// WebDatasetSource end to end on two shards the test writes: grouping by key (members of a
// sample anywhere in the shard, upper-case extensions, ignored members), skipped samples and
// their counts, images, captions and audio as the model reads them, the shuffled order (each
// epoch visits every sample once, deterministic across opens, keyed by seed and epoch),
// concurrent reads, and errors naming the shard and member.
#include "data/webdataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/data/test_files.h"

namespace mimo::data {
namespace {

using testing::EncodeJpeg;
using testing::EncodePng;
using ::testing::HasSubstr;
using testing::MakeNpy;
using testing::TarBuilder;
using testing::TempDir;
using testing::WriteFile;

std::string Solid(int width, int height, uint8_t r, uint8_t g, uint8_t b, bool jpeg = false) {
  std::vector<uint8_t> p;
  for (int i = 0; i < width * height; ++i) p.insert(p.end(), {r, g, b});
  return jpeg ? EncodeJpeg(width, height, 3, p) : EncodePng(width, height, 3, p);
}

std::string Mel(int frames, int bins, float base) {
  std::vector<float> v(frames * bins);
  for (size_t i = 0; i < v.size(); ++i) v[i] = base + static_cast<float>(i);
  return MakeNpy({frames, bins}, v);
}

std::string Caption(int i) { return "caption " + std::to_string(i) + "\n"; }

// shard-0: 0000 (png), 0001 (jpg, mel.npy of 10 frames), 0002 (text only), 0003 (png only),
// 0004 (JPEG, caption, an npy of 3 frames, a json); shard-1: 0005..0009 (png), their members
// interleaved, 0007 with 40 frames of audio.
class WebDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(dir_.File("shard-0.tar"),
              TarBuilder()
                  .Special("s0/", '5')
                  .File("s0/0000.png", Solid(8, 6, 255, 0, 0))
                  .File("s0/0000.txt", Caption(0))
                  .File("s0/0001.jpg", Solid(6, 6, 0, 0, 255, /*jpeg=*/true))
                  .File("s0/0001.txt", Caption(1))
                  .File("s0/0001.mel.npy", Mel(10, 4, 0))
                  .File("s0/0002.txt", Caption(2))
                  .File("s0/0003.png", Solid(4, 4, 0, 255, 0))
                  .File("s0/0004.JPEG", Solid(4, 4, 255, 255, 255, /*jpeg=*/true))
                  .File("s0/0004.caption", "  caption 4  ")
                  .File("s0/0004.npy", Mel(3, 4, 0))
                  .File("s0/0004.json", "{}")
                  .File("s0/.hidden.txt", "ignored")
                  .File("s0/README", "ignored")
                  .Finish());
    WriteFile(dir_.File("shard-1.tar"), TarBuilder()
                                            .File("0005.txt", Caption(5))
                                            .File("0006.png", Solid(4, 4, 0, 0, 0))
                                            .File("0005.png", Solid(4, 4, 0, 0, 0))
                                            .File("0006.txt", Caption(6))
                                            .File("0007.png", Solid(4, 4, 0, 0, 0))
                                            .File("0007.txt", Caption(7))
                                            .File("0007.mel.npy", Mel(40, 4, 1000))
                                            .File("0008.png", Solid(4, 4, 0, 0, 0))
                                            .File("0008.txt", Caption(8))
                                            .File("0009.png", Solid(4, 4, 0, 0, 0))
                                            .File("0009.txt", Caption(9))
                                            .Finish());
  }

  WebDatasetOptions Options() const {
    return {.shards = {dir_.path() + "/shard-{0..1}.tar"},
            .image_size = 4,
            .num_channels = 3,
            .num_mel_bins = 4,
            .frames_per_token = 4,
            .max_frames = 16,
            .seed = 5,
            .shuffle = false};
  }

  static std::vector<std::string> Captions(const WebDatasetSource& source, int64_t from) {
    std::vector<std::string> out;
    for (int64_t i = from; i < from + source.num_samples(); ++i) {
      auto s = source.Get(i);
      EXPECT_TRUE(s.ok()) << s.status();
      out.push_back(s.ok() ? s->caption : "");
    }
    return out;
  }

  TempDir dir_;
};

TEST_F(WebDatasetTest, ReadsSamplesInArchiveOrder) {
  auto source = WebDatasetSource::Open(Options());
  ASSERT_TRUE(source.ok()) << source.status();
  const WebDatasetSource& s = **source;
  EXPECT_EQ(s.shard_paths(),
            (std::vector<std::string>{dir_.File("shard-0.tar"), dir_.File("shard-1.tar")}));
  EXPECT_EQ(s.stats().shards, 2);
  EXPECT_EQ(s.stats().members, 24);
  EXPECT_EQ(s.stats().without_image, 1);    // 0002.
  EXPECT_EQ(s.stats().without_caption, 1);  // 0003.
  ASSERT_EQ(s.num_samples(), 8);
  EXPECT_EQ(s.stats().samples, 8);
  const std::vector<std::string> want = {"caption 0", "caption 1", "caption 4", "caption 5",
                                         "caption 6", "caption 7", "caption 8", "caption 9"};
  EXPECT_EQ(Captions(s, 0), want);
  EXPECT_EQ(Captions(s, 8), want);  // Unshuffled epochs repeat.
  EXPECT_EQ(s.SampleName(1), dir_.File("shard-0.tar") + ":s0/0001");
  EXPECT_EQ(s.SampleName(3), dir_.File("shard-1.tar") + ":0005");

  // 0000: an 8x6 red PNG, centre-cropped to 4x4, (C, H, W) in [-1, 1].
  auto red = s.Get(0);
  ASSERT_TRUE(red.ok()) << red.status();
  ASSERT_EQ(red->image.size(), 3u * 4 * 4);
  for (int i = 0; i < 16; ++i) {
    EXPECT_FLOAT_EQ(red->image[i], 1.0f);
    EXPECT_FLOAT_EQ(red->image[16 + i], -1.0f);
    EXPECT_FLOAT_EQ(red->image[32 + i], -1.0f);
  }
  EXPECT_TRUE(red->audio.empty());
  EXPECT_EQ(red->audio_frames, 0);
  // 0001: a blue JPEG; 10 frames of audio cut to 8 (a multiple of 4).
  auto blue = s.Get(1);
  ASSERT_TRUE(blue.ok()) << blue.status();
  EXPECT_NEAR(blue->image[0], -1.0f, 0.05f);
  EXPECT_NEAR(blue->image[32], 1.0f, 0.05f);
  ASSERT_EQ(blue->audio_frames, 8);
  ASSERT_EQ(blue->audio.size(), 32u);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(blue->audio[i], static_cast<float>(i));
  // 0004: 3 frames, fewer than one token's: no audio.
  auto white = s.Get(2);
  ASSERT_TRUE(white.ok()) << white.status();
  EXPECT_EQ(white->audio_frames, 0);
  EXPECT_NEAR(white->image[0], 1.0f, 0.05f);
  // 0007: 40 frames cut to max_frames.
  auto long_clip = s.Get(5);
  ASSERT_TRUE(long_clip.ok()) << long_clip.status();
  EXPECT_EQ(long_clip->audio_frames, 16);
  ASSERT_EQ(long_clip->audio.size(), 64u);
  EXPECT_EQ(long_clip->audio[63], 1063.0f);
}

TEST_F(WebDatasetTest, ShuffledEpochsVisitEverySampleOnce) {
  WebDatasetOptions o = Options();
  o.shuffle = true;
  auto a = WebDatasetSource::Open(o);
  auto b = WebDatasetSource::Open(o);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  const int64_t n = (*a)->num_samples();
  std::vector<std::string> sorted = Captions(**a, 0);
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::vector<std::string>> epochs;
  for (int64_t epoch = 0; epoch < 4; ++epoch) {
    std::vector<std::string> order = Captions(**a, epoch * n);
    EXPECT_EQ(Captions(**b, epoch * n), order) << "epoch " << epoch;  // Same on every rank.
    std::vector<int64_t> positions;
    for (int64_t i = 0; i < n; ++i) positions.push_back((*a)->Position(epoch * n + i));
    std::sort(positions.begin(), positions.end());
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(positions[i], i);
    epochs.push_back(order);
    std::sort(order.begin(), order.end());
    EXPECT_EQ(order, sorted);  // Every sample exactly once.
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  o.seed = 6;
  auto c = WebDatasetSource::Open(o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NE(Captions(**c, 0), epochs[0]);
  EXPECT_EQ((*a)->Get(-1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(WebDatasetTest, ConcurrentGetsMatchSequentialOnes) {
  WebDatasetOptions o = Options();
  o.shuffle = true;
  auto source = WebDatasetSource::Open(o);
  ASSERT_TRUE(source.ok()) << source.status();
  std::vector<Sample> want;
  for (int64_t i = 0; i < 32; ++i) want.push_back(*(*source)->Get(i));
  std::vector<int> wrong(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int64_t i = 31 - t; i >= 0; i -= 4) {
        auto s = (*source)->Get(i);
        if (!s.ok() || s->caption != want[i].caption || s->image != want[i].image ||
            s->audio != want[i].audio) {
          ++wrong[t];
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong, std::vector<int>(4, 0));
}

TEST_F(WebDatasetTest, OptionalCaptionsAndNoImages) {
  WebDatasetOptions o = Options();
  o.require_caption = false;  // 0003 is kept with an empty caption.
  auto source = WebDatasetSource::Open(o);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->num_samples(), 9);
  EXPECT_EQ((*source)->stats().without_caption, 0);
  auto green = (*source)->Get(2);
  ASSERT_TRUE(green.ok()) << green.status();
  EXPECT_EQ(green->caption, "");
  EXPECT_FLOAT_EQ(green->image[16], 1.0f);

  o = Options();
  o.image_size = 0;  // Images not used: 0002 (text only) is a sample, nothing is decoded.
  source = WebDatasetSource::Open(o);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->num_samples(), 9);
  EXPECT_EQ((*source)->stats().without_image, 0);
  auto text = (*source)->Get(2);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(text->caption, "caption 2");
  EXPECT_TRUE(text->image.empty());
}

// decode_images false (a language-only rank): the same samples, their images found, not read.
TEST_F(WebDatasetTest, UndecodedImagesKeepTheSameSamples) {
  WebDatasetOptions o = Options();
  o.decode_images = false;
  auto undecoded = WebDatasetSource::Open(o);
  auto decoded = WebDatasetSource::Open(Options());
  ASSERT_TRUE(undecoded.ok()) << undecoded.status();
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ((*undecoded)->stats().without_image, 1);  // 0002, as when decoded.
  ASSERT_EQ((*undecoded)->num_samples(), (*decoded)->num_samples());
  for (int64_t i = 0; i < (*decoded)->num_samples(); ++i) {
    auto u = (*undecoded)->Get(i);
    auto d = (*decoded)->Get(i);
    ASSERT_TRUE(u.ok()) << u.status();
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_TRUE(u->image.empty());
    EXPECT_TRUE(u->image_undecoded);
    EXPECT_FALSE(d->image_undecoded);
    EXPECT_EQ(u->caption, d->caption);
    EXPECT_EQ(u->audio, d->audio);
    EXPECT_EQ(u->audio_frames, d->audio_frames);
  }
  // The image bytes are not read: one that is not an image fails only where it is decoded.
  WriteFile(dir_.File("bad.tar"),
            TarBuilder().File("x.png", "not a png").File("x.txt", "x").Finish());
  o.shards = {dir_.File("bad.tar")};
  undecoded = WebDatasetSource::Open(o);
  ASSERT_TRUE(undecoded.ok()) << undecoded.status();
  EXPECT_TRUE((*undecoded)->Get(0).ok());
  o.decode_images = true;
  decoded = WebDatasetSource::Open(o);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ((*decoded)->Get(0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(WebDatasetTest, ErrorsNameTheShardAndMember) {
  WebDatasetOptions o = Options();
  o.shards = {dir_.path() + "/shard-{0..2}.tar"};
  auto source = WebDatasetSource::Open(o);
  EXPECT_EQ(source.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(source.status().message(), HasSubstr(dir_.File("shard-2.tar")));

  o.shards = {dir_.File("shard-0.tar"), dir_.path() + "/shard-{0,1}.tar"};
  EXPECT_THAT(WebDatasetSource::Open(o).status().message(), HasSubstr("named twice"));
  // Other spellings of one file are the same shard (they were read twice).
  std::filesystem::create_directory(dir_.File("sub"));
  std::filesystem::create_symlink(dir_.File("shard-1.tar"), dir_.File("link.tar"));
  for (const std::string& other : {dir_.path() + "/./shard-0.tar", dir_.path() + "//shard-0.tar",
                                   dir_.path() + "/sub/../shard-0.tar"}) {
    o.shards = {dir_.File("shard-0.tar"), other};
    EXPECT_THAT(WebDatasetSource::Open(o).status().message(),
                HasSubstr(absl::StrCat("shard ", other, " is named twice (also as ",
                                       dir_.File("shard-0.tar"), ")")));
  }
  o.shards = {dir_.path() + "/shard-{0,1}.tar", dir_.File("link.tar")};
  EXPECT_THAT(WebDatasetSource::Open(o).status().message(), HasSubstr("named twice"));
  o.shards = {dir_.path() + "/shard-{0..1.tar"};
  EXPECT_EQ(WebDatasetSource::Open(o).status().code(), absl::StatusCode::kInvalidArgument);

  o = Options();
  o.num_mel_bins = 5;  // The npy members have 4.
  source = WebDatasetSource::Open(o);
  ASSERT_TRUE(source.ok()) << source.status();
  auto sample = (*source)->Get(1);
  EXPECT_EQ(sample.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(sample.status().message(), HasSubstr(dir_.File("shard-0.tar") + ":s0/0001.mel.npy"));
  EXPECT_THAT(sample.status().message(), HasSubstr("expected (frames, 5)"));

  WriteFile(dir_.File("bad.tar"), TarBuilder()
                                      .File("x.png", "not a png")
                                      .File("x.txt", "x")
                                      .File("y.txt", "no image")
                                      .Finish());
  o = Options();
  o.shards = {dir_.File("bad.tar")};
  source = WebDatasetSource::Open(o);
  ASSERT_TRUE(source.ok()) << source.status();
  sample = (*source)->Get(0);
  EXPECT_EQ(sample.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(sample.status().message(), HasSubstr(dir_.File("bad.tar") + ":x.png"));

  WriteFile(dir_.File("none.tar"), TarBuilder().File("y.txt", "no image").Finish());
  o.shards = {dir_.File("none.tar")};
  source = WebDatasetSource::Open(o);
  EXPECT_EQ(source.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(source.status().message(), HasSubstr("1 sample(s) without an image"));

  // A link naming no member is left out, counted and named for the job's log.
  WriteFile(dir_.File("links.tar"), TarBuilder()
                                        .File("a.png", Solid(4, 4, 1, 2, 3))
                                        .File("a.txt", "a")
                                        .Link("b.png", '2', "missing.png")
                                        .File("b.txt", "b")
                                        .Finish());
  o = Options();
  o.shards = {dir_.File("links.tar")};
  source = WebDatasetSource::Open(o);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->stats().unresolved_links, 1);
  EXPECT_THAT((*source)->stats().first_unresolved_link,
              HasSubstr(dir_.File("links.tar") + ": 'b.png' (symlink to 'missing.png')"));
  EXPECT_EQ((*source)->stats().without_image, 1);  // b lost its image.

  // A NaN in a mel spectrogram would only show as a skipped step: the sample is an error.
  std::vector<float> mel(8 * 4, 1.0f);
  mel[4 * 5 + 2] = std::numeric_limits<float>::quiet_NaN();
  WriteFile(dir_.File("nan.tar"), TarBuilder()
                                      .File("z.png", Solid(4, 4, 1, 2, 3))
                                      .File("z.txt", "z")
                                      .File("z.mel.npy", MakeNpy({8, 4}, mel))
                                      .Finish());
  o = Options();
  o.shards = {dir_.File("nan.tar")};
  source = WebDatasetSource::Open(o);
  ASSERT_TRUE(source.ok()) << source.status();
  sample = (*source)->Get(0);
  EXPECT_EQ(sample.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(sample.status().message(), HasSubstr(dir_.File("nan.tar") + ":z.mel.npy"));
  EXPECT_THAT(sample.status().message(), HasSubstr("frame 5, mel bin 2 is not finite"));
}

TEST(WebDatasetOptionsTest, Validation) {
  WebDatasetOptions o{.shards = {"a.tar"}};
  EXPECT_TRUE(ValidateWebDatasetOptions(o).ok());
  o.num_channels = 2;
  EXPECT_FALSE(ValidateWebDatasetOptions(o).ok());
  o = {.shards = {"a.tar"}, .num_mel_bins = 8, .frames_per_token = 4, .max_frames = 2};
  EXPECT_FALSE(ValidateWebDatasetOptions(o).ok());
  o = {};
  EXPECT_THAT(ValidateWebDatasetOptions(o).message(), HasSubstr("shards"));
}

}  // namespace
}  // namespace mimo::data
