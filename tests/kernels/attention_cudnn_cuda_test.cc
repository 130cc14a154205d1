// cuDNN's fused attention (kernels/attention_cudnn.h) against float64 on fresh random bf16 inputs:
// plain batches of one length (a multiple of 128) and ragged packings (empty, one-token and
// odd-length sequences), grouped-query heads, head dims 64 to 128, both masks (relative error
// < 1e-2, dq and dk against the size of the terms their sums cancel; log-sum-exps < 1e-5), poisoned
// outputs fully written, plans cached per problem and shared by packings of similar counts; the
// log-sum-exps interchangeable with LaunchAttention's both ways; a forward + backward captured in a
// CUDA graph and replayed; refusals (dtype, head dims, over-padded packings, misalignment); the
// CUDA Ops falling back to our kernels for what cuDNN does not take. Skips without a GPU or before
// Hopper.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "common/status_macros.h"
#include "kernels/attention.h"
#include "kernels/attention_cudnn.h"
#include "kernels/cuda_graph.h"
#include "kernels/cuda_ops.h"
#include "tests/kernels/attention_reference.h"
#include "tests/kernels/cuda_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class AttentionCudnnCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
    absl::StatusOr<std::unique_ptr<CudnnAttention>> created = CudnnAttention::Create();
    if (absl::IsUnimplemented(created.status())) GTEST_SKIP() << created.status();
    ASSERT_TRUE(created.ok()) << created.status();
    cudnn_ = *std::move(created);
  }
  std::unique_ptr<CudnnAttention> cudnn_;
};

struct Case {
  std::vector<int32_t> lengths;
  int64_t heads, kv_heads, head_dim;
};

enum class Mode {
  kCudnn,        // cuDNN's forward and backward.
  kOwnForward,   // LaunchAttention's forward, cuDNN's backward.
  kOwnBackward,  // cuDNN's forward, LaunchAttentionBackward.
  kGraph,  // cuDNN's forward and backward captured in a CUDA graph, outputs poisoned, replayed.
};

