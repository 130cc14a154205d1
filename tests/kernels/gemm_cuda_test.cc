// The cuBLASLt GEMM against float64 on fresh random inputs and odd shapes, every transpose, bias,
// GELU fused (n % 8 == 0) and unfused, accumulation (relative error: f32 < 1e-5, bf16 outputs <
// 1e-2); plans cached per problem; argument errors, misaligned buffers among them. Skips without
// a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

#include "kernels/gemm.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/gemm_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct DTypes {
  DType ab, d;
};

class GemmCudaTest : public ::testing::TestWithParam<DTypes> {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
    auto blas = CublasLt::Create();
    ASSERT_TRUE(blas.ok()) << blas.status();
    blas_ = std::move(*blas);
  }
  std::unique_ptr<CublasLt> blas_;
};

TEST_P(GemmCudaTest, MatchesFloat64) {
  const auto [ab, dt] = GetParam();
  const double bound = dt == DType::kF32 ? 1e-5 : 1e-2;
  std::mt19937 random(std::random_device{}());
  struct Case {
    int64_t m, n, k;
    bool ta, tb, bias, gelu, accumulate;
  };
  for (const Case& c : {Case{1, 1, 1, false, false, false, false, false},
                        Case{3, 5, 7, true, false, true, false, false},
                        Case{17, 33, 65, false, true, true, true, false},
                        Case{64, 48, 200, true, true, false, true, false},
                        Case{64, 48, 200, false, true, true, true, false},
                        Case{9, 40, 31, false, false, false, false, true},
                        Case{5, 6, 0, false, false, false, false, false},
                        Case{777, 1024, 512, false, true, true, true, false},
                        Case{512, 768, 1031, true, false, false, false, true}}) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(ab) << "->" << DTypeName(dt) << " m " << c.m << " n " << c.n << " k "
                 << c.k << " ta " << c.ta << " tb " << c.tb << " bias " << c.bias << " gelu "
                 << c.gelu << " acc " << c.accumulate);
    const HostData a = RandomData(ab, c.m * c.k, random, -1, 1);
    const HostData b = RandomData(ab, c.k * c.n, random, -1, 1);
    const HostData bias = RandomData(dt, c.n, random, -1, 1);
    const HostData d0 = RandomData(dt, c.m * c.n, random, -1, 1);
    const DeviceBuffer da(a.bytes), db(b.bytes), dbias(bias.bytes),
        dd(c.accumulate ? DeviceBuffer(d0.bytes) : DeviceBuffer(c.m * c.n * DTypeSize(dt))),
        dpre(c.m * c.n * DTypeSize(dt));
    const absl::Status status =
        blas_->Gemm({.ab_dtype = ab,
                     .d_dtype = dt,
                     .a = da.get(),
                     .b = db.get(),
                     .d = dd.get(),
                     .transpose_a = c.ta,
                     .transpose_b = c.tb,
                     .m = c.m,
                     .n = c.n,
                     .k = c.k,
                     .accumulate = c.accumulate,
                     .bias = c.bias ? dbias.get() : nullptr,
                     .activation = c.gelu ? GemmActivation::kGeluTanh : GemmActivation::kNone,
                     .pre_activation = c.gelu ? dpre.get() : nullptr},
                    nullptr);
    ASSERT_TRUE(status.ok()) << status;
    std::vector<double> want = GemmFloat64(a.exact, c.ta, b.exact, c.tb, c.m, c.n, c.k,
                                           c.bias ? bias.exact : std::vector<double>{});
    const std::vector<double> got = ValuesOf(dt, dd.Bytes());
    ASSERT_TRUE(AllFinite(got)) << "an output element was not written";
    if (c.gelu) {
      EXPECT_LT(RelativeError(ValuesOf(dt, dpre.Bytes()), want), bound);
      for (double& v : want) v = GeluTanhFloat64(v);
    }
    if (c.accumulate) {
      for (size_t i = 0; i < want.size(); ++i) want[i] += d0.exact[i];
    }
    EXPECT_LT(RelativeError(got, want), bound);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, GemmCudaTest,
                         ::testing::Values(DTypes{DType::kF32, DType::kF32},
                                           DTypes{DType::kBF16, DType::kBF16},
                                           DTypes{DType::kBF16, DType::kF32}),
                         [](const auto& info) {
                           return std::string(DTypeName(info.param.ab)) + "_" +
                                  std::string(DTypeName(info.param.d));
                         });

