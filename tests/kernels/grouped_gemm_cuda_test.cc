// The grouped GEMM's CUDA kernels (each of FMA, mma.sync and, on Hopper, the wgmma kernel that
// can run a case) against float64 on fresh random inputs for both modes and every dtype pair
// (relative error: f32 outputs < 3e-6, bf16 outputs < 1e-2; rows outside every group untouched,
// or, for weight gradients, NaN and never read), a Mixtral-sized case, the kernel each device is
// given, and offsets that break the contract staying inside the buffers. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/grouped_gemm.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/grouped_gemm_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

// Every kernel, each tried on every case (a kernel the device or build cannot run refuses).
constexpr GroupedGemmKernel kKernels[] = {GroupedGemmKernel::kFma, GroupedGemmKernel::kMmaSync,
                                          GroupedGemmKernel::kWgmma};

struct DTypes {
  DType ab, d;
};

// Sets the bytes of the rows before the first group and after the last (of `cols` elements) to
// all ones: NaN in f32 and bf16. A kernel that lets them into a weight gradient, even times zero,
// fails the case.
void PoisonRowsOutsideGroups(const GroupedGemmCase& c, int64_t cols, HostData& data) {
  const size_t row_bytes = static_cast<size_t>(cols) * DTypeSize(data.dtype);
  const int64_t end = OffsetsOf(c).back();
  std::fill_n(data.bytes.begin(), c.first * row_bytes, '\xff');
  std::fill(data.bytes.begin() + end * row_bytes, data.bytes.end(), '\xff');
}

class GroupedGemmCudaTest : public ::testing::TestWithParam<DTypes> {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }

  // Runs `c` on `kernel` and returns its error against float64; nothing when the kernel cannot
  // run it on this device (never FMA, nor the kernel LaunchGroupedGemm chooses).
  std::optional<double> Run(const GroupedGemmCase& c, GroupedGemmKernel kernel,
                            std::mt19937& random) {
    const auto [ab, dt] = GetParam();
    const GroupedGemmSizes size = SizesOf(c);
    HostData a = RandomData(ab, size.a, random, -1, 1);
    HostData b = RandomData(ab, size.b, random, -1, 1);
    if (c.mode == GroupedGemmMode::kVariableDepth) {  // Rows in no group hold NaN: never read.
      PoisonRowsOutsideGroups(c, c.m, a);
      PoisonRowsOutsideGroups(c, c.n, b);
    }
    HostData d = c.accumulate ? RandomData(dt, size.d, random, -1, 1) : PoisonedData(dt, size.d);
    const std::vector<double> want = GroupedGemmFloat64(c, a.exact, b.exact, ValuesOf(dt, d.bytes));
    const std::vector<int32_t> offsets = OffsetsOf(c);
    DeviceBuffer d_a(a.bytes), d_b(b.bytes), d_d(d.bytes),
        d_offsets(BytesOf(offsets.data(), offsets.size() * sizeof(int32_t)));
    const GroupedGemmParams p =
        ParamsOf(c, ab, dt, d_a.get(), d_b.get(), d_d.get(), d_offsets.as<int32_t>());
    const absl::Status s = LaunchGroupedGemmWith(p, kernel, nullptr);
    if (absl::IsFailedPrecondition(s)) {
      EXPECT_NE(kernel, GroupedGemmKernel::kFma);
      EXPECT_NE(kernel, ChooseGroupedGemmKernel(p).value_or(GroupedGemmKernel::kFma))
          << "the chosen kernel refused: " << s;
      return std::nullopt;
    }
    EXPECT_TRUE(s.ok()) << s;
    return GroupedGemmError(ValuesOf(dt, d_d.Bytes()), want);
  }

  // Every case on every kernel that can run it; FMA, and the kernel LaunchGroupedGemm chooses,
  // must run every case.
  void RunAll(const std::vector<GroupedGemmCase>& cases) {
    const double bound = GetParam().d == DType::kF32 ? 3e-6 : 1e-2;
    const unsigned seed = std::random_device{}();
    std::mt19937 random(seed);
    for (const GroupedGemmCase& c : cases) {
      for (GroupedGemmKernel kernel : kKernels) {
        SCOPED_TRACE(::testing::Message()
                     << c.name << " on " << GroupedGemmKernelName(kernel) << " seed " << seed);
        const std::optional<double> err = Run(c, kernel, random);
        if (err) {
          EXPECT_LT(*err, bound);
        }
      }
    }
  }
};

