// Embedding's CPU twin: the lookup copies rows exactly (zeros and a count for ids out of range),
// the backward equals float64 sums over duplicate ids (f32 relative error < 1e-6), overwrites or
// accumulates, and skips bad ids; the backward against central differences of the lookup;
// argument errors.
#include "kernels/embedding.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class EmbeddingCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(EmbeddingCpuTest, LooksUpRowsAndSumsDuplicateIds) {
  const DType dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  const int64_t vocab = 37, dim = 19, tokens = 301;
  const HostData table = RandomData(dtype, vocab * dim, random, -1, 1);
  std::vector<int32_t> ids(tokens);
  for (int32_t& id : ids) id = static_cast<int32_t>(random() % 8);  // Many duplicates...
  ids[5] = 36;                                                      // ...and the last row.
  ids[7] = -3;                                                      // Out of range.
  ids[9] = 37;
  HostData out = PoisonedData(dtype, tokens * dim);
  int32_t bad = 1;
  ASSERT_TRUE(EmbeddingCpu({.dtype = dtype,
                            .table = table.data(),
                            .ids = ids.data(),
                            .out = out.data(),
                            .bad_ids = &bad,
                            .vocab = vocab,
                            .tokens = tokens,
                            .dim = dim})
                  .ok());
  EXPECT_EQ(bad, 3);  // Added to.
  const std::vector<double> got = ValuesOf(dtype, out.bytes);
  for (int64_t t = 0; t < tokens; ++t) {
    const bool in_range = ids[t] >= 0 && ids[t] < vocab;
    for (int64_t d = 0; d < dim; ++d) {
      ASSERT_EQ(got[t * dim + d], in_range ? table.exact[ids[t] * dim + d] : 0.0) << t << "," << d;
    }
  }
  const HostData dout = RandomData(dtype, tokens * dim, random, -1, 1);
  std::vector<float> dtable(vocab * dim, 7.0f);
  EmbeddingBackwardParams b{.dtype = dtype,
                            .dout = dout.data(),
                            .ids = ids.data(),
                            .dtable = dtable.data(),
                            .vocab = vocab,
                            .tokens = tokens,
                            .dim = dim};
  ASSERT_TRUE(EmbeddingBackwardCpu(b).ok());
  std::vector<double> want(vocab * dim, 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    if (ids[t] < 0 || ids[t] >= vocab) continue;
    for (int64_t d = 0; d < dim; ++d) want[ids[t] * dim + d] += dout.exact[t * dim + d];
  }
  EXPECT_LT(RelativeError(std::vector<double>(dtable.begin(), dtable.end()), want), 1e-6);
  EXPECT_EQ(dtable[20 * dim], 0.0f);  // Row 20 is named by no id: overwritten with zero.
  // Accumulating a second micro-batch doubles every sum.
  b.accumulate = true;
  ASSERT_TRUE(EmbeddingBackwardCpu(b).ok());
  for (double& w : want) w *= 2;
  EXPECT_LT(RelativeError(std::vector<double>(dtable.begin(), dtable.end()), want), 1e-6);
}

// A vocabulary-parallel member's part of the table: rows are ids [first_id, first_id + vocab);
// the other ids give zeros (and count as bad where a counter is given) and no gradient.
TEST(EmbeddingCpuTest, APartOfTheTableStartsAtFirstId) {
  const std::vector<float> table = {1, 2, 3, 4, 5, 6};  // Ids 10, 11, 12; dim 2.
  const std::vector<int32_t> ids = {11, 9, 12, 13, 10, 11};
  std::vector<float> out(12, -1.0f);
  int32_t bad = 0;
  ASSERT_TRUE(EmbeddingCpu({.table = table.data(),
                            .ids = ids.data(),
                            .out = out.data(),
                            .bad_ids = &bad,
                            .vocab = 3,
                            .tokens = 6,
                            .dim = 2,
                            .first_id = 10})
                  .ok());
  EXPECT_EQ(out, (std::vector<float>{3, 4, 0, 0, 5, 6, 0, 0, 1, 2, 3, 4}));
  EXPECT_EQ(bad, 2);
  const std::vector<float> dout = {1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6};
  std::vector<float> dtable(6, 9.0f);
  ASSERT_TRUE(EmbeddingBackwardCpu({.dout = dout.data(),
                                    .ids = ids.data(),
                                    .dtable = dtable.data(),
                                    .vocab = 3,
                                    .tokens = 6,
                                    .dim = 2,
                                    .first_id = 10})
                  .ok());
  EXPECT_EQ(dtable, (std::vector<float>{5, 5, 7, 7, 3, 3}));  // Id 11 twice: rows 0 and 5.
  EXPECT_THAT(EmbeddingCpu({.vocab = 1, .tokens = 0, .dim = 1, .first_id = -1}).message(),
              HasSubstr("first_id -1"));
}

