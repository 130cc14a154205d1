// UploadMicroBatch: the samples' images and audio land in the encoders' input tensors one after
// another (samples without audio skipped), rounded to bf16 where the model computes in bf16;
// media that do not match the batch or the model are refused.
#include "worker/device_batch.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "data/micro_batch.h"
#include "kernels/ops.h"

namespace mimo::worker {
namespace {

using kernels::DType;

MimoModelConfig Model(DType dtype) {
  MimoModelConfig c;
  c.language.transformer.dtype = dtype;
  c.vision = ModalityEncoderConfig{
      .input = EncoderInput::kImages, .image_size = 4, .patch_size = 2, .num_channels = 3};
  c.audio = ModalityEncoderConfig{
      .input = EncoderInput::kAudio, .num_mel_bins = 2, .frames_per_token = 2, .max_frames = 8};
  return c;
}

// Sample i: image values 1000 i + j / 3 (not bf16-exact), and 2 i frames of audio (none for i 0).
std::vector<data::Sample> Samples(int n) {
  std::vector<data::Sample> samples(n);
  for (int i = 0; i < n; ++i) {
    data::Sample& s = samples[i];
    s.caption = "ab";
    for (int j = 0; j < 3 * 4 * 4; ++j) s.image.push_back(1000.0f * i + j / 3.0f);
    s.audio_frames = 2 * i;
    for (int j = 0; j < 2 * s.audio_frames; ++j) s.audio.push_back(-1000.0f * i - j / 7.0f);
  }
  return samples;
}

std::vector<float> Host(const kernels::Tensor& t) {
  std::vector<float> out(t.numel());
  if (t.dtype() == DType::kF32) {
    std::copy(t.data<float>(), t.data<float>() + t.numel(), out.begin());
  } else {
    const uint16_t* bits = t.data<uint16_t>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const uint32_t word = static_cast<uint32_t>(bits[i]) << 16;
      std::memcpy(&out[i], &word, 4);
    }
  }
  return out;
}

absl::StatusOr<data::HostMicroBatch> Pack(const std::vector<data::Sample>& samples) {
  return data::PackSamples(samples, {.seq_length = 64, .image_tokens = 4, .frames_per_token = 2});
}

class DeviceBatchTest : public testing::TestWithParam<DType> {};

TEST_P(DeviceBatchTest, CopiesEachSamplesMediaInOrder) {
  const DType dtype = GetParam();
  auto ops = kernels::NewCpuOps();
  const std::vector<data::Sample> samples = Samples(3);
  auto host = Pack(samples);
  ASSERT_TRUE(host.ok()) << host.status();
  auto d = UploadMicroBatch(*ops, *host, samples, Model(dtype));
  ASSERT_TRUE(d.ok()) << d.status();
  const kernels::Tensor& images = d->batch.vision.input;
  ASSERT_EQ(images.shape(), (kernels::Shape{3, 3, 4, 4}));
  ASSERT_EQ(images.dtype(), dtype);
  std::vector<float> want_images, want_audio;
  for (const data::Sample& s : samples) {
    want_images.insert(want_images.end(), s.image.begin(), s.image.end());
    want_audio.insert(want_audio.end(), s.audio.begin(), s.audio.end());
  }
  // bf16: the fp32 values rounded by the Cast op, which the kernels tests pin down.
  auto rounded = [&](std::vector<float> v) {
    if (dtype == DType::kF32) return v;
    std::vector<uint16_t> bits(v.size());
    EXPECT_TRUE(ops->Cast({.from = DType::kF32,
                           .to = DType::kBF16,
                           .x = v.data(),
                           .y = bits.data(),
                           .n = static_cast<int64_t>(v.size())})
                    .ok());
    for (size_t i = 0; i < v.size(); ++i) {
      const uint32_t word = static_cast<uint32_t>(bits[i]) << 16;
      std::memcpy(&v[i], &word, 4);
    }
    return v;
  };
  EXPECT_EQ(Host(images), rounded(want_images));
  const kernels::Tensor& audio = d->batch.audio.input;
  ASSERT_EQ(audio.shape(), (kernels::Shape{6, 2}));  // Sample 1's 2 frames, then sample 2's 4.
  EXPECT_EQ(Host(audio), rounded(want_audio));
  EXPECT_EQ(d->batch.audio.frames, (std::vector<int32_t>{2, 4}));
  EXPECT_EQ(d->batch.vision_positions, host->vision_positions);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, DeviceBatchTest, testing::Values(DType::kF32, DType::kBF16));

TEST(DeviceBatchTest, AModelWithoutAnEncoderGetsNoneOfItsMedia) {
  auto ops = kernels::NewCpuOps();
  const std::vector<data::Sample> samples = Samples(2);
  auto host = Pack(samples);
  ASSERT_TRUE(host.ok()) << host.status();
  MimoModelConfig config = Model(DType::kF32);
  config.vision.reset();
  auto d = UploadMicroBatch(*ops, *host, samples, config);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->batch.vision.input.defined());
  EXPECT_EQ(d->batch.audio.input.shape(), (kernels::Shape{2, 2}));
}

TEST(DeviceBatchTest, RefusesMediaThatDoNotMatch) {
  auto ops = kernels::NewCpuOps();
  std::vector<data::Sample> samples = Samples(3);
  auto host = Pack(samples);
  ASSERT_TRUE(host.ok()) << host.status();
  const MimoModelConfig config = Model(DType::kF32);
  // A clip with a value missing.
  std::vector<data::Sample> short_clip = samples;
  short_clip[2].audio.pop_back();
  auto d = UploadMicroBatch(*ops, *host, short_clip, config);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(d.status().message().find("a clip of 7 values for 4 frames of 2 mel bins"),
            std::string::npos)
      << d.status();
  // The same clips in another order: as many, as many frames, but not the packed ones.
  std::vector<data::Sample> swapped = Samples(3);
  std::swap(swapped[1].audio, swapped[2].audio);
  std::swap(swapped[1].audio_frames, swapped[2].audio_frames);
  d = UploadMicroBatch(*ops, *host, swapped, config);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(
      d.status().message().find("clip 0 of the samples has 4 frames where the batch packed 2"),
      std::string::npos)
      << d.status();
  // Other samples than the batch was packed from: one image and one clip too few.
  samples.pop_back();
  d = UploadMicroBatch(*ops, *host, samples, config);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(d.status().message().find("2 samples with an image for a batch of 3"),
            std::string::npos)
      << d.status();
  // Images of another size than the model's.
  MimoModelConfig bigger = config;
  bigger.vision->image_size = 6;
  d = UploadMicroBatch(*ops, *host, Samples(3), bigger);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(d.status().message().find("144 values for"), std::string::npos) << d.status();
}

}  // namespace
}  // namespace mimo::worker
