// Attention's CPU twin: forward and backward against float64 on fresh random inputs over packings
// with empty and one-token sequences, grouped-query heads, odd head dims and both masks (f32
// relative error < 2e-6, bf16 < 1e-2; dq and dk against the size of the terms their sums cancel,
// AttentionReference::dq_scale), poisoned outputs fully written, the backward against
// central differences of the forward, and argument errors.
#include "kernels/attention.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "tests/kernels/attention_reference.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct Heads {
  int64_t heads, kv_heads;
};
const std::vector<std::vector<int32_t>> kPackings = {{1}, {5, 0, 17}, {33, 64, 3}};
constexpr Heads kHeads[] = {{1, 1}, {4, 2}, {6, 1}};
constexpr int64_t kHeadDims[] = {8, 24, 64};

class AttentionCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(AttentionCpuTest, MatchesFloat64ForwardAndBackward) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 2e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  for (const std::vector<int32_t>& lengths : kPackings) {
    for (const Heads& hs : kHeads) {
      for (const int64_t head_dim : kHeadDims) {
        for (const bool causal : {false, true}) {
          SCOPED_TRACE(::testing::Message()
                       << DTypeName(dtype) << " " << ::testing::PrintToString(lengths) << " heads "
                       << hs.heads << "/" << hs.kv_heads << " head_dim " << head_dim
                       << (causal ? " causal" : " bidirectional"));
          const std::vector<int32_t> cu = CuSeqlens(lengths);
          const int64_t total = cu.back();
          const int64_t nq = total * hs.heads * head_dim, nkv = total * hs.kv_heads * head_dim;
          const HostData q = RandomData(dtype, nq, random, -2, 2);
          const HostData k = RandomData(dtype, nkv, random, -2, 2);
          const HostData v = RandomData(dtype, nkv, random, -1, 1);
          const HostData dout = RandomData(dtype, nq, random, -1, 1);
          HostData out = PoisonedData(dtype, nq), dq = PoisonedData(dtype, nq);
          HostData dk = PoisonedData(dtype, nkv), dv = PoisonedData(dtype, nkv);
          std::vector<float> lse(hs.heads * total, std::nanf(""));
          const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
          ASSERT_TRUE(AttentionCpu({.dtype = dtype,
                                    .q = q.data(),
                                    .k = k.data(),
                                    .v = v.data(),
                                    .out = out.data(),
                                    .lse = lse.data(),
                                    .cu_seqlens = cu.data(),
                                    .num_seqs = static_cast<int64_t>(lengths.size()),
                                    .total_tokens = total,
                                    .heads = hs.heads,
                                    .kv_heads = hs.kv_heads,
                                    .head_dim = head_dim,
                                    .max_seqlen = *std::max_element(lengths.begin(), lengths.end()),
                                    .scale = scale,
                                    .causal = causal})
                          .ok());
          ASSERT_TRUE(AttentionBackwardCpu({.dtype = dtype,
                                            .dout = dout.data(),
                                            .q = q.data(),
                                            .k = k.data(),
                                            .v = v.data(),
                                            .out = out.data(),
                                            .lse = lse.data(),
                                            .dq = dq.data(),
                                            .dk = dk.data(),
                                            .dv = dv.data(),
                                            .cu_seqlens = cu.data(),
                                            .num_seqs = static_cast<int64_t>(lengths.size()),
                                            .total_tokens = total,
                                            .heads = hs.heads,
                                            .kv_heads = hs.kv_heads,
                                            .head_dim = head_dim,
                                            .scale = scale,
                                            .causal = causal})
                          .ok());
          const AttentionReference ref =
              AttentionFloat64(q.exact, k.exact, v.exact, dout.exact, cu, hs.heads, hs.kv_heads,
                               head_dim, static_cast<double>(scale), causal);
          const std::vector<double> got_out = ValuesOf(dtype, out.bytes),
                                    got_dq = ValuesOf(dtype, dq.bytes),
                                    got_dk = ValuesOf(dtype, dk.bytes),
                                    got_dv = ValuesOf(dtype, dv.bytes);
          const std::vector<double> got_lse(lse.begin(), lse.end());
          ASSERT_TRUE(AllFinite(got_out) && AllFinite(got_lse) && AllFinite(got_dq) &&
                      AllFinite(got_dk) && AllFinite(got_dv));
          EXPECT_LT(RelativeError(got_out, ref.out), bound);
          EXPECT_LT(RelativeError(got_lse, ref.lse), 1e-5);
          EXPECT_LT(RelativeError(got_dq, ref.dq, ref.dq_scale), bound);
          EXPECT_LT(RelativeError(got_dk, ref.dk, ref.dk_scale), bound);
          EXPECT_LT(RelativeError(got_dv, ref.dv), bound);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, AttentionCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// L(q, k, v) = sum(out * u): the backward with dout = u must equal central differences of L.
TEST(AttentionCpuGradientTest, BackwardMatchesCentralDifferences) {
  std::mt19937 random(7);
  const std::vector<int32_t> cu = CuSeqlens({3, 0, 4});
  const int64_t total = cu.back(), heads = 2, kv_heads = 1, head_dim = 4;
  const int64_t nq = total * heads * head_dim, nkv = total * kv_heads * head_dim;
  auto floats = [&](int64_t n, float lo, float hi) {
    const HostData d = RandomData(DType::kF32, n, random, lo, hi);
    return std::vector<float>(d.exact.begin(), d.exact.end());
  };
  const std::vector<float> q = floats(nq, -1, 1), k = floats(nkv, -1, 1), v = floats(nkv, -1, 1),
                           u = floats(nq, -1, 1);
  for (const bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "bidirectional");
    auto params = [&](const std::vector<float>& qv, const std::vector<float>& kv,
                      const std::vector<float>& vv, std::vector<float>& out,
                      std::vector<float>& lse) {
      return AttentionParams{.q = qv.data(),
                             .k = kv.data(),
                             .v = vv.data(),
                             .out = out.data(),
                             .lse = lse.data(),
                             .cu_seqlens = cu.data(),
                             .num_seqs = 3,
                             .total_tokens = total,
                             .heads = heads,
                             .kv_heads = kv_heads,
                             .head_dim = head_dim,
                             .scale = 0.7f,
                             .causal = causal};
    };
    auto loss = [&](const std::vector<float>& qv, const std::vector<float>& kv,
                    const std::vector<float>& vv) {
      std::vector<float> out(nq), lse(heads * total);
      EXPECT_TRUE(AttentionCpu(params(qv, kv, vv, out, lse)).ok());
      double l = 0;
      for (int64_t i = 0; i < nq; ++i) l += static_cast<double>(out[i]) * u[i];
      return l;
    };
    std::vector<float> out(nq), lse(heads * total), dq(nq), dk(nkv), dv(nkv);
    ASSERT_TRUE(AttentionCpu(params(q, k, v, out, lse)).ok());
    ASSERT_TRUE(AttentionBackwardCpu({.dout = u.data(),
                                      .q = q.data(),
                                      .k = k.data(),
                                      .v = v.data(),
                                      .out = out.data(),
                                      .lse = lse.data(),
                                      .dq = dq.data(),
                                      .dk = dk.data(),
                                      .dv = dv.data(),
                                      .cu_seqlens = cu.data(),
                                      .num_seqs = 3,
                                      .total_tokens = total,
                                      .heads = heads,
                                      .kv_heads = kv_heads,
                                      .head_dim = head_dim,
                                      .scale = 0.7f,
                                      .causal = causal})
                    .ok());
    constexpr float h = 1e-2f;
    auto numeric = [&](int which, int64_t i) {
      std::vector<float> plus[3] = {q, k, v}, minus[3] = {q, k, v};
      plus[which][i] += h;
      minus[which][i] -= h;
      return (loss(plus[0], plus[1], plus[2]) - loss(minus[0], minus[1], minus[2])) / (2 * h);
    };
    for (int64_t i = 0; i < nq; ++i) {
      const double n = numeric(0, i);
      EXPECT_NEAR(dq[i], n, 2e-3 + 2e-3 * std::abs(n)) << "q[" << i << "]";
    }
    for (int64_t i = 0; i < nkv; ++i) {
      const double nk = numeric(1, i), nv = numeric(2, i);
      EXPECT_NEAR(dk[i], nk, 2e-3 + 2e-3 * std::abs(nk)) << "k[" << i << "]";
      EXPECT_NEAR(dv[i], nv, 2e-3 + 2e-3 * std::abs(nv)) << "v[" << i << "]";
    }
  }
}

TEST(AttentionCpuTest, BadArgumentsAreNamed) {
  float buf[64] = {};
  const int32_t cu[] = {0, 2, 4};
  const AttentionParams good{.q = buf,
                             .k = buf,
                             .v = buf,
                             .out = buf,
                             .lse = buf,
                             .cu_seqlens = cu,
                             .num_seqs = 2,
                             .total_tokens = 4,
                             .heads = 2,
                             .kv_heads = 1,
                             .head_dim = 4,
                             .max_seqlen = 2};
  EXPECT_TRUE(AttentionCpu(good).ok());
  AttentionParams p = good;
  p.dtype = DType::kI32;
  EXPECT_THAT(AttentionCpu(p).message(), HasSubstr("dtype i32 is not supported"));
  p = good;
  p.head_dim = 0;
  EXPECT_THAT(AttentionCpu(p).message(), HasSubstr("head_dim (0) must be positive"));
  p = good;
  p.heads = 3;
  p.kv_heads = 2;
  EXPECT_THAT(AttentionCpu(p).message(), HasSubstr("heads 3 is not a multiple of kv_heads 2"));
  p = good;
  p.total_tokens = -1;
  EXPECT_THAT(AttentionCpu(p).message(), HasSubstr("bad sizes"));
  p = good;
  p.k = nullptr;
  EXPECT_THAT(AttentionCpu(p).message(), HasSubstr("k is null"));
  p = good;
  p.scale = std::numeric_limits<float>::infinity();
  EXPECT_THAT(AttentionCpu(p).message(), HasSubstr("scale must be finite"));
  p = good;
  p.num_seqs = 0;
  EXPECT_THAT(AttentionCpu(p).message(), HasSubstr("4 tokens but no sequences"));
  p = good;
  p.total_tokens = 3;
  EXPECT_THAT(AttentionCpu(p).message(), HasSubstr("cu_seqlens ends at 4, not at total_tokens 3"));
  const int32_t decreasing[] = {0, 3, 2, 4}, late_start[] = {1, 2, 4};
  p = good;
  p.cu_seqlens = decreasing;
  p.num_seqs = 3;
  p.max_seqlen = 0;
  EXPECT_THAT(AttentionCpu(p).message(), HasSubstr("cu_seqlens decreases at 2 (3 then 2)"));
  p = good;
  p.cu_seqlens = late_start;
  EXPECT_THAT(AttentionCpu(p).message(), HasSubstr("cu_seqlens[0] is 1, not 0"));
  p = good;
  p.max_seqlen = 1;
  EXPECT_THAT(AttentionCpu(p).message(), HasSubstr("2 tokens, more than max_seqlen 1"));
  // No tokens: nothing is read or written.
  EXPECT_TRUE(AttentionCpu({.heads = 1, .kv_heads = 1, .head_dim = 8}).ok());

  const AttentionBackwardParams good_b{.dout = buf,
                                       .q = buf,
                                       .k = buf,
                                       .v = buf,
                                       .out = buf,
                                       .lse = buf,
                                       .dq = buf,
                                       .dk = buf,
                                       .dv = buf,
                                       .cu_seqlens = cu,
                                       .num_seqs = 2,
                                       .total_tokens = 4,
                                       .heads = 2,
                                       .kv_heads = 1,
                                       .head_dim = 4};
  EXPECT_TRUE(AttentionBackwardCpu(good_b).ok());
  AttentionBackwardParams b = good_b;
  b.dv = nullptr;
  EXPECT_THAT(AttentionBackwardCpu(b).message(), HasSubstr("dv is null"));
  b = good_b;
  b.kv_heads = 0;
  EXPECT_THAT(AttentionBackwardCpu(b).message(), HasSubstr("kv_heads (0)"));
  b = good_b;
  b.dtype = DType::kI64;
  EXPECT_THAT(AttentionBackwardCpu(b).message(), HasSubstr("dtype i64 is not supported"));
}

}  // namespace
}  // namespace mimo::kernels
