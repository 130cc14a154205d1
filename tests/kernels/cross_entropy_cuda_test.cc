// Chunked cross-entropy's CUDA kernels against float64 over the whole vocabulary: an odd
// vocabulary (50257) in uneven chunks (16-byte vector and scalar paths), ignored targets, large
// logits, few tokens with rows split over block clusters; losses (f32 < 2e-6 relative, bf16 logits
// < 1e-5) and gradients (f32 < 2e-6, bf16 < 1e-2). Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/cross_entropy.h"
#include "tests/kernels/cross_entropy_reference.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class CrossEntropyCudaTest : public CudaOpTest {};

TEST_P(CrossEntropyCudaTest, ChunkedMatchesFloat64) {
  const DType dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  // Chunks of 1025 (bf16) or 2050 (f32) packs: the backward's last segment of a row is partial.
  const int64_t tokens = 257, vocab = 50257, chunk = 8200;
  const size_t e = DTypeSize(dtype);
  for (float shift : {0.0f, 80.0f}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " shift " << shift);
    const HostData logits = RandomData(dtype, tokens * vocab, random, -10 + shift, 10 + shift);
    std::vector<int32_t> targets(tokens);
    for (int32_t& t : targets) t = static_cast<int32_t>(random() % vocab);
    targets[0] = -100;
    targets[1] = vocab - 1;
    const HostData dloss = RandomData(DType::kF32, tokens, random, 0.5, 1.5);
    const DeviceBuffer d_targets(BytesOf(targets.data(), tokens * 4)), d_dloss(dloss.bytes),
        max(tokens * 4), sum(tokens * 4), target_logit(tokens * 4), loss(tokens * 4),
        lse(tokens * 4);
    const CrossEntropyState state{max.as<float>(), sum.as<float>(), target_logit.as<float>()};
    ASSERT_TRUE(LaunchCrossEntropyInit(state, tokens, nullptr).ok());
    std::vector<double> got_dlogits(tokens * vocab);
    std::vector<std::vector<char>> host_chunks;
    for (int64_t offset = 0; offset < vocab; offset += chunk) {
      const int64_t width = std::min(chunk, vocab - offset);
      std::vector<char> bytes(tokens * width * e);
      for (int64_t t = 0; t < tokens; ++t) {
        std::copy_n(logits.bytes.data() + (t * vocab + offset) * e, width * e,
                    bytes.data() + t * width * e);
      }
      const DeviceBuffer d_chunk(bytes);
      ASSERT_TRUE(LaunchCrossEntropyChunk({.dtype = dtype,
                                           .logits = d_chunk.get(),
                                           .targets = d_targets.as<const int32_t>(),
                                           .tokens = tokens,
                                           .chunk = width,
                                           .vocab_offset = offset,
                                           .state = state},
                                          nullptr)
                      .ok());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      host_chunks.push_back(std::move(bytes));
    }
    ASSERT_TRUE(LaunchCrossEntropyFinish({.targets = d_targets.as<const int32_t>(),
                                          .tokens = tokens,
                                          .state = state,
                                          .loss = loss.as<float>(),
                                          .lse = lse.as<float>()},
                                         nullptr)
                    .ok());
    int64_t offset = 0;
    for (const std::vector<char>& bytes : host_chunks) {
      const int64_t width = static_cast<int64_t>(bytes.size() / e) / tokens;
      const DeviceBuffer d_chunk(bytes);  // Recomputed logits, in the backward.
      ASSERT_TRUE(LaunchCrossEntropyBackward({.dtype = dtype,
                                              .logits = d_chunk.get(),
                                              .targets = d_targets.as<const int32_t>(),
                                              .lse = lse.as<const float>(),
                                              .dloss = d_dloss.as<const float>(),
                                              .dlogits = d_chunk.get(),
                                              .tokens = tokens,
                                              .chunk = width,
                                              .vocab_offset = offset},
                                             nullptr)
                      .ok());
      const std::vector<double> d = ValuesOf(dtype, d_chunk.Bytes());
      for (int64_t t = 0; t < tokens; ++t) {
        std::copy_n(d.begin() + t * width, width, got_dlogits.begin() + t * vocab + offset);
      }
      offset += width;
    }
    const CrossEntropyReference ref =
        CrossEntropyFloat64(logits.exact, targets, dloss.exact, vocab);
    const std::vector<double> got_loss = ValuesOf(DType::kF32, loss.Bytes());
    ASSERT_TRUE(AllFinite(got_loss) && AllFinite(got_dlogits));
    EXPECT_LT(RelativeError(got_loss, ref.loss), dtype == DType::kF32 ? 2e-6 : 1e-5);
    EXPECT_LT(RelativeError(got_dlogits, ref.dlogits), dtype == DType::kF32 ? 2e-6 : 1e-2);
    EXPECT_EQ(got_loss[0], 0.0);
  }
}

