// The CUDA Ops against the CPU Ops on the same random inputs: the ops that need device scratch
// (embedding, RMSNorm and attention backward, the sum of squares) get it from the Ops' allocator,
// GEMMs go through its cuBLASLt; bf16 outputs within 1e-2 relative error of the CPU twin
// (embedding gradients bitwise equal). Skips without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda_ops.h"
#include "kernels/device_info.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
    auto ops = NewCudaOps();
    ASSERT_TRUE(ops.ok()) << ops.status();
    gpu_ = std::move(*ops);
    cpu_ = NewCpuOps();
  }
  void TearDown() override {
    for (void* p : owned_) gpu_->allocator().Free(p);
  }
  // A device copy of `bytes` (from the GPU Ops' allocator).
  void* Upload(const std::vector<char>& bytes) {
    auto ptr = gpu_->allocator().Allocate(bytes.size() + 16, gpu_->stream());
    EXPECT_TRUE(ptr.ok());
    owned_.push_back(*ptr);
    // On the Ops' stream, then waited for: the ops run on that (non-blocking) stream.
    EXPECT_EQ(cudaMemcpyAsync(*ptr, bytes.data(), bytes.size(), cudaMemcpyHostToDevice,
                              static_cast<cudaStream_t>(gpu_->stream())),
              cudaSuccess);
    EXPECT_TRUE(gpu_->Synchronize().ok());
    return *ptr;
  }
  // `n` bytes of device memory, every byte 0xff.
  void* Poisoned(size_t n) { return Upload(std::vector<char>(n, '\xff')); }
  std::vector<char> Download(const void* ptr, size_t n) {
    EXPECT_TRUE(gpu_->Synchronize().ok());
    std::vector<char> out(n);
    EXPECT_EQ(cudaMemcpy(out.data(), ptr, n, cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }

  std::unique_ptr<Ops> gpu_, cpu_;
  std::vector<void*> owned_;
};

TEST_F(CudaOpsTest, IsTheDeviceItWasMadeFor) {
  EXPECT_EQ(gpu_->device(), Device::Cuda(0));
  EXPECT_NE(gpu_->stream(), nullptr);
  EXPECT_FALSE(NewCudaOps({.device = 4096}).ok());
}

TEST_F(CudaOpsTest, CopiesAndZeroesOnItsStream) {
  const size_t n = 1000003;  // Odd: no alignment assumed.
  std::vector<char> a(n), back(n);
  for (size_t i = 0; i < n; ++i) a[i] = static_cast<char>(i * 7 + 1);
  void* x = Poisoned(n);
  void* y = Poisoned(n);
  ASSERT_TRUE(gpu_->CopyFromHost(x, a.data(), n).ok());
  ASSERT_TRUE(gpu_->Copy(y, x, n).ok());
  ASSERT_TRUE(gpu_->SetZero(static_cast<char*>(x) + 11, 100).ok());
  ASSERT_TRUE(gpu_->CopyToHost(back.data(), y, n).ok());  // Waits: no Synchronize needed.
  EXPECT_EQ(back, a);
  ASSERT_TRUE(gpu_->CopyToHost(back.data(), x, n).ok());
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(back[i], i >= 11 && i < 111 ? 0 : a[i]) << i;
  }
  EXPECT_EQ(gpu_->CopyToHost(nullptr, x, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->SetZero(nullptr, 1).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaOpsTest, ScratchUsingOpsMatchTheCpu) {
  std::mt19937 random(std::random_device{}());
  constexpr int64_t kTokens = 300, kCols = 512, kVocab = 97, kHeads = 4, kHeadDim = 64;
  const DType bf16 = DType::kBF16;
  // RMSNorm backward (dweight from per-block partials in scratch).
  const HostData x = RandomData(bf16, kTokens * kCols, random, -2, 2);
  const HostData w = RandomData(bf16, kCols, random, 0.5, 1.5);
  const HostData dy = RandomData(bf16, kTokens * kCols, random, -1, 1);
  std::vector<float> rstd(kTokens), dweight(kCols);
  HostData y = PoisonedData(bf16, kTokens * kCols), dx = y;
  RmsNormParams f{.dtype = bf16,
                  .x = x.data(),
                  .weight = w.data(),
                  .y = y.data(),
                  .rstd = rstd.data(),
                  .rows = kTokens,
                  .cols = kCols};
  ASSERT_TRUE(cpu_->RmsNorm(f).ok());
  RmsNormBackwardParams b{.dtype = bf16,
                          .dy = dy.data(),
                          .x = x.data(),
                          .weight = w.data(),
                          .rstd = rstd.data(),
                          .dx = dx.data(),
                          .dweight = dweight.data(),
                          .rows = kTokens,
                          .cols = kCols};
  ASSERT_TRUE(cpu_->RmsNormBackward(b).ok());
  void* g_rstd = Upload(BytesOf(rstd.data(), kTokens * 4));
  void* g_dx = Poisoned(dx.bytes.size());
  void* g_dw = Poisoned(kCols * 4);
  b.dy = Upload(dy.bytes);
  b.x = Upload(x.bytes);
  b.weight = Upload(w.bytes);
  b.rstd = static_cast<const float*>(g_rstd);
  b.dx = g_dx;
  b.dweight = static_cast<float*>(g_dw);
  const int64_t allocations = gpu_->allocator().stats().allocations;
  ASSERT_TRUE(gpu_->RmsNormBackward(b).ok());
  EXPECT_EQ(gpu_->allocator().stats().allocations, allocations + 1) << "scratch for dweight";
  EXPECT_LT(
      RelativeError(ValuesOf(bf16, Download(g_dx, dx.bytes.size())), ValuesOf(bf16, dx.bytes)),
      1e-2);
  EXPECT_LT(RelativeError(ValuesOf(DType::kF32, Download(g_dw, kCols * 4)),
                          ValuesOf(DType::kF32, BytesOf(dweight.data(), kCols * 4))),
            1e-4);

  // Embedding backward (a sort of the ids in scratch): bitwise equal.
  std::vector<int32_t> ids(kTokens);
  for (int32_t& id : ids) id = static_cast<int32_t>(random() % kVocab);
  std::vector<float> dtable(kVocab * kCols);
  EmbeddingBackwardParams e{.dtype = bf16,
                            .dout = dy.data(),
                            .ids = ids.data(),
                            .dtable = dtable.data(),
                            .vocab = kVocab,
                            .tokens = kTokens,
                            .dim = kCols};
  ASSERT_TRUE(cpu_->EmbeddingBackward(e).ok());
  void* g_dtable = Poisoned(dtable.size() * 4);
  e.dout = b.dy;
  e.ids = static_cast<const int32_t*>(Upload(BytesOf(ids.data(), ids.size() * 4)));
  e.dtable = static_cast<float*>(g_dtable);
  ASSERT_TRUE(gpu_->EmbeddingBackward(e).ok());
  EXPECT_EQ(Download(g_dtable, dtable.size() * 4), BytesOf(dtable.data(), dtable.size() * 4));

  // Sum of squares (a partial-sum buffer in scratch).
  float cpu_sum = 0;
  ASSERT_TRUE(
      cpu_->SumSquares({.dtype = bf16, .x = x.data(), .n = kTokens * kCols, .out = &cpu_sum}).ok());
  void* g_sum = Poisoned(4);
  ASSERT_TRUE(
      gpu_->SumSquares(
              {.dtype = bf16, .x = b.x, .n = kTokens * kCols, .out = static_cast<float*>(g_sum)})
          .ok());
  float gpu_sum = 0;
  const std::vector<char> sum_bytes = Download(g_sum, 4);
  std::memcpy(&gpu_sum, sum_bytes.data(), 4);
  EXPECT_NEAR(gpu_sum, cpu_sum, 1e-5 * cpu_sum);

  // Attention forward and backward (fp32 dq accumulators in scratch), two packed sequences.
  const std::vector<int32_t> cu = {0, 123, kTokens};
  const int64_t n = kTokens * kHeads * kHeadDim;
  const HostData q = RandomData(bf16, n, random, -1, 1), k = RandomData(bf16, n, random, -1, 1),
                 v = RandomData(bf16, n, random, -1, 1), dout = RandomData(bf16, n, random, -1, 1);
  HostData out = PoisonedData(bf16, n), dq = out, dk = out, dv = out;
  std::vector<float> lse(kHeads * kTokens);
  AttentionParams a{.dtype = bf16,
                    .q = q.data(),
                    .k = k.data(),
                    .v = v.data(),
                    .out = out.data(),
                    .lse = lse.data(),
                    .cu_seqlens = cu.data(),
                    .num_seqs = 2,
                    .total_tokens = kTokens,
                    .heads = kHeads,
                    .kv_heads = kHeads,
                    .head_dim = kHeadDim,
                    .max_seqlen = 177,
                    .scale = 0.125f,
                    .causal = true};
  ASSERT_TRUE(cpu_->Attention(a).ok());
  AttentionBackwardParams ab{.dtype = bf16,
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
                             .num_seqs = 2,
                             .total_tokens = kTokens,
                             .heads = kHeads,
                             .kv_heads = kHeads,
                             .head_dim = kHeadDim,
                             .max_seqlen = 177,
                             .scale = 0.125f,
                             .causal = true};
  ASSERT_TRUE(cpu_->AttentionBackward(ab).ok());
  // The GPU backward starts from the CPU forward's out and lse.
  void* g_dq = Poisoned(dq.bytes.size());
  ab.dout = Upload(dout.bytes);
  ab.q = Upload(q.bytes);
  ab.k = Upload(k.bytes);
  ab.v = Upload(v.bytes);
  ab.out = Upload(out.bytes);
  ab.lse = static_cast<const float*>(Upload(BytesOf(lse.data(), lse.size() * 4)));
  ab.dq = g_dq;
  ab.dk = Poisoned(dk.bytes.size());
  ab.dv = Poisoned(dv.bytes.size());
  ab.cu_seqlens = static_cast<const int32_t*>(Upload(BytesOf(cu.data(), cu.size() * 4)));
  ASSERT_TRUE(gpu_->AttentionBackward(ab).ok());
  EXPECT_LT(
      RelativeError(ValuesOf(bf16, Download(g_dq, dq.bytes.size())), ValuesOf(bf16, dq.bytes)),
      1e-2);
  EXPECT_LT(
      RelativeError(ValuesOf(bf16, Download(ab.dk, dk.bytes.size())), ValuesOf(bf16, dk.bytes)),
      1e-2);
  EXPECT_LT(
      RelativeError(ValuesOf(bf16, Download(ab.dv, dv.bytes.size())), ValuesOf(bf16, dv.bytes)),
      1e-2);

  // A linear layer through the Ops' cuBLASLt.
  const HostData lw = RandomData(bf16, 256 * kCols, random, -1, 1);
  HostData z = PoisonedData(bf16, kTokens * 256);
  LinearParams l{.dtype = bf16,
                 .x = x.data(),
                 .w = lw.data(),
                 .y = z.data(),
                 .tokens = kTokens,
                 .in = kCols,
                 .out = 256};
  ASSERT_TRUE(cpu_->Linear(l).ok());
  void* g_z = Poisoned(z.bytes.size());
  l.x = b.x;
  l.w = Upload(lw.bytes);
  l.y = g_z;
  ASSERT_TRUE(gpu_->Linear(l).ok());
  EXPECT_LT(RelativeError(ValuesOf(bf16, Download(g_z, z.bytes.size())), ValuesOf(bf16, z.bytes)),
            1e-2);
}

}  // namespace
}  // namespace mimo::kernels
