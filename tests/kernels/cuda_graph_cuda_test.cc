// CudaGraph: a grouped GEMM captured once and replayed on new inputs and new offsets (read on the
// device at replay) equals direct launches; the memory a capture allocated, freed or replaced
// stays its replays' (a private pool) until the graph is destroyed; a host synchronization during
// capture is an error that leaves the stream usable; enqueue's own error comes back. Skips without
// a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <random>
#include <vector>

#include "common/status_macros.h"
#include "kernels/cuda_graph.h"
#include "kernels/cuda_ops.h"
#include "kernels/tensor.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class CudaGraphTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
    auto ops = NewCudaOps();
    ASSERT_TRUE(ops.ok()) << ops.status();
    ops_ = *std::move(ops);
  }
  Tensor New(Shape shape, DType dtype) {
    auto t = Tensor::Empty(shape, dtype, ops_->allocator(), ops_->stream());
    EXPECT_TRUE(t.ok()) << t.status();
    return *std::move(t);
  }
  void Put(const Tensor& t, const void* host) {
    ASSERT_TRUE(ops_->CopyFromHost(t.data(), host, t.nbytes()).ok());
  }
  std::vector<char> Get(const Tensor& t) {
    std::vector<char> out(t.nbytes());
    EXPECT_TRUE(ops_->CopyToHost(out.data(), t.data(), t.nbytes()).ok());
    return out;
  }
  std::unique_ptr<Ops> ops_;
};

TEST_F(CudaGraphTest, ReplaysAGroupedGemmOnNewInputsAndOffsets) {
  const int64_t groups = 4, rows = 300, n = 64, k = 96;
  std::mt19937 random(std::random_device{}());
  const Tensor a = New({rows, k}, DType::kBF16), b = New({groups, n, k}, DType::kBF16),
               d = New({rows, n}, DType::kBF16), offsets = New({groups + 1}, DType::kI32);
  const GroupedGemmParams p{.ab_dtype = DType::kBF16,
                            .d_dtype = DType::kBF16,
                            .a = a.data(),
                            .b = b.data(),
                            .d = d.data(),
                            .offsets = offsets.data<int32_t>(),
                            .groups = groups,
                            .rows = rows,
                            .n = n,
                            .k = k,
                            .transpose_b = true};
  // Inputs and offsets for each run: the capture's and two more.
  const std::vector<std::vector<int32_t>> offset_sets = {
      {0, 100, 100, 250, 300}, {0, 7, 150, 151, 280}, {20, 20, 20, 20, 299}};
  auto fill = [&](int i) {
    const HostData ha = RandomData(DType::kBF16, rows * k, random, -1, 1);
    const HostData hb = RandomData(DType::kBF16, groups * n * k, random, -1, 1);
    Put(a, ha.data());
    Put(b, hb.data());
    Put(offsets, offset_sets[i].data());
    ASSERT_TRUE(ops_->SetZero(d.data(), d.nbytes()).ok());
  };
  fill(0);
  auto graph = CudaGraph::Capture(ops_->stream(), [&] { return ops_->GroupedGemm(p); });
  ASSERT_TRUE(graph.ok()) << graph.status();
  EXPECT_GE(graph->nodes(), 1u);
  for (int i = 1; i < 3; ++i) {
    fill(i);
    ASSERT_TRUE(graph->Replay(ops_->stream()).ok());
    const std::vector<char> replayed = Get(d);
    ASSERT_TRUE(ops_->SetZero(d.data(), d.nbytes()).ok());
    ASSERT_TRUE(ops_->GroupedGemm(p).ok());
    EXPECT_EQ(replayed, Get(d)) << "run " << i;
  }
}