// The order of the backward's additions is part of the contract (the CUDA kernels reproduce it
// bitwise): id 1's run of sorted positions starts after id 0's 10 and is cut at every multiple of
// kEmbeddingBackwardChunk; each piece is summed from zero and added to the table row in order.
TEST(EmbeddingCpuTest, TheBackwardAddsChunkPiecesInOrder) {
  const int64_t tokens = 700;
  std::vector<int32_t> ids(tokens, 1);
  for (int64_t t = 0; t < 10; ++t) ids[t * 37] = 0;
  std::mt19937 random(7);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> dout(tokens);
  for (float& v : dout) v = uniform(random) * (1 << (random() % 20));
  std::vector<float> dtable = {0.0f, 0.5f};
  ASSERT_TRUE(EmbeddingBackwardCpu({.dout = dout.data(),
                                    .ids = ids.data(),
                                    .dtable = dtable.data(),
                                    .vocab = 2,
                                    .tokens = tokens,
                                    .dim = 1,
                                    .accumulate = true})
                  .ok());
  float want = 0.5f, piece = 0.0f;
  int64_t position = 10;  // Id 1's first sorted position.
  for (int64_t t = 0; t < tokens; ++t) {
    if (ids[t] != 1) continue;
    if (position % kEmbeddingBackwardChunk == 0) {
      want += piece;
      piece = 0.0f;
    }
    piece += dout[t];
    ++position;
  }
  want += piece;
  EXPECT_EQ(dtable[1], want);
}

INSTANTIATE_TEST_SUITE_P(DTypes, EmbeddingCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// L(table) = sum(out * u): the backward with dout = u must equal central differences of L, rows
// named by several ids (and by none) included.
TEST(EmbeddingCpuGradientTest, BackwardMatchesCentralDifferences) {
  std::mt19937 random(17);
  const int64_t vocab = 5, dim = 3;
  const std::vector<int32_t> ids = {2, 0, 2, 4, 2, 0};  // Row 1 and 3 unused.
  const int64_t tokens = static_cast<int64_t>(ids.size());
  const HostData table = RandomData(DType::kF32, vocab * dim, random, -1, 1);
  const HostData u = RandomData(DType::kF32, tokens * dim, random, -1, 1);
  auto forward = [&](const std::vector<float>& t) {
    std::vector<float> out(tokens * dim);
    EXPECT_TRUE(EmbeddingCpu({.table = t.data(),
                              .ids = ids.data(),
                              .out = out.data(),
                              .vocab = vocab,
                              .tokens = tokens,
                              .dim = dim})
                    .ok());
    return out;
  };
  std::vector<float> dtable(vocab * dim, std::nanf(""));  // Unwritten rows show.
  ASSERT_TRUE(EmbeddingBackwardCpu({.dout = u.data(),
                                    .ids = ids.data(),
                                    .dtable = dtable.data(),
                                    .vocab = vocab,
                                    .tokens = tokens,
                                    .dim = dim})
                  .ok());
  ExpectCentralDifferences(table, u, dtable, forward);
}

TEST(EmbeddingCpuTest, BadArgumentsAreNamed) {
  float buf[4] = {};
  const int32_t ids[1] = {0};
  EXPECT_THAT(EmbeddingCpu({.dtype = DType::kI32, .vocab = 1, .tokens = 1, .dim = 1}).message(),
              HasSubstr("Embedding: dtype i32 is not supported"));
  EXPECT_THAT(EmbeddingCpu({.table = buf, .ids = ids, .vocab = 1, .tokens = 1, .dim = 1}).message(),
              HasSubstr("out is null"));
  EXPECT_THAT(EmbeddingCpu({.vocab = 1, .tokens = int64_t{1} << 31, .dim = 1}).message(),
              HasSubstr("bad sizes"));
  EXPECT_THAT(
      EmbeddingBackwardCpu({.dout = buf, .ids = ids, .vocab = 1, .tokens = 1, .dim = 1}).message(),
      HasSubstr("dtable is null"));
  EXPECT_TRUE(EmbeddingCpu({.vocab = 5, .tokens = 0, .dim = 3}).ok());
}

}  // namespace
}  // namespace mimo::kernels
