// Ring attention (mimo/context_attention.h) on two GPUs over NCCL: sequences long enough that
// each step's attention runs while the next keys (and, backward, the key gradients) travel, so a
// buffer written or read too early shows. Each rank's output and its rows' dq, dk, dv against the
// attention op over the whole sequences on one GPU: fp32 within 1e-5, bf16 within 2e-2 (relative
// L2; the ring merges bf16 partial outputs in fp32).
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "gtest/gtest.h"
#include "kernels/cuda_ops.h"
#include "mimo/context_attention.h"
#include "tests/comm/run_ranks.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/mimo/model_test_util.h"
#include "tests/mimo/parallel_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using testing::Download;
using testing::Gather;
using testing::RandomFloats;
using testing::RelL2;
using testing::TokensOf;
using testing::Upload;

constexpr int64_t kHeads = 8, kGroups = 4, kDim = 64, kHd = kHeads * kDim, kGd = kGroups * kDim;

struct Grads {
  std::vector<double> out, dq, dk, dv;
};

class ContextAttentionNcclTest : public ::testing::TestWithParam<std::tuple<DType, bool>> {
 protected:
  void SetUp() override {
    const std::string missing = kernels::testing::MissingCudaDevices(2);
    if (!missing.empty()) GTEST_SKIP() << missing;
  }
};

