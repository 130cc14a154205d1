// Chunked cross-entropy's CPU twin against float64 over the whole vocabulary: losses (f32 < 1e-6
// relative, bf16 logits < 1e-5) and gradients (f32 < 2e-6, bf16 < 1e-2) whatever the chunking
// (one chunk, uneven chunks, single entries), ignored targets, large logits, central differences,
// and argument errors.
#include "kernels/cross_entropy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "tests/kernels/cross_entropy_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct Result {
  std::vector<double> loss, dlogits;
};

// Runs the chunked forward and backward over `logits` (tokens, vocab) in chunks of `chunk`.
Result RunChunked(DType dtype, const HostData& logits, const std::vector<int32_t>& targets,
                  const std::vector<float>& dloss, int64_t vocab, int64_t chunk) {
  const int64_t tokens = static_cast<int64_t>(targets.size());
  const size_t e = DTypeSize(dtype);
  // Every buffer starts as NaN, so one that Init or Finish leaves unwritten shows.
  std::vector<float> max(tokens, std::nanf("")), sum(tokens, std::nanf("")),
      target_logit(tokens, std::nanf("")), loss(tokens, std::nanf("")), lse(tokens, std::nanf(""));
  const CrossEntropyState state{max.data(), sum.data(), target_logit.data()};
  EXPECT_TRUE(CrossEntropyInitCpu(state, tokens).ok());
  std::vector<std::vector<char>> chunks;
  for (int64_t offset = 0; offset < vocab; offset += chunk) {
    const int64_t width = std::min(chunk, vocab - offset);
    std::vector<char> bytes(tokens * width * e);
    for (int64_t t = 0; t < tokens; ++t) {
      std::copy_n(logits.bytes.data() + (t * vocab + offset) * e, width * e,
                  bytes.data() + t * width * e);
    }
    EXPECT_TRUE(CrossEntropyChunkCpu({.dtype = dtype,
                                      .logits = bytes.data(),
                                      .targets = targets.data(),
                                      .tokens = tokens,
                                      .chunk = width,
                                      .vocab_offset = offset,
                                      .state = state})
                    .ok());
    chunks.push_back(std::move(bytes));
  }
  EXPECT_TRUE(CrossEntropyFinishCpu({.targets = targets.data(),
                                     .tokens = tokens,
                                     .state = state,
                                     .loss = loss.data(),
                                     .lse = lse.data()})
                  .ok());
  Result r{std::vector<double>(loss.begin(), loss.end()), std::vector<double>(tokens * vocab)};
  int64_t offset = 0;
  for (std::vector<char>& bytes : chunks) {
    const int64_t width = static_cast<int64_t>(bytes.size() / e) / tokens;
    EXPECT_TRUE(CrossEntropyBackwardCpu({.dtype = dtype,
                                         .logits = bytes.data(),
                                         .targets = targets.data(),
                                         .lse = lse.data(),
                                         .dloss = dloss.data(),
                                         .dlogits = bytes.data(),
                                         .tokens = tokens,
                                         .chunk = width,
                                         .vocab_offset = offset})
                    .ok());
    const std::vector<double> d = ValuesOf(dtype, bytes);
    for (int64_t t = 0; t < tokens; ++t) {
      std::copy_n(d.begin() + t * width, width, r.dlogits.begin() + t * vocab + offset);
    }
    offset += width;
  }
  return r;
}

class CrossEntropyCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(CrossEntropyCpuTest, AnyChunkingMatchesFloat64) {
  const DType dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  const int64_t tokens = 37, vocab = 1000;
  for (float shift : {0.0f, 80.0f}) {  // Large logits: exp would overflow without the max.
    HostData logits = RandomData(dtype, tokens * vocab, random, -10 + shift, 10 + shift);
    std::vector<int32_t> targets(tokens);
    for (int32_t& t : targets) t = static_cast<int32_t>(random() % vocab);
    targets[0] = -100;  // Ignored.
    targets[1] = vocab - 1;
    const HostData dl = RandomData(DType::kF32, tokens, random, 0.5, 1.5);
    const std::vector<float> dloss(dl.exact.begin(), dl.exact.end());
    const CrossEntropyReference ref = CrossEntropyFloat64(logits.exact, targets, dl.exact, vocab);
    for (int64_t chunk : {vocab, int64_t{333}, int64_t{7}, int64_t{1}}) {
      SCOPED_TRACE(::testing::Message()
                   << DTypeName(dtype) << " shift " << shift << " chunk " << chunk);
      const Result r = RunChunked(dtype, logits, targets, dloss, vocab, chunk);
      ASSERT_TRUE(AllFinite(r.loss) && AllFinite(r.dlogits));
      EXPECT_LT(RelativeError(r.loss, ref.loss), dtype == DType::kF32 ? 1e-6 : 1e-5);
      EXPECT_LT(RelativeError(r.dlogits, ref.dlogits), dtype == DType::kF32 ? 2e-6 : 1e-2);
      EXPECT_EQ(r.loss[0], 0.0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, CrossEntropyCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(CrossEntropyCpuGradientTest, BackwardMatchesCentralDifferences) {
  std::mt19937 random(17);
  const int64_t tokens = 3, vocab = 11;
  HostData logits = RandomData(DType::kF32, tokens * vocab, random, -3, 3);
  const std::vector<int32_t> targets = {4, 0, 10};
  const std::vector<float> dloss = {1.0f, 1.0f, 1.0f};
  const Result r = RunChunked(DType::kF32, logits, targets, dloss, vocab, 4);
  auto total = [&](const HostData& l) {
    const Result x = RunChunked(DType::kF32, l, targets, dloss, vocab, 4);
    double s = 0;
    for (double v : x.loss) s += v;
    return s;
  };
  constexpr float h = 1e-2f;
  for (int64_t i = 0; i < tokens * vocab; ++i) {
    HostData plus = logits, minus = logits;
    reinterpret_cast<float*>(plus.bytes.data())[i] += h;
    reinterpret_cast<float*>(minus.bytes.data())[i] -= h;
    const double numeric = (total(plus) - total(minus)) / (2 * h);
    EXPECT_NEAR(r.dlogits[i], numeric, 2e-3) << "logit " << i;
  }
}

TEST(CrossEntropyCpuTest, BadArgumentsAreNamed) {
  float buf[4] = {};
  const int32_t targets[1] = {0};
  const CrossEntropyState state{buf, buf + 1, buf + 2};
  EXPECT_THAT(CrossEntropyChunkCpu({.logits = buf,
                                    .targets = targets,
                                    .tokens = 1,
                                    .chunk = 1,
                                    .vocab_offset = -1,
                                    .state = state})
                  .message(),
              HasSubstr("negative vocab_offset"));
  EXPECT_THAT(
      CrossEntropyChunkCpu({.logits = buf, .targets = targets, .tokens = 1, .chunk = 1}).message(),
      HasSubstr("state.max is null"));
  EXPECT_THAT(CrossEntropyBackwardCpu({.dtype = DType::kI32, .tokens = 1, .chunk = 1}).message(),
              HasSubstr("dtype i32"));
  EXPECT_TRUE(CrossEntropyInitCpu({}, 0).ok());
}

}  // namespace
}  // namespace mimo::kernels