// Runs one case and compares with float64.
void CheckCase(CudnnAttention& cudnn, const Case& c, bool causal, Mode mode, std::mt19937& random) {
  const DType dtype = DType::kBF16;
  const std::vector<int32_t> cu = CuSeqlens(c.lengths);
  const int64_t total = cu.back(), num_seqs = static_cast<int64_t>(c.lengths.size());
  const int64_t nq = total * c.heads * c.head_dim, nkv = total * c.kv_heads * c.head_dim;
  const HostData q = RandomData(dtype, nq, random, -2, 2);
  const HostData k = RandomData(dtype, nkv, random, -2, 2);
  const HostData v = RandomData(dtype, nkv, random, -1, 1);
  const HostData dout = RandomData(dtype, nq, random, -1, 1);
  const DeviceBuffer d_q(q.bytes), d_k(k.bytes), d_v(v.bytes), d_dout(dout.bytes),
      d_cu(BytesOf(cu.data(), cu.size() * sizeof(int32_t)));
  const DeviceBuffer d_out(nq * 2), d_lse(c.heads * total * 4), d_dq(nq * 2), d_dk(nkv * 2),
      d_dv(nkv * 2);
  const int64_t max_seqlen = *std::max_element(c.lengths.begin(), c.lengths.end());
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const AttentionParams f{.dtype = dtype,
                          .q = d_q.get(),
                          .k = d_k.get(),
                          .v = d_v.get(),
                          .out = d_out.get(),
                          .lse = d_lse.as<float>(),
                          .cu_seqlens = d_cu.as<const int32_t>(),
                          .num_seqs = num_seqs,
                          .total_tokens = total,
                          .heads = c.heads,
                          .kv_heads = c.kv_heads,
                          .head_dim = c.head_dim,
                          .max_seqlen = max_seqlen,
                          .scale = scale,
                          .causal = causal};
  const absl::StatusOr<size_t> fwd_bytes = cudnn.ForwardWorkspaceBytes(f);
  ASSERT_TRUE(fwd_bytes.ok()) << fwd_bytes.status();
  const DeviceBuffer fwd_workspace(*fwd_bytes);
  if (mode == Mode::kOwnForward) {
    ASSERT_TRUE(LaunchAttention(f, nullptr).ok());
  } else if (mode != Mode::kGraph) {
    const absl::Status forward = cudnn.Forward(f, fwd_workspace.get(), *fwd_bytes, nullptr);
    ASSERT_TRUE(forward.ok()) << forward;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
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
                            .num_seqs = num_seqs,
                            .total_tokens = total,
                            .heads = c.heads,
                            .kv_heads = c.kv_heads,
                            .head_dim = c.head_dim,
                            .max_seqlen = max_seqlen,
                            .scale = scale,
                            .causal = causal};
  const absl::StatusOr<size_t> bytes = cudnn.BackwardWorkspaceBytes(b);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const DeviceBuffer workspace(*bytes);
  if (mode == Mode::kOwnBackward) {
    const size_t own_bytes = AttentionBackwardWorkspaceBytes(total, c.heads, c.head_dim);
    const DeviceBuffer own_workspace(own_bytes);
    b.workspace = own_workspace.get();
    b.workspace_bytes = own_bytes;
    ASSERT_TRUE(LaunchAttentionBackward(b, nullptr).ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  } else if (mode == Mode::kGraph) {
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    absl::StatusOr<CudaGraph> graph = CudaGraph::Capture(stream, [&]() -> absl::Status {
      MIMO_RETURN_IF_ERROR(cudnn.Forward(f, fwd_workspace.get(), *fwd_bytes, stream));
      return cudnn.Backward(b, workspace.get(), *bytes, stream);
    });
    ASSERT_TRUE(graph.ok()) << graph.status();
    for (const DeviceBuffer* out : {&d_out, &d_lse, &d_dq, &d_dk, &d_dv}) {
      ASSERT_EQ(cudaMemset(out->get(), 0xff, out->Bytes().size()), cudaSuccess);
    }
    ASSERT_TRUE(graph->Replay(stream).ok());
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    cudaStreamDestroy(stream);
  } else {
    const absl::Status backward = cudnn.Backward(b, workspace.get(), *bytes, nullptr);
    ASSERT_TRUE(backward.ok()) << backward;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }

  const AttentionReference ref =
      AttentionFloat64(q.exact, k.exact, v.exact, dout.exact, cu, c.heads, c.kv_heads, c.head_dim,
                       static_cast<double>(scale), causal);
  const std::vector<double> got_out = ValuesOf(dtype, d_out.Bytes()),
                            got_lse = ValuesOf(DType::kF32, d_lse.Bytes()),
                            got_dq = ValuesOf(dtype, d_dq.Bytes()),
                            got_dk = ValuesOf(dtype, d_dk.Bytes()),
                            got_dv = ValuesOf(dtype, d_dv.Bytes());
  for (const auto* got : {&got_out, &got_lse, &got_dq, &got_dk, &got_dv}) {
    ASSERT_TRUE(AllFinite(*got)) << "an output element was not written (or is not finite)";
  }
  EXPECT_LT(RelativeError(got_out, ref.out), 1e-2) << "out";
  EXPECT_LT(RelativeError(got_lse, ref.lse), 1e-5) << "lse";
  EXPECT_LT(RelativeError(got_dq, ref.dq, ref.dq_scale), 1e-2) << "dq";
  EXPECT_LT(RelativeError(got_dk, ref.dk, ref.dk_scale), 1e-2) << "dk";
  EXPECT_LT(RelativeError(got_dv, ref.dv), 1e-2) << "dv";
}

TEST_F(AttentionCudnnCudaTest, MatchesFloat64ForwardAndBackward) {
  std::mt19937 random(std::random_device{}());
  const std::vector<Case> cases = {
      {{128, 128}, 2, 2, 64},        // Plain: one length, a multiple of 128.
      {{256, 256, 256}, 8, 2, 128},  // Plain, grouped-query heads.
      {{300}, 2, 2, 64},             // Ragged from here on.
      {{5, 17, 130}, 4, 2, 64},
      {{33, 64, 3}, 6, 1, 128},
      {{129, 1, 200}, 2, 2, 128},
      {{77, 150}, 2, 1, 80},
      {{1000}, 1, 1, 128},
  };
  for (const Case& c : cases) {
    for (const bool causal : {false, true}) {
      SCOPED_TRACE(::testing::Message() << ::testing::PrintToString(c.lengths) << " heads "
                                        << c.heads << "/" << c.kv_heads << " head_dim "
                                        << c.head_dim << (causal ? " causal" : " bidirectional"));
      CheckCase(*cudnn_, c, causal, Mode::kCudnn, random);
    }
  }
  // Every (direction, problem) planned once: a second pass adds none.
  const size_t plans = cudnn_->cached_plans();
  CheckCase(*cudnn_, cases[3], true, Mode::kCudnn, random);
  EXPECT_EQ(cudnn_->cached_plans(), plans);
}

TEST_F(AttentionCudnnCudaTest, PackingsOfSimilarCountsAndLengthsShareAPlan) {
  std::mt19937 random(std::random_device{}());
  // 3 and 4 sequences of up to 100 and 128 tokens: 4 x 128 rows either way, one plan a direction.
  CheckCase(*cudnn_, {{5, 100, 31}, 2, 1, 64}, true, Mode::kCudnn, random);
  const size_t plans = cudnn_->cached_plans();
  CheckCase(*cudnn_, {{128, 7, 60, 1}, 2, 1, 64}, true, Mode::kCudnn, random);
  EXPECT_EQ(cudnn_->cached_plans(), plans);
}

TEST_F(AttentionCudnnCudaTest, LogSumExpsInterchangeWithTheOwnKernels) {
  std::mt19937 random(std::random_device{}());
  CheckCase(*cudnn_, {{5, 17, 130}, 4, 2, 64}, true, Mode::kOwnForward, random);
  CheckCase(*cudnn_, {{5, 17, 130}, 4, 2, 64}, true, Mode::kOwnBackward, random);
  CheckCase(*cudnn_, {{256, 256}, 2, 2, 128}, false, Mode::kOwnBackward, random);
}

TEST_F(AttentionCudnnCudaTest, EmptySequencesInAPacking) {
  std::mt19937 random(std::random_device{}());
  CheckCase(*cudnn_, {{70, 0, 9}, 2, 1, 64}, true, Mode::kCudnn, random);
}

TEST_F(AttentionCudnnCudaTest, ReplaysInACudaGraph) {
  std::mt19937 random(std::random_device{}());
  CheckCase(*cudnn_, {{5, 17, 130}, 4, 2, 64}, true, Mode::kGraph, random);
  CheckCase(*cudnn_, {{256, 256}, 2, 1, 128}, true, Mode::kGraph, random);
}

// Through NewCudaOps: bf16 at head_dim 256 and f32 (which cuDNN does not take) still attend right.
TEST_F(AttentionCudnnCudaTest, TheCudaOpsFallBackToTheOwnKernels) {
  absl::StatusOr<std::unique_ptr<Ops>> ops = NewCudaOps();
  ASSERT_TRUE(ops.ok()) << ops.status();
  std::mt19937 random(std::random_device{}());
  for (const auto& [dtype, head_dim] :
       {std::pair{DType::kBF16, int64_t{256}}, std::pair{DType::kF32, int64_t{64}}}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " head_dim " << head_dim);
    const std::vector<int32_t> lengths = {40, 9}, cu = CuSeqlens(lengths);
    const int64_t total = cu.back(), heads = 2, n = total * heads * head_dim;
    const HostData q = RandomData(dtype, n, random, -2, 2), k = RandomData(dtype, n, random, -2, 2),
                   v = RandomData(dtype, n, random, -1, 1);
    const DeviceBuffer d_q(q.bytes), d_k(k.bytes), d_v(v.bytes),
        d_cu(BytesOf(cu.data(), cu.size() * sizeof(int32_t))), d_out(n * DTypeSize(dtype)),
        d_lse(heads * total * 4);
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    const absl::Status run = (*ops)->Attention({.dtype = dtype,
                                                .q = d_q.get(),
                                                .k = d_k.get(),
                                                .v = d_v.get(),
                                                .out = d_out.get(),
                                                .lse = d_lse.as<float>(),
                                                .cu_seqlens = d_cu.as<const int32_t>(),
                                                .num_seqs = 2,
                                                .total_tokens = total,
                                                .heads = heads,
                                                .kv_heads = heads,
                                                .head_dim = head_dim,
                                                .max_seqlen = 40,
                                                .scale = scale,
                                                .causal = true});
    ASSERT_TRUE(run.ok()) << run;
    ASSERT_TRUE((*ops)->Synchronize().ok());
    const AttentionReference ref =
        AttentionFloat64(q.exact, k.exact, v.exact, {}, cu, heads, heads, head_dim, scale, true);
    EXPECT_LT(RelativeError(ValuesOf(dtype, d_out.Bytes()), ref.out),
              dtype == DType::kF32 ? 5e-6 : 1e-2);
  }
}

