// The attention merge's CPU twin: against float64 on fresh random inputs and odd shapes (f32
// relative error < 1e-6), rows without keys kept, `first` copying the part, the attention over two
// key sets merged equal to the attention over their union (< 1e-5), and argument errors.
#include "kernels/attention_merge.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

constexpr float kNoKeys = -std::numeric_limits<float>::infinity();

std::vector<float> RandomFloats(int64_t n, std::mt19937& random, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(random);
  return v;
}

class AttentionMergeCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(AttentionMergeCpuTest, MatchesFloat64) {
  const DType dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  for (const auto& [tokens, heads, head_dim] :
       {std::tuple{1, 1, 1}, std::tuple{7, 3, 5}, std::tuple{33, 4, 64}}) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(dtype) << " " << tokens << "x" << heads << "x" << head_dim);
    const int64_t n = int64_t{tokens} * heads * head_dim, rows = int64_t{tokens} * heads;
    std::vector<float> out = RandomFloats(n, random, -2, 2);
    std::vector<float> lse = RandomFloats(rows, random, -3, 6);
    const HostData part = RandomData(dtype, n, random, -2, 2);
    std::vector<float> part_lse = RandomFloats(rows, random, -3, 6);
    lse[0] = kNoKeys;                              // Row 0 of head 0: keys only in the part.
    if (rows > 2) part_lse[1] = kNoKeys;           // Only in the running result.
    if (rows > 2) lse[2] = part_lse[2] = kNoKeys;  // In neither: kept.
    const std::vector<float> out0 = out, lse0 = lse;
    ASSERT_TRUE(AttentionMergeCpu({.dtype = dtype,
                                   .out = out.data(),
                                   .lse = lse.data(),
                                   .part_out = part.data(),
                                   .part_lse = part_lse.data(),
                                   .tokens = tokens,
                                   .heads = heads,
                                   .head_dim = head_dim})
                    .ok());
    std::vector<double> want(n), want_lse(rows), got(out.begin(), out.end());
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t t = 0; t < tokens; ++t) {
        const double l = lse0[h * tokens + t], p = part_lse[h * tokens + t];
        const double total = std::log(std::exp(l) + std::exp(p));
        want_lse[h * tokens + t] = std::isinf(l) && std::isinf(p) ? l : total;
        for (int64_t i = 0; i < head_dim; ++i) {
          const int64_t e = (t * heads + h) * head_dim + i;
          want[e] = std::isinf(l) && std::isinf(p)
                        ? out0[e]
                        : out0[e] * std::exp(l - total) + part.exact[e] * std::exp(p - total);
        }
      }
    }
    ASSERT_TRUE(AllFinite(got));
    EXPECT_LT(RelativeError(got, want), 1e-6);
    for (int64_t i = 0; i < rows; ++i) {
      if (std::isinf(want_lse[i])) {
        EXPECT_EQ(lse[i], kNoKeys);
      } else {
        EXPECT_NEAR(lse[i], want_lse[i], 1e-6 * std::max(1.0, std::abs(want_lse[i])));
      }
    }
    // first: the part itself, whatever the running buffers held.
    std::vector<float> poisoned(n, std::numeric_limits<float>::quiet_NaN()), lse1(rows, 1e30f);
    ASSERT_TRUE(AttentionMergeCpu({.dtype = dtype,
                                   .out = poisoned.data(),
                                   .lse = lse1.data(),
                                   .part_out = part.data(),
                                   .part_lse = part_lse.data(),
                                   .tokens = tokens,
                                   .heads = heads,
                                   .head_dim = head_dim,
                                   .first = true})
                    .ok());
    EXPECT_EQ(std::vector<double>(poisoned.begin(), poisoned.end()), part.exact);
    EXPECT_EQ(lse1, part_lse);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, AttentionMergeCpuTest,
                         ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// Queries over keys [0, T) and keys [T, 2T) merged against the same queries over all 2T keys (one
// sequence of [q; q] over [k1; k2], bidirectional: its first T rows).
TEST(AttentionMergeTest, TwoKeySetsMergedEqualTheirUnion) {
  std::mt19937 random(std::random_device{}());
  const int64_t t = 13, heads = 4, kv_heads = 2, d = 8, qd = heads * d, kd = kv_heads * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const std::vector<float> q = RandomFloats(t * qd, random, -1, 1);
  const std::vector<float> k = RandomFloats(2 * t * kd, random, -1, 1);
  const std::vector<float> v = RandomFloats(2 * t * kd, random, -1, 1);
  auto attend = [&](const float* qs, const float* ks, const float* vs, int64_t tokens,
                    std::vector<float>& out, std::vector<float>& lse) {
    out.assign(tokens * qd, 0);
    lse.assign(heads * tokens, 0);
    const std::vector<int32_t> cu = {0, static_cast<int32_t>(tokens)};
    ASSERT_TRUE(AttentionCpu({.q = qs,
                              .k = ks,
                              .v = vs,
                              .out = out.data(),
                              .lse = lse.data(),
                              .cu_seqlens = cu.data(),
                              .num_seqs = 1,
                              .total_tokens = tokens,
                              .heads = heads,
                              .kv_heads = kv_heads,
                              .head_dim = d,
                              .scale = scale})
                    .ok());
  };
  std::vector<float> out, lse, part, part_lse;
  attend(q.data(), k.data(), v.data(), t, out, lse);
  attend(q.data(), k.data() + t * kd, v.data() + t * kd, t, part, part_lse);
  ASSERT_TRUE(AttentionMergeCpu({.out = out.data(),
                                 .lse = lse.data(),
                                 .part_out = part.data(),
                                 .part_lse = part_lse.data(),
                                 .tokens = t,
                                 .heads = heads,
                                 .head_dim = d})
                  .ok());
  std::vector<float> qq = q, whole, whole_lse;
  qq.insert(qq.end(), q.begin(), q.end());
  attend(qq.data(), k.data(), v.data(), 2 * t, whole, whole_lse);
  EXPECT_LT(RelativeError(std::vector<double>(out.begin(), out.end()),
                          std::vector<double>(whole.begin(), whole.begin() + t * qd)),
            1e-5);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < t; ++i) {
      EXPECT_NEAR(lse[h * t + i], whole_lse[h * 2 * t + i], 1e-5);
    }
  }
}

TEST(AttentionMergeTest, RejectsBadArguments) {
  float out = 0, lse = 0, part = 0, part_lse = 0;
  const AttentionMergeParams ok{.out = &out,
                                .lse = &lse,
                                .part_out = &part,
                                .part_lse = &part_lse,
                                .tokens = 1,
                                .heads = 1,
                                .head_dim = 1};
  EXPECT_TRUE(AttentionMergeCpu(ok).ok());
  AttentionMergeParams p = ok;
  p.dtype = DType::kI32;
  EXPECT_FALSE(AttentionMergeCpu(p).ok());
  p = ok;
  p.heads = 0;
  EXPECT_THAT(AttentionMergeCpu(p).message(), HasSubstr("heads 0"));
  p = ok;
  p.part_lse = nullptr;
  EXPECT_THAT(AttentionMergeCpu(p).message(), HasSubstr("part_lse"));
  p.tokens = 0;  // Nothing to read.
  EXPECT_TRUE(AttentionMergeCpu(p).ok());
}

}  // namespace
}  // namespace mimo::kernels