TEST_P(GemmCudaTest, PlansAreCachedPerProblem) {
  const auto [ab, dt] = GetParam();
  const DeviceBuffer a(64 * 64 * 4), b(64 * 64 * 4), d(64 * 64 * 4);
  const GemmParams p{.ab_dtype = ab,
                     .d_dtype = dt,
                     .a = a.get(),
                     .b = b.get(),
                     .d = d.get(),
                     .m = 64,
                     .n = 64,
                     .k = 64};
  ASSERT_TRUE(blas_->Gemm(p, nullptr).ok());
  EXPECT_EQ(blas_->cached_plans(), 1u);
  ASSERT_TRUE(blas_->Gemm(p, nullptr).ok());
  EXPECT_EQ(blas_->cached_plans(), 1u);
  GemmParams q = p;
  q.k = 32;
  ASSERT_TRUE(blas_->Gemm(q, nullptr).ok());
  EXPECT_EQ(blas_->cached_plans(), 2u);
  q.transpose_a = true;
  ASSERT_TRUE(blas_->Gemm(q, nullptr).ok());
  EXPECT_EQ(blas_->cached_plans(), 3u);
}

// One cached plan serves calls with other buffers: bias, pre-activation and output pointers are
// those of each call.
TEST_P(GemmCudaTest, APlanReusedWithOtherBuffersUsesThem) {
  const auto [ab, dt] = GetParam();
  const double bound = dt == DType::kF32 ? 1e-5 : 1e-2;
  std::mt19937 random(std::random_device{}());
  constexpr int64_t kM = 40, kN = 64, kK = 48;
  for (int call = 0; call < 2; ++call) {
    const HostData a = RandomData(ab, kM * kK, random, -1, 1);
    const HostData b = RandomData(ab, kN * kK, random, -1, 1);
    const HostData bias = RandomData(dt, kN, random, -1, 1);
    const DeviceBuffer da(a.bytes), db(b.bytes), dbias(bias.bytes), d(kM * kN * DTypeSize(dt)),
        pre(kM * kN * DTypeSize(dt));
    ASSERT_TRUE(blas_
                    ->Gemm({.ab_dtype = ab,
                            .d_dtype = dt,
                            .a = da.get(),
                            .b = db.get(),
                            .d = d.get(),
                            .transpose_b = true,
                            .m = kM,
                            .n = kN,
                            .k = kK,
                            .bias = dbias.get(),
                            .activation = GemmActivation::kGeluTanh,
                            .pre_activation = pre.get()},
                           nullptr)
                    .ok());
    std::vector<double> want = GemmFloat64(a.exact, false, b.exact, true, kM, kN, kK, bias.exact);
    EXPECT_LT(RelativeError(ValuesOf(dt, pre.Bytes()), want), bound) << "call " << call;
    for (double& v : want) v = GeluTanhFloat64(v);
    EXPECT_LT(RelativeError(ValuesOf(dt, d.Bytes()), want), bound) << "call " << call;
  }
  EXPECT_EQ(blas_->cached_plans(), 1u);
}