TEST_F(AttentionCudnnCudaTest, RefusesWhatItDoesNotTake) {
  const DeviceBuffer buf(4096), cu(BytesOf(std::vector<int32_t>{0, 4}.data(), 8));
  AttentionParams p{.dtype = DType::kF32,
                    .q = buf.get(),
                    .k = buf.get(),
                    .v = buf.get(),
                    .out = buf.get(),
                    .lse = buf.as<float>(),
                    .cu_seqlens = cu.as<const int32_t>(),
                    .num_seqs = 1,
                    .total_tokens = 4,
                    .heads = 2,
                    .kv_heads = 1,
                    .head_dim = 64,
                    .max_seqlen = 4,
                    .scale = 0.125f};
  EXPECT_TRUE(absl::IsUnimplemented(cudnn_->ForwardWorkspaceBytes(p).status()));
  EXPECT_THAT(cudnn_->ForwardWorkspaceBytes(p).status().message(), HasSubstr("bf16"));
  p.dtype = DType::kBF16;
  for (const int64_t head_dim : {12, 256}) {
    p.head_dim = head_dim;
    EXPECT_TRUE(absl::IsUnimplemented(cudnn_->ForwardWorkspaceBytes(p).status())) << head_dim;
  }
  p.head_dim = 64;
  p.max_seqlen = 0;
  EXPECT_THAT(cudnn_->ForwardWorkspaceBytes(p).status().message(), HasSubstr("max_seqlen"));
  p.max_seqlen = 4;
  p.q = buf.as<char>() + 8;
  EXPECT_THAT(cudnn_->ForwardWorkspaceBytes(p).status().message(),
              HasSubstr("q is not 16-byte aligned"));
  p.q = buf.get();
  // 17 sequences, one of 4096 tokens: padded to 32 x 4096 rows, 30 times the 4352 tokens.
  std::vector<int32_t> lengths(16, 16);
  lengths.push_back(4096);
  const std::vector<int32_t> skewed = CuSeqlens(lengths);
  const DeviceBuffer d_skewed(BytesOf(skewed.data(), skewed.size() * sizeof(int32_t)));
  AttentionParams over = p;
  over.cu_seqlens = d_skewed.as<const int32_t>();
  over.num_seqs = 17;
  over.total_tokens = skewed.back();
  over.max_seqlen = 4096;
  EXPECT_THAT(cudnn_->ForwardWorkspaceBytes(over).status().message(),
              HasSubstr("pad to 32 x 4096"));
  // No tokens: no plan, no workspace.
  const size_t plans = cudnn_->cached_plans();
  AttentionParams empty = p;
  empty.total_tokens = 0;
  empty.max_seqlen = 0;
  empty.cu_seqlens = d_skewed.as<const int32_t>();  // Starts 0, 16: never read.
  empty.num_seqs = 1;
  const absl::StatusOr<size_t> none = cudnn_->ForwardWorkspaceBytes(empty);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, 0u);
  EXPECT_EQ(cudnn_->cached_plans(), plans);
  p.heads = 3;  // Not a multiple of kv_heads 2.
  p.kv_heads = 2;
  EXPECT_TRUE(absl::IsInvalidArgument(cudnn_->ForwardWorkspaceBytes(p).status()));
  p.heads = 2;
  p.kv_heads = 1;
  const absl::StatusOr<size_t> bytes = cudnn_->ForwardWorkspaceBytes(p);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_THAT(cudnn_->Forward(p, buf.get(), *bytes - 1, nullptr).message(), HasSubstr("workspace"));
}

}  // namespace
}  // namespace mimo::kernels