// Few tokens and one wide chunk: each row is split over a cluster of blocks whose states are
// combined in a fixed order (the vector path), so a rerun gives the same bits.
TEST_P(CrossEntropyCudaTest, FewTokensWideChunkMatchesFloat64AndRepeats) {
  const DType dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  const int64_t tokens = 5, vocab = 131072;
  const HostData logits = RandomData(dtype, tokens * vocab, random, -10, 10);
  std::vector<int32_t> targets = {3, -100, static_cast<int32_t>(vocab - 1), 70000, 1};
  const HostData dloss = RandomData(DType::kF32, tokens, random, 0.5, 1.5);
  const DeviceBuffer d_logits(logits.bytes), d_targets(BytesOf(targets.data(), tokens * 4)),
      d_dloss(dloss.bytes), max(tokens * 4), sum(tokens * 4), target_logit(tokens * 4),
      loss(tokens * 4), lse(tokens * 4), dlogits(logits.bytes.size());
  const CrossEntropyState state{max.as<float>(), sum.as<float>(), target_logit.as<float>()};
  std::vector<char> first_loss;
  for (int run = 0; run < 2; ++run) {
    ASSERT_TRUE(LaunchCrossEntropyInit(state, tokens, nullptr).ok());
    ASSERT_TRUE(LaunchCrossEntropyChunk({.dtype = dtype,
                                         .logits = d_logits.get(),
                                         .targets = d_targets.as<const int32_t>(),
                                         .tokens = tokens,
                                         .chunk = vocab,
                                         .state = state},
                                        nullptr)
                    .ok());
    ASSERT_TRUE(LaunchCrossEntropyFinish({.targets = d_targets.as<const int32_t>(),
                                          .tokens = tokens,
                                          .state = state,
                                          .loss = loss.as<float>(),
                                          .lse = lse.as<float>()},
                                         nullptr)
                    .ok());
    if (run == 0) first_loss = loss.Bytes();
  }
  EXPECT_EQ(loss.Bytes(), first_loss);
  ASSERT_TRUE(LaunchCrossEntropyBackward({.dtype = dtype,
                                          .logits = d_logits.get(),
                                          .targets = d_targets.as<const int32_t>(),
                                          .lse = lse.as<const float>(),
                                          .dloss = d_dloss.as<const float>(),
                                          .dlogits = dlogits.get(),
                                          .tokens = tokens,
                                          .chunk = vocab},
                                         nullptr)
                  .ok());
  const CrossEntropyReference ref = CrossEntropyFloat64(logits.exact, targets, dloss.exact, vocab);
  const std::vector<double> got_loss = ValuesOf(DType::kF32, loss.Bytes()),
                            got_dlogits = ValuesOf(dtype, dlogits.Bytes());
  ASSERT_TRUE(AllFinite(got_loss) && AllFinite(got_dlogits));
  EXPECT_LT(RelativeError(got_loss, ref.loss), dtype == DType::kF32 ? 2e-6 : 1e-5);
  EXPECT_LT(RelativeError(got_dlogits, ref.dlogits), dtype == DType::kF32 ? 2e-6 : 1e-2);
  EXPECT_EQ(got_loss[1], 0.0);
}

INSTANTIATE_TEST_SUITE_P(DTypes, CrossEntropyCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(CrossEntropyCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(LaunchCrossEntropyChunk({.tokens = 1, .chunk = 1}, nullptr).message(),
              HasSubstr("state.max is null"));
  EXPECT_THAT(LaunchCrossEntropyBackward({.tokens = 2, .chunk = 2}, nullptr).message(),
              HasSubstr("logits is null"));
  EXPECT_TRUE(LaunchCrossEntropyInit({}, 0, nullptr).ok());
}

}  // namespace
}  // namespace mimo::kernels
