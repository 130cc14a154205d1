// The elementwise sum's CUDA kernels bitwise equal to the CPU twin (one fp32 sum, one rounding) on
// odd sizes, on the vector path, the scalar path (misaligned pointers) and the tail, in place;
// poisoned outputs fully written; argument errors. Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/add.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class AddCudaTest : public CudaOpTest {};

TEST_P(AddCudaTest, EqualsTheCpuTwinBitwise) {
  const DType dtype = GetParam();
  const int64_t size = DTypeSize(dtype);
  std::mt19937 random(std::random_device{}());
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1001}, (int64_t{1} << 22) + 3}) {
    for (int64_t offset : {int64_t{0}, int64_t{1}}) {  // 1: not 16-byte aligned, scalar path.
      SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " n " << n << " offset " << offset);
      const HostData a = RandomData(dtype, n + offset, random, -4, 4);
      const HostData b = RandomData(dtype, n + offset, random, -4, 4);
      HostData want = PoisonedData(dtype, n + offset);
      ASSERT_TRUE(AddCpu({.dtype = dtype,
                          .a = a.bytes.data() + offset * size,
                          .b = b.bytes.data() + offset * size,
                          .out = want.bytes.data() + offset * size,
                          .n = n})
                      .ok());
      const DeviceBuffer da(a.bytes), db(b.bytes), out((n + offset) * size);
      const auto at = [&](const DeviceBuffer& buf) {
        return static_cast<char*>(buf.get()) + offset * size;
      };
      ASSERT_TRUE(
          LaunchAdd({.dtype = dtype, .a = at(da), .b = at(db), .out = at(out), .n = n}, nullptr)
              .ok());
      const std::vector<char> got = out.Bytes();
      EXPECT_TRUE(
          std::equal(got.begin() + offset * size, got.end(), want.bytes.begin() + offset * size));
      // In place: a += b.
      ASSERT_TRUE(
          LaunchAdd({.dtype = dtype, .a = at(da), .b = at(db), .out = at(da), .n = n}, nullptr)
              .ok());
      const std::vector<char> in_place = da.Bytes();
      EXPECT_TRUE(std::equal(in_place.begin() + offset * size, in_place.end(),
                             want.bytes.begin() + offset * size));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, AddCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_F(AddCudaTest, Int32CountsEqualTheCpuTwin) {
  std::mt19937 random(std::random_device{}());
  std::uniform_int_distribution<int32_t> value(-2147483647 - 1, 2147483647);
  const int64_t n = 1001;
  std::vector<int32_t> a(n), b(n), want(n);
  for (int64_t i = 0; i < n; ++i) a[i] = value(random), b[i] = value(random);
  ASSERT_TRUE(
      AddCpu({.dtype = DType::kI32, .a = a.data(), .b = b.data(), .out = want.data(), .n = n})
          .ok());
  const auto bytes = [](const std::vector<int32_t>& v) {
    return std::vector<char>(reinterpret_cast<const char*>(v.data()),
                             reinterpret_cast<const char*>(v.data() + v.size()));
  };
  const DeviceBuffer da(bytes(a)), db(bytes(b));
  ASSERT_TRUE(
      LaunchAdd({.dtype = DType::kI32, .a = da.get(), .b = db.get(), .out = da.get(), .n = n},
                nullptr)
          .ok());
  EXPECT_EQ(da.Bytes(), bytes(want));
}

TEST_F(AddCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(LaunchAdd({.n = 3}, nullptr).message(), HasSubstr("a is null"));
  EXPECT_TRUE(LaunchAdd({.n = 0}, nullptr).ok());
}

}  // namespace
}  // namespace mimo::kernels