TEST_P(ContextAttentionNcclTest, EqualsTheWholeSequencesOnOneGpu) {
  const auto& [dtype, causal] = GetParam();
  const double bound = dtype == DType::kF32 ? 1e-5 : 2e-2;
  const std::vector<int32_t> lengths = {4096, 1028, 2048, 12};  // Multiples of 2 cp = 4.
  int64_t t = 0;
  for (int32_t n : lengths) t += n;
  std::mt19937 random(31);
  const std::vector<float> q = RandomFloats(t * kHd, random), k = RandomFloats(t * kGd, random),
                           v = RandomFloats(t * kGd, random), dout = RandomFloats(t * kHd, random);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  // The whole sequences on GPU 0.
  Grads want;
  {
    auto ops = kernels::NewCudaOps({.device = 0});
    ASSERT_TRUE(ops.ok()) << ops.status();
    kernels::Ops& o = **ops;
    std::vector<int32_t> cu = {0};
    for (int32_t n : lengths) cu.push_back(cu.back() + n);
    const kernels::Tensor tq = Upload(o, q, {t, kHd}, dtype), tk = Upload(o, k, {t, kGd}, dtype),
                          tv = Upload(o, v, {t, kGd}, dtype), td = Upload(o, dout, {t, kHd}, dtype);
    auto tensor = [&](kernels::Shape shape, DType d) {
      auto x = kernels::Tensor::Empty(shape, d, o.allocator(), o.stream());
      EXPECT_TRUE(x.ok()) << x.status();
      return *std::move(x);
    };
    kernels::Tensor cu_d = tensor({static_cast<int64_t>(cu.size())}, DType::kI32);
    ASSERT_TRUE(o.CopyFromHost(cu_d.data(), cu.data(), 4 * cu.size()).ok());
    kernels::Tensor out = tensor({t, kHd}, dtype), lse = tensor({kHeads, t}, DType::kF32),
                    dq = tensor({t, kHd}, dtype), dk = tensor({t, kGd}, dtype),
                    dv = tensor({t, kGd}, dtype);
    const kernels::AttentionParams fwd{.dtype = dtype,
                                       .q = tq.data(),
                                       .k = tk.data(),
                                       .v = tv.data(),
                                       .out = out.data(),
                                       .lse = lse.data<float>(),
                                       .cu_seqlens = cu_d.data<int32_t>(),
                                       .num_seqs = static_cast<int64_t>(lengths.size()),
                                       .total_tokens = t,
                                       .heads = kHeads,
                                       .kv_heads = kGroups,
                                       .head_dim = kDim,
                                       .max_seqlen = 4096,
                                       .scale = scale,
                                       .causal = causal};
    ASSERT_TRUE(o.Attention(fwd).ok());
    ASSERT_TRUE(o.AttentionBackward({.dtype = dtype,
                                     .dout = td.data(),
                                     .q = tq.data(),
                                     .k = tk.data(),
                                     .v = tv.data(),
                                     .out = out.data(),
                                     .lse = lse.data<float>(),
                                     .dq = dq.data(),
                                     .dk = dk.data(),
                                     .dv = dv.data(),
                                     .cu_seqlens = cu_d.data<int32_t>(),
                                     .num_seqs = fwd.num_seqs,
                                     .total_tokens = t,
                                     .heads = kHeads,
                                     .kv_heads = kGroups,
                                     .head_dim = kDim,
                                     .max_seqlen = 4096,
                                     .scale = scale,
                                     .causal = causal})
                    .ok());
    want = {Download(o, out), Download(o, dq), Download(o, dk), Download(o, dv)};
  }
  std::vector<Grads> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateNccl(
        {{.kind = "cp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .cuda_device = rank});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCudaOps({.device = rank});
    ASSERT_TRUE(ops.ok()) << ops.status();
    kernels::Ops& o = **ops;
    const std::vector<int64_t> mine = TokensOf(lengths, 2, rank);
    const int64_t rows = static_cast<int64_t>(mine.size());
    auto seqs = PackedSequences::CreateSplit(o, lengths, 2, rank);
    ASSERT_TRUE(seqs.ok()) << seqs.status();
    const StepContext ctx{.ops = &o, .sequences = &*seqs};
    const ContextAttentionShape shape{
        .heads = kHeads, .kv_heads = kGroups, .head_dim = kDim, .scale = scale, .causal = causal};
    const kernels::Tensor tq = Upload(o, Gather(q, kHd, mine), {rows, kHd}, dtype);
    const kernels::Tensor tk = Upload(o, Gather(k, kGd, mine), {rows, kGd}, dtype);
    const kernels::Tensor tv = Upload(o, Gather(v, kGd, mine), {rows, kGd}, dtype);
    const kernels::Tensor td = Upload(o, Gather(dout, kHd, mine), {rows, kHd}, dtype);
    kernels::Tensor out;
    ContextAttentionLse lse;
    comm::Communicator& cp = *(*groups)->Get("cp");
    const absl::Status forward = ContextAttentionForward(ctx, cp, shape, tq, tk, tv, out, lse);
    ASSERT_TRUE(forward.ok()) << forward;
    const kernels::Tensor dq = Upload(o, std::vector<float>(rows * kHd), {rows, kHd}, dtype);
    const kernels::Tensor dk = Upload(o, std::vector<float>(rows * kGd), {rows, kGd}, dtype);
    const kernels::Tensor dv = Upload(o, std::vector<float>(rows * kGd), {rows, kGd}, dtype);
    const absl::Status backward =
        ContextAttentionBackward(ctx, cp, shape, td, tq, tk, tv, out, lse, dq, dk, dv);
    ASSERT_TRUE(backward.ok()) << backward;
    got[rank] = {Download(o, out), Download(o, dq), Download(o, dk), Download(o, dv)};
  });
  for (int rank = 0; rank < 2; ++rank) {
    SCOPED_TRACE(absl::StrCat("rank ", rank));
    const std::vector<int64_t> mine = TokensOf(lengths, 2, rank);
    EXPECT_LT(RelL2(got[rank].out, Gather(want.out, kHd, mine)), bound);
    EXPECT_LT(RelL2(got[rank].dq, Gather(want.dq, kHd, mine)), bound);
    EXPECT_LT(RelL2(got[rank].dk, Gather(want.dk, kGd, mine)), bound);
    EXPECT_LT(RelL2(got[rank].dv, Gather(want.dv, kGd, mine)), bound);
  }
}

INSTANTIATE_TEST_SUITE_P(DtypesAndMasks, ContextAttentionNcclTest,
                         ::testing::Combine(::testing::Values(DType::kF32, DType::kBF16),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           return absl::StrCat(kernels::DTypeName(std::get<0>(info.param)),
                                               std::get<1>(info.param) ? "_Causal" : "_Full");
                         });

}  // namespace
}  // namespace mimo
