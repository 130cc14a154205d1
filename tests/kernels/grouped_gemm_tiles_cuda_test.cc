// The grouped GEMM as row tiles through cuBLASLt against float64 on fresh random inputs: groups
// padded to 64 and 128 rows (empty ones, rows before the first and after the last left
// untouched), forward and input-gradient layouts, bf16 and f32 outputs, accumulation (relative
// error: f32 outputs < 3e-6, bf16 < 1e-2); a CUDA graph replayed on new offsets; what it refuses.
// Skips without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

#include "kernels/cuda_graph.h"
#include "kernels/grouped_gemm_tiles.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/grouped_gemm_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class GroupedGemmTilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
    auto blas = CublasLt::Create();
    ASSERT_TRUE(blas.ok()) << blas.status();
    blas_ = *std::move(blas);
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  GroupedGemmParams Params(const GroupedGemmCase& c, DType d_dtype, int64_t tile,
                           const DeviceBuffer& a, const DeviceBuffer& b, const DeviceBuffer& d,
                           const DeviceBuffer& offsets) const {
    GroupedGemmParams p =
        ParamsOf(c, DType::kBF16, d_dtype, a.get(), b.get(), d.get(), offsets.as<int32_t>());
    p.row_multiple = tile;
    return p;
  }

  std::unique_ptr<CublasLt> blas_;
  cudaStream_t stream_ = nullptr;
};

TEST_F(GroupedGemmTilesTest, MatchesFloat64) {
  const unsigned seed = std::random_device{}();
  std::mt19937 random(seed);
  using M = GroupedGemmMode;
  for (const DType dt : {DType::kBF16, DType::kF32}) {
    for (const GroupedGemmCase& c : {
             // 64-row tiles: empty groups, rows before the first group and a tail past the last
             // that is not a whole tile.
             GroupedGemmCase{"Forward",
                             M::kVariableRows,
                             {128, 0, 64, 320, 0, 192},
                             64,
                             100,
                             0,
                             136,
                             64,
                             true,
                             false},
             GroupedGemmCase{
                 "InputGradient", M::kVariableRows, {0, 256, 64}, 0, 64, 0, 72, 40, false, false},
             GroupedGemmCase{
                 "ForwardAccumulate", M::kVariableRows, {64, 192}, 0, 0, 0, 48, 96, true, true},
             GroupedGemmCase{"NoRows", M::kVariableRows, {0, 0}, 0, 130, 0, 16, 16, true, false},
         }) {
      SCOPED_TRACE(::testing::Message() << c.name << " " << DTypeName(dt) << " seed " << seed);
      const GroupedGemmSizes size = SizesOf(c);
      HostData a = RandomData(DType::kBF16, size.a, random, -1, 1);
      HostData b = RandomData(DType::kBF16, size.b, random, -1, 1);
      HostData d = c.accumulate ? RandomData(dt, size.d, random, -1, 1) : PoisonedData(dt, size.d);
      const std::vector<double> want =
          GroupedGemmFloat64(c, a.exact, b.exact, ValuesOf(dt, d.bytes));
      const std::vector<int32_t> offsets = OffsetsOf(c);
      DeviceBuffer d_a(a.bytes), d_b(b.bytes), d_d(d.bytes),
          d_offsets(BytesOf(offsets.data(), offsets.size() * sizeof(int32_t)));
      const GroupedGemmParams p = Params(c, dt, 64, d_a, d_b, d_d, d_offsets);
      ASSERT_TRUE(GroupedGemmTilesApply(p));
      DeviceBuffer workspace(GroupedGemmTilesWorkspaceBytes(p));
      const absl::Status s = LaunchGroupedGemmTiles(p, workspace.get(), *blas_, stream_);
      ASSERT_TRUE(s.ok()) << s;
      ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
      EXPECT_LT(GroupedGemmError(ValuesOf(dt, d_d.Bytes()), want), dt == DType::kF32 ? 3e-6 : 1e-2);
    }
  }
}

