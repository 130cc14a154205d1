// Dropout's CPU twin: kept elements scaled by 1/(1-p) and the rest zero, the kept share within
// 5 standard deviations of 1-p, the mask a function of (stream, offset + index) only (split calls
// equal one call; another kind, substream or seed gives another mask), p = 0 a copy, the backward
// against central differences, and argument errors.
#include "kernels/dropout.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "common/philox.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

// Whether stream element e is kept, straight from Philox.
bool Kept(const DropoutParams& p, uint64_t e) {
  const uint64_t b = e / 4;
  const PhiloxCounter bits =
      Philox4x32({static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), p.substream, p.kind},
                 {static_cast<uint32_t>(p.seed), static_cast<uint32_t>(p.seed >> 32)});
  return static_cast<float>(bits[e % 4] >> 8) * 0x1p-24f >= p.p;
}

class DropoutCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(DropoutCpuTest, KeepsTheStreamsElementsScaled) {
  const DType dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  const int64_t n = 1 << 20;
  const HostData x = RandomData(dtype, n, random, 0.5, 2);
  HostData y = PoisonedData(dtype, n);
  const DropoutParams p{.dtype = dtype,
                        .x = x.data(),
                        .y = y.data(),
                        .n = n,
                        .p = 0.3f,
                        .seed = 1234 + 2718,
                        .substream = 2,
                        .kind = 1,
                        .offset = 7};
  ASSERT_TRUE(DropoutCpu(p).ok());
  const std::vector<double> got = ValuesOf(dtype, y.bytes);
  int64_t kept = 0;
  const double bound = dtype == DType::kF32 ? 1e-7 : 4e-3;
  for (int64_t i = 0; i < n; ++i) {
    if (Kept(p, p.offset + i)) {
      ++kept;
      ASSERT_NEAR(got[i], x.exact[i] / 0.7, bound * got[i]) << i;
    } else {
      ASSERT_EQ(got[i], 0.0) << i;
    }
  }
  const double sigma = std::sqrt(n * 0.3 * 0.7);
  EXPECT_NEAR(static_cast<double>(kept), 0.7 * n, 5 * sigma);
}

INSTANTIATE_TEST_SUITE_P(DTypes, DropoutCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(DropoutCpuTest, TheMaskDependsOnTheStreamAndPositionOnly) {
  const int64_t n = 1003;
  std::vector<float> x(n, 1.0f), whole(n), split(n), other(n);
  DropoutParams p{.x = x.data(), .y = whole.data(), .n = n, .p = 0.5f, .seed = 99, .offset = 5};
  ASSERT_TRUE(DropoutCpu(p).ok());
  // Two calls over the halves, the second offset by the first's length: the same mask.
  DropoutParams first = p, second = p;
  first.y = split.data();
  first.n = 501;
  second.x = x.data() + 501;
  second.y = split.data() + 501;
  second.n = n - 501;
  second.offset = p.offset + 501;
  ASSERT_TRUE(DropoutCpu(first).ok());
  ASSERT_TRUE(DropoutCpu(second).ok());
  EXPECT_EQ(whole, split);
  // The backward (same op on dy, same stream and offset) drops the same elements.
  std::vector<float> dy(n, 3.0f), dx(n);
  DropoutParams back = p;
  back.x = dy.data();
  back.y = dx.data();
  ASSERT_TRUE(DropoutCpu(back).ok());
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(dx[i] == 0.0f, whole[i] == 0.0f) << i;
  // Another kind, substream or seed draws another mask.
  for (auto change :
       {+[](DropoutParams& q) { q.kind = 2; }, +[](DropoutParams& q) { q.substream = 1; },
        +[](DropoutParams& q) { q.seed = 100; }}) {
    DropoutParams q = p;
    q.y = other.data();
    change(q);
    ASSERT_TRUE(DropoutCpu(q).ok());
    EXPECT_NE(other, whole);
  }
  // p = 0 copies.
  DropoutParams copy = p;
  copy.p = 0.0f;
  copy.y = other.data();
  ASSERT_TRUE(DropoutCpu(copy).ok());
  EXPECT_EQ(other, x);
}

// L(x) = sum(y * u): the backward (the same op on u, same stream and offset) must equal central
// differences of L.
TEST(DropoutCpuGradientTest, BackwardMatchesCentralDifferences) {
  std::mt19937 random(19);
  const int64_t n = 40;
  const HostData x = RandomData(DType::kF32, n, random, -1, 1);
  const HostData u = RandomData(DType::kF32, n, random, -1, 1);
  const DropoutParams stream{.n = n, .p = 0.3f, .seed = 77, .substream = 2, .kind = 1, .offset = 5};
  auto forward = [&](const std::vector<float>& at) {
    std::vector<float> y(n);
    DropoutParams p = stream;
    p.x = at.data();
    p.y = y.data();
    EXPECT_TRUE(DropoutCpu(p).ok());
    return y;
  };
  std::vector<float> dx(n, std::nanf(""));
  DropoutParams back = stream;
  back.x = u.data();
  back.y = dx.data();
  ASSERT_TRUE(DropoutCpu(back).ok());
  ExpectCentralDifferences(x, u, dx, forward);
  // Some elements are dropped and some kept, so both kinds of gradient are checked.
  const std::vector<float> y = forward(std::vector<float>(x.exact.begin(), x.exact.end()));
  EXPECT_GT(std::count(y.begin(), y.end(), 0.0f), 0);
  EXPECT_LT(std::count(y.begin(), y.end(), 0.0f), n);
}

TEST(DropoutCpuTest, BadArgumentsAreNamed) {
  float buf[2] = {};
  EXPECT_THAT(DropoutCpu({.x = buf, .y = buf, .n = 2, .p = 1.0f}).message(),
              HasSubstr("p must be in [0, 1), got 1"));
  EXPECT_THAT(DropoutCpu({.x = buf, .y = buf, .n = 2, .p = -0.1f}).message(),
              HasSubstr("p must be in [0, 1)"));
  EXPECT_THAT(DropoutCpu({.x = buf, .y = buf, .n = 2, .offset = UINT64_MAX}).message(),
              HasSubstr("exceeds the stream"));
  EXPECT_THAT(DropoutCpu({.x = buf, .n = 2}).message(), HasSubstr("y is null"));
  EXPECT_TRUE(DropoutCpu({.n = 0}).ok());
}

}  // namespace
}  // namespace mimo::kernels
