// Attention's CUDA kernels against float64 on fresh random inputs: head dims 64 and 128 and odd
// multiples of 8 (padded to a tile), sequences longer than a tile, packings with empty and
// one-token sequences, grouped-query heads and both masks (f32 relative error < 5e-6, bf16 <
// 1e-2; dq and dk against the size of the terms their sums cancel), poisoned outputs fully written,
// bitwise-reproducible dk and dv, and dq too in deterministic mode; argument errors. Skips without
// a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "tests/kernels/attention_reference.h"
#include "tests/kernels/cuda_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class AttentionCudaTest : public CudaOpTest {};

struct Case {
  std::vector<int32_t> lengths;
  int64_t heads, kv_heads, head_dim;
};

TEST_P(AttentionCudaTest, MatchesFloat64ForwardAndBackward) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 5e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  const std::vector<Case> cases = {
      {{300}, 2, 2, 64},        {{300}, 2, 1, 128},        {{5, 0, 17, 130}, 4, 2, 64},
      {{33, 64, 3}, 6, 1, 128}, {{129, 1, 200}, 2, 2, 24}, {{77, 150}, 2, 1, 80},
      {{100, 64}, 2, 2, 256},   {{70, 0}, 1, 1, 8},        {{1000}, 1, 1, 128}};
  for (const Case& c : cases) {
    for (const bool causal : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << DTypeName(dtype) << " " << ::testing::PrintToString(c.lengths) << " heads "
                   << c.heads << "/" << c.kv_heads << " head_dim " << c.head_dim
                   << (causal ? " causal" : " bidirectional"));
      const std::vector<int32_t> cu = CuSeqlens(c.lengths);
      const int64_t total = cu.back();
      const int64_t nq = total * c.heads * c.head_dim, nkv = total * c.kv_heads * c.head_dim;
      const size_t e = DTypeSize(dtype);
      const HostData q = RandomData(dtype, nq, random, -2, 2);
      const HostData k = RandomData(dtype, nkv, random, -2, 2);
      const HostData v = RandomData(dtype, nkv, random, -1, 1);
      const HostData dout = RandomData(dtype, nq, random, -1, 1);
      const DeviceBuffer d_q(q.bytes), d_k(k.bytes), d_v(v.bytes), d_dout(dout.bytes),
          d_cu(BytesOf(cu.data(), cu.size() * sizeof(int32_t)));
      const DeviceBuffer d_out(nq * e), d_lse(c.heads * total * 4), d_dq(nq * e), d_dk(nkv * e),
          d_dv(nkv * e);
      const size_t workspace_bytes = AttentionBackwardWorkspaceBytes(total, c.heads, c.head_dim);
      const DeviceBuffer workspace(workspace_bytes);
      const int64_t max_seqlen = *std::max_element(c.lengths.begin(), c.lengths.end());
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
      const absl::Status forward = LaunchAttention({.dtype = dtype,
                                                    .q = d_q.get(),
                                                    .k = d_k.get(),
                                                    .v = d_v.get(),
                                                    .out = d_out.get(),
                                                    .lse = d_lse.as<float>(),
                                                    .cu_seqlens = d_cu.as<const int32_t>(),
                                                    .num_seqs = static_cast<int64_t>(cu.size() - 1),
                                                    .total_tokens = total,
                                                    .heads = c.heads,
                                                    .kv_heads = c.kv_heads,
                                                    .head_dim = c.head_dim,
                                                    .max_seqlen = max_seqlen,
                                                    .scale = scale,
                                                    .causal = causal},
                                                   nullptr);
      ASSERT_TRUE(forward.ok()) << forward;
      AttentionBackwardParams b{.dtype = dtype,
                                .dout = d_dout.get(),
                                .q = d_q.get(),
                                .k = d_k.get(),
                                .v = d_v.get(),
                                .out = d_out.get(),
                                .lse = d_lse.as<const float>(),
                                .dq = d_dq.get(),
                                .dk = d_dk.get(),
                                .dv = d_dv.get(),
                                .cu_seqlens = d_cu.as<const int32_t>(),
                                .num_seqs = static_cast<int64_t>(cu.size() - 1),
                                .total_tokens = total,
                                .heads = c.heads,
                                .kv_heads = c.kv_heads,
                                .head_dim = c.head_dim,
                                .max_seqlen = max_seqlen,
                                .scale = scale,
                                .causal = causal,
                                .workspace = workspace.get(),
                                .workspace_bytes = workspace_bytes};
      const absl::Status backward = LaunchAttentionBackward(b, nullptr);
      ASSERT_TRUE(backward.ok()) << backward;
      // Reruns in deterministic mode: dk and dv bitwise equal to the first run's (they never
      // depend on timing), dq bitwise equal between the two (summed in key-tile order instead of
      // with atomics).
      // The fp32 dq accumulators (the workspace's first nq floats) are compared too: bf16 dq
      // would hide most differences of order.
      const DeviceBuffer d_dq2(nq * e), d_dq3(nq * e), d_dk2(nkv * e), d_dv2(nkv * e),
          workspace3(workspace_bytes);
      b.deterministic = true;
      b.dq = d_dq2.get();
      b.dk = d_dk2.get();
      b.dv = d_dv2.get();
      ASSERT_TRUE(LaunchAttentionBackward(b, nullptr).ok());
      b.dq = d_dq3.get();
      b.workspace = workspace3.get();
      ASSERT_TRUE(LaunchAttentionBackward(b, nullptr).ok());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      EXPECT_EQ(d_dk2.Bytes(), d_dk.Bytes());
      EXPECT_EQ(d_dv2.Bytes(), d_dv.Bytes());
      EXPECT_EQ(d_dq3.Bytes(), d_dq2.Bytes());
      const std::vector<char> accum2 = workspace.Bytes(), accum3 = workspace3.Bytes();
      EXPECT_TRUE(std::equal(accum2.begin(), accum2.begin() + nq * 4, accum3.begin()))
          << "dq's fp32 accumulators differ between deterministic runs";
      const AttentionReference ref =
          AttentionFloat64(q.exact, k.exact, v.exact, dout.exact, cu, c.heads, c.kv_heads,
                           c.head_dim, static_cast<double>(scale), causal);
      const std::vector<double> got_out = ValuesOf(dtype, d_out.Bytes()),
                                got_lse = ValuesOf(DType::kF32, d_lse.Bytes()),
                                got_dq = ValuesOf(dtype, d_dq.Bytes()),
                                got_dk = ValuesOf(dtype, d_dk.Bytes()),
                                got_dv = ValuesOf(dtype, d_dv.Bytes());
      for (const auto* got : {&got_out, &got_lse, &got_dq, &got_dk, &got_dv}) {
        ASSERT_TRUE(AllFinite(*got)) << "an output element was not written";
      }
      EXPECT_LT(RelativeError(got_out, ref.out), bound) << "out";
      EXPECT_LT(RelativeError(got_lse, ref.lse), 1e-5) << "lse";
      EXPECT_LT(RelativeError(got_dq, ref.dq, ref.dq_scale), bound) << "dq";
      EXPECT_LT(RelativeError(ValuesOf(dtype, d_dq2.Bytes()), ref.dq, ref.dq_scale), bound)
          << "dq in turn";
      EXPECT_LT(RelativeError(got_dk, ref.dk, ref.dk_scale), bound) << "dk";
      EXPECT_LT(RelativeError(got_dv, ref.dv), bound) << "dv";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, AttentionCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(AttentionCudaTest, BadArgumentsFailBeforeLaunching) {
  const DeviceBuffer buf(4096), cu(BytesOf(std::vector<int32_t>{0, 4}.data(), 8));
  char* base = buf.as<char>();
  const AttentionParams good{.dtype = DType::kBF16,
                             .q = base,
                             .k = base,
                             .v = base,
                             .out = base,
                             .lse = buf.as<float>(),
                             .cu_seqlens = cu.as<const int32_t>(),
                             .num_seqs = 1,
                             .total_tokens = 4,
                             .heads = 2,
                             .kv_heads = 1,
                             .head_dim = 64,
                             .max_seqlen = 4};
  AttentionParams p = good;
  p.head_dim = 20;
  EXPECT_THAT(LaunchAttention(p, nullptr).message(),
              HasSubstr("head_dim 20 is not supported by the CUDA kernels (multiples of 8 up to "
                        "256"));
  p.head_dim = 264;
  EXPECT_THAT(LaunchAttention(p, nullptr).message(), HasSubstr("head_dim 264 is not supported"));
  p = good;
  p.dtype = DType::kI32;
  EXPECT_THAT(LaunchAttention(p, nullptr).message(), HasSubstr("dtype i32 is not supported"));
  p = good;
  p.kv_heads = 3;
  EXPECT_THAT(LaunchAttention(p, nullptr).message(),
              HasSubstr("heads 2 is not a multiple of kv_heads 3"));
  p = good;
  p.v = nullptr;
  EXPECT_THAT(LaunchAttention(p, nullptr).message(), HasSubstr("v is null"));
  p = good;
  p.max_seqlen = 0;
  EXPECT_THAT(LaunchAttention(p, nullptr).message(),
              HasSubstr("max_seqlen 0 is shorter than the mean sequence"));
  p = good;
  p.q = base + 2;
  EXPECT_THAT(LaunchAttention(p, nullptr).message(), HasSubstr("q is not 16-byte aligned"));
  EXPECT_TRUE(LaunchAttention({.heads = 1, .kv_heads = 1, .head_dim = 64}, nullptr).ok());

  const AttentionBackwardParams b{.dtype = DType::kBF16,
                                  .dout = base,
                                  .q = base,
                                  .k = base,
                                  .v = base,
                                  .out = base,
                                  .lse = buf.as<const float>(),
                                  .dq = base,
                                  .dk = base,
                                  .dv = base,
                                  .cu_seqlens = cu.as<const int32_t>(),
                                  .num_seqs = 1,
                                  .total_tokens = 4,
                                  .heads = 2,
                                  .kv_heads = 1,
                                  .head_dim = 64,
                                  .max_seqlen = 4,
                                  .workspace_bytes = 0};
  const absl::Status status = LaunchAttentionBackward(b, nullptr);
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("the workspace has 0 bytes, 4 tokens of 2 heads of 64 "
                                          "dims need"));
  AttentionBackwardParams small = b;
  small.workspace = base;
  small.workspace_bytes = AttentionBackwardWorkspaceBytes(4, 2, 64) - 1;
  EXPECT_THAT(LaunchAttentionBackward(small, nullptr).message(),
              HasSubstr("(AttentionBackwardWorkspaceBytes)"));
  AttentionBackwardParams bad = b;
  bad.head_dim = 12;
  EXPECT_THAT(LaunchAttentionBackward(bad, nullptr).message(),
              HasSubstr("head_dim 12 is not supported by the CUDA kernels"));
}

}  // namespace
}  // namespace mimo::kernels