// Captured once, replayed with other offsets in the same buffer: the tiles follow the new groups.
TEST_F(GroupedGemmTilesTest, AGraphReplaysOnNewOffsets) {
  const unsigned seed = std::random_device{}();
  std::mt19937 random(seed);
  SCOPED_TRACE(seed);
  using M = GroupedGemmMode;
  GroupedGemmCase c{"Graph", M::kVariableRows, {128, 256, 0, 128}, 0, 128, 0, 64, 128, true, false};
  const GroupedGemmSizes size = SizesOf(c);
  HostData a = RandomData(DType::kBF16, size.a, random, -1, 1);
  HostData b = RandomData(DType::kBF16, size.b, random, -1, 1);
  const HostData poison = PoisonedData(DType::kBF16, size.d);
  std::vector<int32_t> offsets = OffsetsOf(c);
  DeviceBuffer d_a(a.bytes), d_b(b.bytes), d_d(poison.bytes),
      d_offsets(BytesOf(offsets.data(), offsets.size() * sizeof(int32_t)));
  const GroupedGemmParams p = Params(c, DType::kBF16, 128, d_a, d_b, d_d, d_offsets);
  DeviceBuffer workspace(GroupedGemmTilesWorkspaceBytes(p));
  // Eagerly first (the algorithm is chosen then), then captured.
  ASSERT_TRUE(LaunchGroupedGemmTiles(p, workspace.get(), *blas_, stream_).ok());
  auto graph = CudaGraph::Capture(
      stream_, [&] { return LaunchGroupedGemmTiles(p, workspace.get(), *blas_, stream_); });
  ASSERT_TRUE(graph.ok()) << graph.status();
  c.counts = {0, 384, 128, 0};  // Same rows, other groups.
  offsets = OffsetsOf(c);
  ASSERT_EQ(cudaMemcpy(d_offsets.get(), offsets.data(), offsets.size() * sizeof(int32_t),
                       cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_d.get(), poison.bytes.data(), poison.bytes.size(), cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_TRUE(graph->Replay(stream_).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  const std::vector<double> want =
      GroupedGemmFloat64(c, a.exact, b.exact, ValuesOf(DType::kBF16, poison.bytes));
  EXPECT_LT(GroupedGemmError(ValuesOf(DType::kBF16, d_d.Bytes()), want), 1e-2);
}

TEST_F(GroupedGemmTilesTest, RefusesWhatItCannotTile) {
  DeviceBuffer a(256 * 64 * 4), b(2 * 64 * 64 * 4), d(256 * 64 * 4), offsets(3 * sizeof(int32_t));
  const GroupedGemmParams ok{.ab_dtype = DType::kBF16,
                             .d_dtype = DType::kBF16,
                             .a = a.get(),
                             .b = b.get(),
                             .d = d.get(),
                             .offsets = offsets.as<int32_t>(),
                             .groups = 2,
                             .rows = 256,
                             .n = 64,
                             .k = 64,
                             .transpose_b = true,
                             .row_multiple = 64};
  EXPECT_TRUE(GroupedGemmTilesApply(ok));
  DeviceBuffer workspace(GroupedGemmTilesWorkspaceBytes(ok));
  GroupedGemmParams p = ok;
  p.row_multiple = 32;  // Tiles too short.
  EXPECT_FALSE(GroupedGemmTilesApply(p));
  EXPECT_EQ(LaunchGroupedGemmTiles(p, workspace.get(), *blas_, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  p = ok;
  p.ab_dtype = p.d_dtype = DType::kF32;
  EXPECT_FALSE(GroupedGemmTilesApply(p));
  p = ok;
  p.k = 60;  // Not a multiple of 8.
  EXPECT_FALSE(GroupedGemmTilesApply(p));
  p = ok;
  p.rows = 127;  // One whole tile: a plain product, not tiles.
  EXPECT_FALSE(GroupedGemmTilesApply(p));
  void* const* table = static_cast<void* const*>(workspace.get());
  EXPECT_EQ(blas_
                ->GemmTables(
                    {.ab_dtype = DType::kBF16, .d_dtype = DType::kBF16, .m = 64, .n = 64, .k = 64},
                    table, table, table, 1, stream_)
                .code(),
            absl::StatusCode::kInvalidArgument);
  p = ok;
  p.mode = GroupedGemmMode::kVariableDepth;
  p.k = 0;
  p.m = 64;
  p.transpose_b = false;
  p.row_multiple = 1;
  EXPECT_FALSE(GroupedGemmTilesApply(p));
}

}  // namespace
}  // namespace mimo::kernels
