// MoE token permutation's CPU twins against a float64 stable sort by expert (a fifth of the pairs
// going nowhere): the map exactly,
// the permutation exactly, sums and dot products within 1e-6 (f32) / 1e-2 (bf16) of float64;
// outputs poisoned first; argument checks.
#include "kernels/moe_permute.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/kernels/moe_permute_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct Map {
  std::vector<int32_t> rows, offsets, pair_of_row;
};

Map RunMap(const std::vector<int32_t>& indices, int64_t tokens, int64_t top_k, int64_t experts,
           int64_t align) {
  const int64_t capacity = MoePermuteCapacity(tokens, top_k, experts, align);
  Map m{std::vector<int32_t>(tokens * top_k, 7), std::vector<int32_t>(experts + 1, 7),
        std::vector<int32_t>(capacity, 7)};
  EXPECT_TRUE(MoePermuteMapCpu({.indices = indices.data(),
                                .rows = m.rows.data(),
                                .offsets = m.offsets.data(),
                                .pair_of_row = m.pair_of_row.data(),
                                .tokens = tokens,
                                .top_k = top_k,
                                .experts = experts,
                                .align = align,
                                .capacity = capacity})
                  .ok());
  return m;
}

class MoePermuteCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(MoePermuteCpuTest, ForwardAndBackwardMatchFloat64) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 1e-6 : 1e-2;
  std::mt19937 random(3);
  const int64_t tokens = 37, top_k = 3, experts = 5, align = 4, hidden = 45;
  const std::vector<int32_t> indices = RandomRouting(tokens, top_k, experts, 1.2, random, 0.2);
  const int64_t capacity = MoePermuteCapacity(tokens, top_k, experts, align);
  const Map m = RunMap(indices, tokens, top_k, experts, align);
  const PermuteMapReference want = PermuteMapFloat64(indices, experts, align, capacity);
  ASSERT_EQ(m.rows, want.rows);
  ASSERT_EQ(m.offsets, want.offsets);
  ASSERT_EQ(m.pair_of_row, want.pair_of_row);

  const HostData x = RandomData(dtype, tokens * hidden, random, -1, 1);
  HostData out = PoisonedData(dtype, capacity * hidden);
  ASSERT_TRUE(MoePermuteCpu({.dtype = dtype,
                             .x = x.data(),
                             .pair_of_row = m.pair_of_row.data(),
                             .out = out.data(),
                             .tokens = tokens,
                             .top_k = top_k,
                             .hidden = hidden,
                             .capacity = capacity})
                  .ok());
  const std::vector<double> permuted = ValuesOf(dtype, out.bytes);
  for (int64_t r = 0; r < capacity; ++r) {
    const int32_t pair = want.pair_of_row[r];
    for (int64_t c = 0; c < hidden; ++c) {
      ASSERT_EQ(permuted[r * hidden + c], pair < 0 ? 0.0 : x.exact[pair / top_k * hidden + c])
          << r << " " << c;
    }
  }

  // Backward of the permutation: dx[t] = the sum of its rows of dout.
  const HostData dout = RandomData(dtype, capacity * hidden, random, -1, 1);
  HostData dx = PoisonedData(dtype, tokens * hidden);
  ASSERT_TRUE(MoePermuteBackwardCpu({.dtype = dtype,
                                     .dout = dout.data(),
                                     .rows = m.rows.data(),
                                     .dx = dx.data(),
                                     .tokens = tokens,
                                     .top_k = top_k,
                                     .hidden = hidden})
                  .ok());
  std::vector<double> dx_want(tokens * hidden, 0.0);
  for (int64_t i = 0; i < tokens * top_k; ++i) {
    if (want.rows[i] < 0) continue;
    for (int64_t c = 0; c < hidden; ++c) {
      dx_want[i / top_k * hidden + c] += dout.exact[want.rows[i] * hidden + c];
    }
  }
  EXPECT_LT(RelativeError(ValuesOf(dtype, dx.bytes), dx_want), bound);

  // Unpermute and its backward.
  const HostData h = RandomData(dtype, capacity * hidden, random, -1, 1);
  const HostData probs = RandomData(DType::kF32, tokens * top_k, random, 0, 1);
  const auto* p = reinterpret_cast<const float*>(probs.data());
  HostData y = PoisonedData(dtype, tokens * hidden);
  ASSERT_TRUE(MoeUnpermuteCpu({.dtype = dtype,
                               .h = h.data(),
                               .rows = m.rows.data(),
                               .probs = p,
                               .y = y.data(),
                               .tokens = tokens,
                               .top_k = top_k,
                               .hidden = hidden})
                  .ok());
  std::vector<double> y_want(tokens * hidden, 0.0);
  for (int64_t i = 0; i < tokens * top_k; ++i) {
    if (want.rows[i] < 0) continue;
    for (int64_t c = 0; c < hidden; ++c) {
      y_want[i / top_k * hidden + c] += probs.exact[i] * h.exact[want.rows[i] * hidden + c];
    }
  }
  EXPECT_LT(RelativeError(ValuesOf(dtype, y.bytes), y_want), bound);

  const HostData dy = RandomData(dtype, tokens * hidden, random, -1, 1);
  HostData dh = PoisonedData(dtype, capacity * hidden);
  HostData dprobs = PoisonedData(DType::kF32, tokens * top_k);
  ASSERT_TRUE(MoeUnpermuteBackwardCpu({.dtype = dtype,
                                       .dy = dy.data(),
                                       .h = h.data(),
                                       .rows = m.rows.data(),
                                       .pair_of_row = m.pair_of_row.data(),
                                       .probs = p,
                                       .dh = dh.data(),
                                       .dprobs = reinterpret_cast<float*>(dprobs.data()),
                                       .tokens = tokens,
                                       .top_k = top_k,
                                       .hidden = hidden,
                                       .capacity = capacity})
                  .ok());
  std::vector<double> dh_want(capacity * hidden, 0.0), dprobs_want(tokens * top_k, 0.0);
  for (int64_t i = 0; i < tokens * top_k; ++i) {
    if (want.rows[i] < 0) continue;
    for (int64_t c = 0; c < hidden; ++c) {
      dh_want[want.rows[i] * hidden + c] = probs.exact[i] * dy.exact[i / top_k * hidden + c];
      dprobs_want[i] += dy.exact[i / top_k * hidden + c] * h.exact[want.rows[i] * hidden + c];
    }
  }
  EXPECT_LT(RelativeError(ValuesOf(dtype, dh.bytes), dh_want), bound);
  EXPECT_LT(RelativeError(ValuesOf(DType::kF32, dprobs.bytes), dprobs_want), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(DTypes, MoePermuteCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(MoePermuteTest, PadsEachExpertAndKeepsPairOrder) {
  // Token 0 -> experts 2, 0; token 1 -> 0, 1; token 2 -> 2, 0. Align 2.
  const Map m = RunMap({2, 0, 0, 1, 2, 0}, 3, 2, 4, 2);
  EXPECT_EQ(m.offsets, (std::vector<int32_t>{0, 4, 6, 8, 8}));
  EXPECT_EQ(m.rows, (std::vector<int32_t>{6, 0, 1, 4, 7, 2}));
  EXPECT_EQ(m.pair_of_row,
            (std::vector<int32_t>{1, 2, 5, -1, 3, -1, 0, 4, -1, -1}));  // Capacity 6 + 4 * (2 - 1).
}

TEST(MoePermuteTest, PairsOfExpertMinusOneGoNowhere) {
  // Token 0 -> experts 1, none; token 1 -> none, 0. Align 2.
  const Map m = RunMap({1, -1, -1, 0}, 2, 2, 2, 2);
  EXPECT_EQ(m.offsets, (std::vector<int32_t>{0, 2, 4}));
  EXPECT_EQ(m.rows, (std::vector<int32_t>{2, -1, -1, 0}));
  EXPECT_EQ(m.pair_of_row, (std::vector<int32_t>{3, -1, 0, -1, -1, -1}));
}

TEST(MoePermuteTest, NoTokens) {
  const Map m = RunMap({}, 0, 2, 3, 8);
  EXPECT_EQ(m.offsets, (std::vector<int32_t>{0, 0, 0, 0}));
  EXPECT_EQ(m.pair_of_row, std::vector<int32_t>(21, -1));
  EXPECT_EQ(RunMap({}, 0, 2, 3, 1).offsets, (std::vector<int32_t>{0, 0, 0, 0}));  // Capacity 0.
}

TEST(MoePermuteTest, RejectsBadArguments) {
  std::vector<int32_t> indices = {0, 5}, rows(2), offsets(3), pair_of_row(100);
  MoePermuteMapParams p{.indices = indices.data(),
                        .rows = rows.data(),
                        .offsets = offsets.data(),
                        .pair_of_row = pair_of_row.data(),
                        .tokens = 2,
                        .top_k = 1,
                        .experts = 2,
                        .align = 1,
                        .capacity = 2};
  const absl::Status out_of_range = MoePermuteMapCpu(p);
  EXPECT_EQ(out_of_range.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out_of_range.message().find("expert 5"), absl::string_view::npos);
  indices[1] = -2;
  EXPECT_EQ(MoePermuteMapCpu(p).code(), absl::StatusCode::kInvalidArgument);
  indices[1] = 1;
  EXPECT_TRUE(MoePermuteMapCpu(p).ok());
  p.align = 4;  // Capacity 2 < 2 + 2 * 3.
  EXPECT_EQ(MoePermuteMapCpu(p).code(), absl::StatusCode::kInvalidArgument);
  p.align = 0;
  EXPECT_EQ(MoePermuteMapCpu(p).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MoePermuteCpu({.dtype = DType::kI32, .tokens = 0, .top_k = 1, .hidden = 1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MoeUnpermuteCpu({.tokens = 1, .top_k = 1, .hidden = 4}).code(),
            absl::StatusCode::kInvalidArgument);  // Null buffers.
}

}  // namespace
}  // namespace mimo::kernels
