// The linear layer on cuBLASLt: forward and backward against float64 on fresh random inputs and
// odd shapes, with and without bias and GELU (fused and unfused), accumulating or not (relative
// error: f32 < 3e-6, bf16 < 1e-2), poisoned outputs fully written, argument errors. Skips
// without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

#include "kernels/linear.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/gemm_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class LinearCudaTest : public CudaOpTest {
 protected:
  void SetUp() override {
    CudaOpTest::SetUp();
    if (IsSkipped()) return;
    auto blas = CublasLt::Create();
    ASSERT_TRUE(blas.ok()) << blas.status();
    blas_ = std::move(*blas);
  }
  std::unique_ptr<CublasLt> blas_;
};

TEST_P(LinearCudaTest, MatchesFloat64ForwardAndBackward) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 3e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  struct Case {
    int64_t tokens, in, out;
    bool bias, gelu, accumulate, dx;
  };
  for (const Case& c :
       {Case{1, 1, 1, false, false, false, true}, Case{7, 5, 3, true, false, true, true},
        Case{33, 17, 24, true, true, false, true}, Case{65, 40, 9, false, true, true, false},
        Case{0, 8, 4, true, true, false, true}, Case{1000, 512, 1536, true, true, true, true},
        Case{257, 1024, 512, false, false, false, true},
        Case{3001, 64, 77, true, false, false, true},
        Case{3001, 40, 520, true, false, true, true}}) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(dtype) << " tokens " << c.tokens << " in " << c.in << " out " << c.out
                 << " bias " << c.bias << " gelu " << c.gelu << " acc " << c.accumulate);
    const HostData x = RandomData(dtype, c.tokens * c.in, random, -1, 1);
    const HostData w = RandomData(dtype, c.out * c.in, random, -1, 1);
    const HostData bias = RandomData(dtype, c.out, random, -1, 1);
    const HostData dy = RandomData(dtype, c.tokens * c.out, random, -1, 1);
    const HostData dw0 = RandomData(DType::kF32, c.out * c.in, random, -1, 1);
    const HostData db0 = RandomData(DType::kF32, c.out, random, -1, 1);
    const size_t act_bytes = c.tokens * c.out * DTypeSize(dtype);
    const DeviceBuffer dx_in(x.bytes), dw_in(w.bytes), dbias_in(bias.bytes), ddy(dy.bytes),
        y(act_bytes), pre(act_bytes), dpre(act_bytes), dx(c.tokens * c.in * DTypeSize(dtype)),
        dw(c.accumulate ? DeviceBuffer(dw0.bytes) : DeviceBuffer(c.out * c.in * 4)),
        dbias(c.accumulate ? DeviceBuffer(db0.bytes) : DeviceBuffer(c.out * 4));
    const GemmActivation act = c.gelu ? GemmActivation::kGeluTanh : GemmActivation::kNone;
    absl::Status status = LaunchLinear({.dtype = dtype,
                                        .x = dx_in.get(),
                                        .w = dw_in.get(),
                                        .bias = c.bias ? dbias_in.get() : nullptr,
                                        .y = y.get(),
                                        .activation = act,
                                        .pre_activation = pre.get(),
                                        .tokens = c.tokens,
                                        .in = c.in,
                                        .out = c.out},
                                       *blas_, nullptr);
    ASSERT_TRUE(status.ok()) << status;
    const size_t workspace_bytes = LinearBackwardWorkspaceBytes(c.tokens, c.out);
    const DeviceBuffer workspace(workspace_bytes);
    status = LaunchLinearBackward({.dtype = dtype,
                                   .dy = ddy.get(),
                                   .x = dx_in.get(),
                                   .w = dw_in.get(),
                                   .activation = act,
                                   .pre_activation = pre.get(),
                                   .dpre_activation = dpre.get(),
                                   .dx = c.dx ? dx.get() : nullptr,
                                   .dw = dw.as<float>(),
                                   .dbias = c.bias ? dbias.as<float>() : nullptr,
                                   .accumulate = c.accumulate,
                                   .tokens = c.tokens,
                                   .in = c.in,
                                   .out = c.out,
                                   .workspace = workspace.get(),
                                   .workspace_bytes = workspace_bytes},
                                  *blas_, nullptr);
    ASSERT_TRUE(status.ok()) << status;
    const LinearReference ref =
        LinearFloat64(x.exact, w.exact, c.bias ? bias.exact : std::vector<double>(c.out, 0.0),
                      dy.exact, c.gelu, c.tokens, c.in, c.out);
    const std::vector<double> got_y = ValuesOf(dtype, y.Bytes());
    ASSERT_TRUE(AllFinite(got_y)) << "an output element was not written";
    EXPECT_LT(RelativeError(got_y, ref.y), bound);
    if (c.gelu) {
      EXPECT_LT(RelativeError(ValuesOf(dtype, pre.Bytes()), ref.pre_activation), bound);
    }
    if (c.dx) {
      const std::vector<double> got_dx = ValuesOf(dtype, dx.Bytes());
      ASSERT_TRUE(AllFinite(got_dx));
      EXPECT_LT(RelativeError(got_dx, ref.dx), bound);
    }
    std::vector<double> want_dw = ref.dw, want_db = ref.dbias;
    if (c.accumulate) {
      for (size_t i = 0; i < want_dw.size(); ++i) want_dw[i] += dw0.exact[i];
      for (size_t i = 0; i < want_db.size(); ++i) want_db[i] += db0.exact[i];
    }
    const std::vector<double> got_dw = ValuesOf(DType::kF32, dw.Bytes());
    ASSERT_TRUE(AllFinite(got_dw));
    EXPECT_LT(RelativeError(got_dw, want_dw), bound);
    if (c.bias) {
      const std::vector<double> got_db = ValuesOf(DType::kF32, dbias.Bytes());
      ASSERT_TRUE(AllFinite(got_db));
      EXPECT_LT(RelativeError(got_db, want_db), bound);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, LinearCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_P(LinearCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(LaunchLinear({.dtype = DType::kI32, .tokens = 1, .in = 1, .out = 1}, *blas_, nullptr)
                  .message(),
              HasSubstr("dtype i32 is not supported"));
  EXPECT_THAT(LaunchLinearBackward({.tokens = 1, .in = 1, .out = 1}, *blas_, nullptr).message(),
              HasSubstr("dw is null"));
  const DeviceBuffer buf(4 * 600);
  EXPECT_THAT(LaunchLinearBackward({.dy = buf.get(),
                                    .x = buf.get(),
                                    .w = buf.get(),
                                    .dw = buf.as<float>(),
                                    .dbias = buf.as<float>(),
                                    .tokens = 600,
                                    .in = 1,
                                    .out = 1},
                                   *blas_, nullptr)
                  .message(),
              HasSubstr("the workspace has 0 bytes, a bias gradient over 600 rows of 1 needs"));
  EXPECT_TRUE(LaunchLinear({.tokens = 0, .in = 1, .out = 0}, *blas_, nullptr).ok());
}

}  // namespace
}  // namespace mimo::kernels