TEST_P(GroupedGemmCudaTest, MatchesFloat64) { RunAll(GroupedGemmCases()); }

// Shapes of a Mixtral-like layer cut down (8 experts, skewed counts, C 512, F 352): the three
// kinds of product the experts' forward and backward make.
TEST_P(GroupedGemmCudaTest, ExpertShapes) {
  const std::vector<int32_t> counts{512, 37, 0, 1000, 128, 64, 3, 257};
  using M = GroupedGemmMode;
  RunAll({GroupedGemmCase{"Fc1", M::kVariableRows, counts, 0, 40, 0, 704, 512, true, false},
          GroupedGemmCase{"Fc2InputGradient", M::kVariableRows, counts, 0, 40, 0, 352, 512, false,
                          false},
          GroupedGemmCase{"Fc1WeightGradient", M::kVariableDepth, counts, 0, 40, 704, 512, 0, false,
                          true},
          GroupedGemmCase{"Fc2WeightGradient", M::kVariableDepth, counts, 0, 40, 512, 352, 0, false,
                          false}});
}

INSTANTIATE_TEST_SUITE_P(DTypes, GroupedGemmCudaTest,
                         ::testing::Values(DTypes{DType::kF32, DType::kF32},
                                           DTypes{DType::kBF16, DType::kBF16},
                                           DTypes{DType::kBF16, DType::kF32}),
                         [](const auto& info) {
                           return absl::StrCat(DTypeName(info.param.ab), "_",
                                               DTypeName(info.param.d));
                         });

// The kernel each product is given: wgmma for weight gradients where it runs (a compute
// capability 9.0 device, sm_90a code (the default build's) and a driver that encodes TMA maps),
// else mma.sync where the device runs it, FMA for sizes that are not multiples of 8 (which
// mma.sync and wgmma refuse); on Hopper the wgmma kernel must accept and run a weight gradient,
// so the cases above test it there.
TEST(GroupedGemmCudaKernelTest, EachProductGetsAKernelThatRunsIt) {
  const CudaDevices devices = ListCudaDevices();
  if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  DeviceBuffer a(64 * 64 * 2), b(64 * 64 * 2), d(64 * 64 * 4), offsets(8);
  const auto params = [&](GroupedGemmMode mode, int64_t inner) {
    const bool depth = mode == GroupedGemmMode::kVariableDepth;
    return GroupedGemmParams{.mode = mode,
                             .ab_dtype = DType::kBF16,
                             .d_dtype = DType::kF32,
                             .a = a.get(),
                             .b = b.get(),
                             .d = d.get(),
                             .offsets = offsets.as<int32_t>(),
                             .groups = 1,
                             .rows = 64,
                             .m = depth ? inner : 0,
                             .n = 64,
                             .k = depth ? 0 : inner};
  };
  using M = GroupedGemmMode;
  const GroupedGemmKernel tensor_cores =
      LaunchGroupedGemmWith(params(M::kVariableRows, 64), GroupedGemmKernel::kMmaSync, nullptr).ok()
          ? GroupedGemmKernel::kMmaSync
          : GroupedGemmKernel::kFma;
  const bool wgmma_runs =
      LaunchGroupedGemmWith(params(M::kVariableDepth, 64), GroupedGemmKernel::kWgmma, nullptr).ok();
  for (M mode : {M::kVariableDepth, M::kVariableRows}) {
    const absl::StatusOr<GroupedGemmKernel> chosen = ChooseGroupedGemmKernel(params(mode, 64));
    ASSERT_TRUE(chosen.ok()) << chosen.status();
    EXPECT_EQ(*chosen,
              mode == M::kVariableDepth && wgmma_runs ? GroupedGemmKernel::kWgmma : tensor_cores);
    const GroupedGemmParams odd = params(mode, 60);
    const absl::StatusOr<GroupedGemmKernel> odd_chosen = ChooseGroupedGemmKernel(odd);
    ASSERT_TRUE(odd_chosen.ok()) << odd_chosen.status();
    EXPECT_EQ(*odd_chosen, GroupedGemmKernel::kFma);
    for (GroupedGemmKernel k : {GroupedGemmKernel::kMmaSync, GroupedGemmKernel::kWgmma}) {
      EXPECT_EQ(LaunchGroupedGemmWith(odd, k, nullptr).code(),
                absl::StatusCode::kFailedPrecondition);
    }
  }
  EXPECT_EQ(LaunchGroupedGemmWith(params(M::kVariableRows, 64), GroupedGemmKernel::kWgmma, nullptr)
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  int major = 0, minor = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0), cudaSuccess);
  if (major != 9 || minor != 0) {
    GTEST_SKIP() << "the wgmma kernel needs a compute capability 9.0 device";
  }
  const absl::Status wgmma =
      LaunchGroupedGemmWith(params(M::kVariableDepth, 64), GroupedGemmKernel::kWgmma, nullptr);
  if (absl::IsFailedPrecondition(wgmma)) GTEST_SKIP() << wgmma.message();
  EXPECT_TRUE(wgmma.ok()) << wgmma;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// Offsets past rows or decreasing are clamped on the device: the kernels read and write inside
