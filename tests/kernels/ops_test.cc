// The CPU Ops: a host device with a host allocator, and every call the op's CPU twin (bitwise the
// same results as calling the twin, workspaces not needed).
#include "kernels/ops.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

TEST(CpuOpsTest, IsAHostDeviceWithAHostAllocator) {
  const std::unique_ptr<Ops> ops = NewCpuOps();
  EXPECT_EQ(ops->device(), Device::Cpu());
  EXPECT_EQ(ops->stream(), nullptr);
  EXPECT_TRUE(ops->Synchronize().ok());
  auto ptr = ops->allocator().Allocate(1000);
  ASSERT_TRUE(ptr.ok());
  static_cast<char*>(*ptr)[999] = 1;  // Host memory.
  ops->allocator().Free(*ptr);
  EXPECT_EQ(ops->allocator().stats().allocations, 1);
}

TEST(CpuOpsTest, CopiesAndZeroes) {
  const std::unique_ptr<Ops> ops = NewCpuOps();
  std::vector<char> a(37), b(37, 'x'), c(37);
  for (int i = 0; i < 37; ++i) a[i] = static_cast<char>(i + 1);
  ASSERT_TRUE(ops->CopyFromHost(b.data(), a.data(), 37).ok());
  ASSERT_TRUE(ops->Copy(c.data(), b.data(), 37).ok());
  ASSERT_TRUE(ops->SetZero(b.data() + 3, 5).ok());
  std::vector<char> back(37);
  ASSERT_TRUE(ops->CopyToHost(back.data(), c.data(), 37).ok());
  EXPECT_EQ(back, a);
  for (int i = 0; i < 37; ++i) EXPECT_EQ(b[i], i >= 3 && i < 8 ? 0 : a[i]) << i;
  EXPECT_TRUE(ops->Copy(nullptr, a.data(), 0).ok());  // Zero bytes: nothing to do.
  EXPECT_EQ(ops->Copy(nullptr, a.data(), 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ops->SetZero(nullptr, 1).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuOpsTest, CallsAreTheCpuTwins) {
  const std::unique_ptr<Ops> ops = NewCpuOps();
  std::mt19937 random(std::random_device{}());
  constexpr int64_t kRows = 9, kCols = 24, kOut = 16;
  const HostData x = RandomData(DType::kBF16, kRows * kCols, random, -1, 1);
  const HostData w = RandomData(DType::kBF16, kCols, random, 0.5, 1.5);
  const HostData dy = RandomData(DType::kBF16, kRows * kCols, random, -1, 1);
  const HostData lw = RandomData(DType::kBF16, kOut * kCols, random, -1, 1);
  HostData y1 = PoisonedData(DType::kBF16, kRows * kCols), y2 = y1, dx1 = y1, dx2 = y1;
  std::vector<float> rstd1(kRows), rstd2(kRows), dw1(kCols), dw2(kCols);
  RmsNormParams f{.dtype = DType::kBF16,
                  .x = x.data(),
                  .weight = w.data(),
                  .y = y1.data(),
                  .rstd = rstd1.data(),
                  .rows = kRows,
                  .cols = kCols};
  ASSERT_TRUE(RmsNormCpu(f).ok());
  f.y = y2.data();
  f.rstd = rstd2.data();
  ASSERT_TRUE(ops->RmsNorm(f).ok());
  EXPECT_EQ(y1.bytes, y2.bytes);
  RmsNormBackwardParams b{.dtype = DType::kBF16,
                          .dy = dy.data(),
                          .x = x.data(),
                          .weight = w.data(),
                          .rstd = rstd1.data(),
                          .dx = dx1.data(),
                          .dweight = dw1.data(),
                          .rows = kRows,
                          .cols = kCols};
  ASSERT_TRUE(RmsNormBackwardCpu(b).ok());
  b.dx = dx2.data();
  b.dweight = dw2.data();
  ASSERT_TRUE(ops->RmsNormBackward(b).ok());  // No workspace: the CPU needs none.
  EXPECT_EQ(dx1.bytes, dx2.bytes);
  EXPECT_EQ(dw1, dw2);
  HostData z1 = PoisonedData(DType::kBF16, kRows * kOut), z2 = z1;
  LinearParams l{.dtype = DType::kBF16,
                 .x = y1.data(),
                 .w = lw.data(),
                 .y = z1.data(),
                 .tokens = kRows,
                 .in = kCols,
                 .out = kOut};
  ASSERT_TRUE(LinearCpu(l).ok());
  l.y = z2.data();
  ASSERT_TRUE(ops->Linear(l).ok());
  EXPECT_EQ(z1.bytes, z2.bytes);
  EXPECT_FALSE(ops->Linear({.tokens = 1, .in = 1, .out = 1}).ok());  // Checks still apply.
}

}  // namespace
}  // namespace mimo::kernels
