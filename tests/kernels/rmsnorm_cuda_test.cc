// RMSNorm's CUDA kernels against float64 on fresh random inputs and odd shapes (f32 relative
// error < 5e-6: fp32 tree sums; bf16 < 1e-2; dx relative to its cancelling terms), poisoned
// outputs fully written, bitwise-deterministic reruns, and argument errors. Skips without a GPU.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/bfloat16.h"
#include "kernels/device_info.h"
#include "kernels/rmsnorm.h"
#include "tests/kernels/rmsnorm_reference.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using testing::RelativeError;
using testing::RmsNormDxScale;
using testing::RmsNormFloat64;

// A device buffer of `bytes`, poisoned with 0xff bytes (NaN in f32 and bf16).
struct DeviceBuffer {
  explicit DeviceBuffer(size_t bytes) : bytes(bytes) {
    if (bytes > 0) {
      EXPECT_EQ(cudaMalloc(&ptr, bytes), cudaSuccess);
      EXPECT_EQ(cudaMemset(ptr, 0xff, bytes), cudaSuccess);
    }
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  void From(const void* host) {
    EXPECT_EQ(cudaMemcpy(ptr, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<char> Bytes() const {
    std::vector<char> out(bytes);
    EXPECT_EQ(cudaMemcpy(out.data(), ptr, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
  void* ptr = nullptr;
  size_t bytes = 0;
};

// Host values of `dtype` as bytes, plus their float64 values.
struct Host {
  std::vector<char> bytes;
  std::vector<double> exact;
};

Host Random(DType dtype, int64_t n, std::mt19937& random, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Host h;
  h.bytes.resize(n * DTypeSize(dtype));
  for (int64_t i = 0; i < n; ++i) {
    float v = dist(random);
    if (dtype == DType::kBF16) {
      const uint16_t b = FloatToBFloat16(v);
      std::memcpy(h.bytes.data() + 2 * i, &b, 2);
      v = BFloat16ToFloat(b);
    } else {
      std::memcpy(h.bytes.data() + 4 * i, &v, 4);
    }
    h.exact.push_back(v);
  }
  return h;
}

std::vector<double> Values(DType dtype, const std::vector<char>& bytes) {
  std::vector<double> out;
  for (size_t i = 0; i < bytes.size() / DTypeSize(dtype); ++i) {
    if (dtype == DType::kF32) {
      float v;
      std::memcpy(&v, bytes.data() + 4 * i, 4);
      out.push_back(v);
    } else {
      uint16_t b;
      std::memcpy(&b, bytes.data() + 2 * i, 2);
      out.push_back(BFloat16ToFloat(b));
    }
  }
  return out;
}

class RmsNormCudaTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }
};

TEST_P(RmsNormCudaTest, MatchesFloat64AndIsDeterministic) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 5e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  struct Shape2 {
    int64_t rows, cols;
  };
  for (const Shape2 s : {Shape2{1, 1}, Shape2{3, 7}, Shape2{17, 255}, Shape2{64, 1000},
                         Shape2{5, 4099}, Shape2{1000, 2048}}) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(dtype) << " (" << s.rows << ", " << s.cols << ")");
    const int64_t n = s.rows * s.cols;
    const size_t e = DTypeSize(dtype);
    const Host x = Random(dtype, n, random, -3, 3), w = Random(dtype, s.cols, random, 0.5, 1.5),
               dy = Random(dtype, n, random, -1, 1);
    DeviceBuffer dx_in(n * e), dw_in(s.cols * e), ddy(n * e);
    dx_in.From(x.bytes.data());
    dw_in.From(w.bytes.data());
    ddy.From(dy.bytes.data());
    std::vector<char> first_dx, first_dw;
    for (int run = 0; run < 2; ++run) {
      DeviceBuffer y(n * e), rstd(s.rows * 4), dx(n * e), dweight(s.cols * 4);
      ASSERT_TRUE(LaunchRmsNorm({.dtype = dtype,
                                 .x = dx_in.ptr,
                                 .weight = dw_in.ptr,
                                 .y = y.ptr,
                                 .rstd = static_cast<float*>(rstd.ptr),
                                 .rows = s.rows,
                                 .cols = s.cols,
                                 .eps = 1e-6f},
                                nullptr)
                      .ok());
      ASSERT_TRUE(LaunchRmsNormBackward({.dtype = dtype,
                                         .dy = ddy.ptr,
                                         .x = dx_in.ptr,
                                         .weight = dw_in.ptr,
                                         .rstd = static_cast<const float*>(rstd.ptr),
                                         .dx = dx.ptr,
                                         .dweight = static_cast<float*>(dweight.ptr),
                                         .rows = s.rows,
                                         .cols = s.cols},
                                        nullptr)
                      .ok());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const auto ref = RmsNormFloat64(x.exact, w.exact, dy.exact, s.rows, s.cols, 1e-6);
      const std::vector<double> got_y = Values(dtype, y.Bytes()),
                                got_rstd = Values(DType::kF32, rstd.Bytes()),
                                got_dx = Values(dtype, dx.Bytes()),
                                got_dw = Values(DType::kF32, dweight.Bytes());
      for (const auto* v : {&got_y, &got_rstd, &got_dx, &got_dw}) {
        for (double d : *v) ASSERT_TRUE(std::isfinite(d)) << "an output element was not written";
      }
      EXPECT_LT(RelativeError(got_y, ref.y), bound);
      EXPECT_LT(RelativeError(got_rstd, ref.rstd), 5e-6);
      EXPECT_LT(RelativeError(got_dx, ref.dx, RmsNormDxScale(dy.exact, w.exact, ref.rstd, s.cols)),
                bound);
      EXPECT_LT(RelativeError(got_dw, ref.dweight), 5e-6);
      if (run == 0) {
        first_dx = dx.Bytes();
        first_dw = dweight.Bytes();
      } else {
        EXPECT_EQ(dx.Bytes(), first_dx);
        EXPECT_EQ(dweight.Bytes(), first_dw);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, RmsNormCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(RmsNormCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(LaunchRmsNorm({.dtype = DType::kI64, .rows = 1, .cols = 1}, nullptr).message(),
              HasSubstr("dtype i64 is not supported"));
  EXPECT_THAT(LaunchRmsNorm({.rows = 2, .cols = 3}, nullptr).message(), HasSubstr("x is null"));
  EXPECT_TRUE(LaunchRmsNorm({.rows = 0, .cols = 3}, nullptr).ok());
  DeviceBuffer dw(3 * 4);
  ASSERT_TRUE(
      LaunchRmsNormBackward({.dweight = static_cast<float*>(dw.ptr), .rows = 0, .cols = 3}, nullptr)
          .ok());
  EXPECT_EQ(Values(DType::kF32, dw.Bytes()), (std::vector<double>{0, 0, 0}));
}

}  // namespace
}  // namespace mimo::kernels