// the buffers only (compute-sanitizer's memcheck proves it) and finish without an error.
TEST(GroupedGemmCudaContractTest, BadOffsetsStayInBounds) {
  const CudaDevices devices = ListCudaDevices();
  if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  const int64_t rows = 100, n = 16, k = 16;
  DeviceBuffer a(rows * k * 2), b(3 * n * k * 2), d(rows * n * 2), dw(3 * k * n * 4);
  const std::vector<int32_t> offsets{-5, 300, 20, 1 << 30};
  DeviceBuffer d_offsets(BytesOf(offsets.data(), offsets.size() * sizeof(int32_t)));
  GroupedGemmParams p{.ab_dtype = DType::kBF16,
                      .d_dtype = DType::kBF16,
                      .a = a.get(),
                      .b = b.get(),
                      .d = d.get(),
                      .offsets = d_offsets.as<int32_t>(),
                      .groups = 3,
                      .rows = rows,
                      .n = n,
                      .k = k,
                      .transpose_b = true};
  ASSERT_TRUE(LaunchGroupedGemm(p, nullptr).ok());
  p = GroupedGemmParams{.mode = GroupedGemmMode::kVariableDepth,
                        .ab_dtype = DType::kBF16,
                        .d_dtype = DType::kF32,
                        .a = a.get(),
                        .b = a.get(),
                        .d = dw.get(),
                        .offsets = d_offsets.as<int32_t>(),
                        .groups = 3,
                        .rows = rows,
                        .m = k,
                        .n = k};
  const absl::StatusOr<GroupedGemmKernel> chosen = ChooseGroupedGemmKernel(p);
  ASSERT_TRUE(chosen.ok()) << chosen.status();
  for (GroupedGemmKernel kernel : kKernels) {
    const absl::Status s = LaunchGroupedGemmWith(p, kernel, nullptr);
    const bool must_run = kernel == GroupedGemmKernel::kFma || kernel == *chosen;
    EXPECT_TRUE(s.ok() || (!must_run && absl::IsFailedPrecondition(s)))
        << GroupedGemmKernelName(kernel) << ": " << s;
  }
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace mimo::kernels