TEST_F(CudaGraphTest, ReplaysKeepTheirMemoryFromTensorsTakenBetweenThem) {
  constexpr int64_t n = int64_t{1} << 20;  // 4 MiB of f32 a tensor.
  auto floats = [](const std::vector<char>& bytes) {
    std::vector<float> v(bytes.size() / sizeof(float));
    std::memcpy(v.data(), bytes.data(), bytes.size());
    return v;
  };
  const Tensor a = New({n}, DType::kF32);
  std::vector<float> host_a(n);
  for (int64_t i = 0; i < n; ++i) host_a[i] = static_cast<float>(i % 97);
  Put(a, host_a.data());
  std::optional<Tensor> out = New({n}, DType::kF32);
  ASSERT_TRUE(ops_->Synchronize().ok());
  // The step: a temporary 2a, then out = 2a + a in a tensor of its own, replacing the old one.
  auto graph = CudaGraph::Capture(*ops_, [&]() -> absl::Status {
    MIMO_ASSIGN_OR_RETURN(Tensor twice,
                          Tensor::Empty({n}, DType::kF32, ops_->allocator(), ops_->stream()));
    MIMO_RETURN_IF_ERROR(ops_->Add(
        {.dtype = DType::kF32, .a = a.data(), .b = a.data(), .out = twice.data(), .n = n}));
    MIMO_ASSIGN_OR_RETURN(Tensor sum,
                          Tensor::Empty({n}, DType::kF32, ops_->allocator(), ops_->stream()));
    MIMO_RETURN_IF_ERROR(ops_->Add(
        {.dtype = DType::kF32, .a = twice.data(), .b = a.data(), .out = sum.data(), .n = n}));
    out = std::move(sum);
    return absl::OkStatus();
  });
  ASSERT_TRUE(graph.ok()) << graph.status();
  // Tensors taken after the capture (from the stream's cache, where the temporary and the replaced
  // tensor would be without the pool), filled, then replays.
  const std::vector<float> pattern(n, -7.0f);
  std::vector<Tensor> taken;
  for (int i = 0; i < 4; ++i) {
    taken.push_back(New({n}, DType::kF32));
    Put(taken.back(), pattern.data());
  }
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(graph->Replay(ops_->stream()).ok());
  for (const Tensor& t : taken) {
    EXPECT_NE(t.data(), out->data());
    EXPECT_EQ(floats(Get(t)), pattern);
  }
  const std::vector<float> got = floats(Get(*out));
  for (int64_t i = 0; i < n; i += 4099) ASSERT_EQ(got[i], 3.0f * host_a[i]) << i;
  // Destroyed, the graph's memory (the temporary's and the replaced tensor's) serves others.
  taken.clear();
  out.reset();
  const int64_t segments = ops_->allocator().stats().system_allocations;
  graph = absl::UnknownError("destroyed");
  for (int i = 0; i < 7; ++i) taken.push_back(New({n}, DType::kF32));
  EXPECT_EQ(ops_->allocator().stats().system_allocations, segments);
}

TEST_F(CudaGraphTest, HostSynchronizationDuringCaptureIsAnError) {
  const Tensor t = New({256}, DType::kF32);
  auto graph = CudaGraph::Capture(ops_->stream(), [&]() -> absl::Status {
    MIMO_RETURN_IF_ERROR(ops_->SetZero(t.data(), t.nbytes()));
    float host[256];
    return ops_->CopyToHost(host, t.data(), t.nbytes());
  });
  ASSERT_FALSE(graph.ok());
  EXPECT_THAT(graph.status().message(), HasSubstr("during CUDA graph capture"));
  // The stream works as before.
  const std::vector<float> ones(256, 1.0f);
  Put(t, ones.data());
  std::vector<float> back(256);
  ASSERT_TRUE(ops_->CopyToHost(back.data(), t.data(), t.nbytes()).ok());
  EXPECT_EQ(back, ones);
  EXPECT_TRUE(ops_->Synchronize().ok());
}

TEST_F(CudaGraphTest, ReturnsEnqueuesError) {
  auto graph =
      CudaGraph::Capture(ops_->stream(), [] { return absl::InvalidArgumentError("bad shape"); });
  ASSERT_EQ(graph.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(graph.status().message(), HasSubstr("bad shape"));
  EXPECT_TRUE(ops_->Synchronize().ok());
  // Through the Ops form: its private pool is closed and released with the failed capture, and
  // what that capture allocated serves others.
  const Tensor t = New({256}, DType::kF32);
  constexpr int64_t n = int64_t{1} << 20;
  graph = CudaGraph::Capture(*ops_, [&]() -> absl::Status {
    MIMO_ASSIGN_OR_RETURN(Tensor scratch,
                          Tensor::Empty({n}, DType::kF32, ops_->allocator(), ops_->stream()));
    return absl::InvalidArgumentError("bad shape");
  });
  ASSERT_EQ(graph.status().code(), absl::StatusCode::kInvalidArgument);
  const int64_t segments = ops_->allocator().stats().system_allocations;
  {
    const Tensor reused = New({n}, DType::kF32);
    EXPECT_EQ(ops_->allocator().stats().system_allocations, segments);
  }
  // A graph moved keeps its pool (the moved-from one releases nothing): a tensor taken after the
  // moved-from one is gone does not get the memory the replay zeroes.
  graph = CudaGraph::Capture(*ops_, [&]() -> absl::Status {
    MIMO_ASSIGN_OR_RETURN(Tensor scratch,
                          Tensor::Empty({n}, DType::kF32, ops_->allocator(), ops_->stream()));
    MIMO_RETURN_IF_ERROR(ops_->SetZero(scratch.data(), scratch.nbytes()));
    return ops_->SetZero(t.data(), t.nbytes());
  });
  ASSERT_TRUE(graph.ok()) << graph.status();
  CudaGraph moved = *std::move(graph);
  graph = absl::UnknownError("moved from");
  const std::vector<float> pattern(n, 5.0f);
  std::vector<Tensor> taken;  // Two: the cache has the first capture's block too.
  for (int i = 0; i < 2; ++i) {
    taken.push_back(New({n}, DType::kF32));
    Put(taken.back(), pattern.data());
  }
  ASSERT_TRUE(moved.Replay(ops_->stream()).ok());
  for (const Tensor& k : taken) {
    const std::vector<char> after = Get(k);
    EXPECT_EQ(std::memcmp(after.data(), pattern.data(), after.size()), 0);
  }
}

}  // namespace
}  // namespace mimo::kernels