// Token counts vary per micro-batch: the first problem of a size class (m 897..1024 here) is
// timed, the others take its algorithm without asking the heuristic; each result still right,
// with the bias and GELU epilogue (whose pointers are the call's) and accumulating.
TEST_P(GemmCudaTest, ProblemsOfOneSizeClassShareItsTimedAlgorithm) {
  const auto [ab, dt] = GetParam();
  const double bound = dt == DType::kF32 ? 1e-5 : 1e-2;
  std::mt19937 random(std::random_device{}());
  constexpr int64_t kN = 72, kK = 56;
  for (const int64_t m : {1000, 897, 960, 1024, 931}) {
    const HostData a = RandomData(ab, m * kK, random, -1, 1);
    const HostData b = RandomData(ab, kN * kK, random, -1, 1);
    const HostData bias = RandomData(dt, kN, random, -1, 1);
    const DeviceBuffer da(a.bytes), db(b.bytes), dbias(bias.bytes), d(m * kN * DTypeSize(dt)),
        pre(m * kN * DTypeSize(dt)), sum(m * kN * DTypeSize(dt));
    GemmParams p{.ab_dtype = ab,
                 .d_dtype = dt,
                 .a = da.get(),
                 .b = db.get(),
                 .d = d.get(),
                 .transpose_b = true,
                 .m = m,
                 .n = kN,
                 .k = kK,
                 .bias = dbias.get(),
                 .activation = GemmActivation::kGeluTanh,
                 .pre_activation = pre.get()};
    ASSERT_TRUE(blas_->Gemm(p, nullptr).ok()) << "m " << m;
    std::vector<double> want = GemmFloat64(a.exact, false, b.exact, true, m, kN, kK, bias.exact);
    EXPECT_LT(RelativeError(ValuesOf(dt, pre.Bytes()), want), bound) << "m " << m;
    std::vector<double> gelu = want;
    for (double& v : gelu) v = GeluTanhFloat64(v);
    EXPECT_LT(RelativeError(ValuesOf(dt, d.Bytes()), gelu), bound) << "m " << m;
    // sum = 0, then twice accumulated: 2 a b^T.
    ASSERT_EQ(cudaMemset(sum.get(), 0, m * kN * DTypeSize(dt)), cudaSuccess);
    GemmParams q{.ab_dtype = ab,
                 .d_dtype = dt,
                 .a = da.get(),
                 .b = db.get(),
                 .d = sum.get(),
                 .transpose_b = true,
                 .m = m,
                 .n = kN,
                 .k = kK,
                 .accumulate = true};
    ASSERT_TRUE(blas_->Gemm(q, nullptr).ok());
    ASSERT_TRUE(blas_->Gemm(q, nullptr).ok());
    std::vector<double> twice = GemmFloat64(a.exact, false, b.exact, true, m, kN, kK, {});
    for (double& v : twice) v *= 2;
    EXPECT_LT(RelativeError(ValuesOf(dt, sum.Bytes()), twice), bound) << "m " << m;
  }
}

TEST_P(GemmCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(blas_->Gemm({.ab_dtype = DType::kI64, .m = 1, .n = 1, .k = 1}, nullptr).message(),
              HasSubstr("dtype i64 is not supported"));
  EXPECT_THAT(blas_->Gemm({.m = 2, .n = 2, .k = 2}, nullptr).message(), HasSubstr("a is null"));
  EXPECT_TRUE(blas_->Gemm({.m = 0, .n = 2, .k = 2}, nullptr).ok());
  const DeviceBuffer buf(1024);
  const char* base = static_cast<const char*>(buf.get());
  EXPECT_THAT(
      blas_->Gemm({.a = base + 4, .b = base, .d = buf.get(), .m = 2, .n = 2, .k = 2}, nullptr)
          .message(),
      HasSubstr("a is not 16-byte aligned"));
  EXPECT_THAT(
      blas_
          ->Gemm({.a = base, .b = base, .d = buf.get(), .m = 2, .n = 2, .k = 2, .bias = base + 8},
                 nullptr)
          .message(),
      HasSubstr("bias is not 16-byte aligned"));
  EXPECT_EQ(blas_->cached_plans(), 0u);
}

}  // namespace
}  // namespace mimo::kernels
