// LayerNorm's CPU twin: forward and backward against float64 on fresh random inputs (with an
// offset, so the mean matters) and odd shapes (f32 relative error < 2e-6, bf16 < 1e-2; dx
// relative to its cancelling terms), poisoned outputs fully written, the backward against central
// differences, and argument errors.
#include "kernels/layernorm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "tests/kernels/layernorm_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class LayerNormCpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(LayerNormCpuTest, MatchesFloat64ForwardAndBackward) {
  const DType dtype = GetParam();
  const double bound = dtype == DType::kF32 ? 2e-6 : 1e-2;
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 random(seed);
  for (const auto& [rows, cols] :
       {std::pair<int64_t, int64_t>{1, 2}, {3, 7}, {17, 255}, {64, 1000}, {5, 4099}}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " (" << rows << ", " << cols << ")");
    const int64_t n = rows * cols;
    // Rows whose values all lie close together are ill-conditioned (x - mean cancels): redraw
    // until every row spans at least 1, so the bounds measure the kernel, not the draw.
    HostData x = RandomData(dtype, n, random, 2, 5);
    auto spread_ok = [&](const HostData& d) {
      for (int64_t r = 0; r < rows; ++r) {
        const auto [lo, hi] =
            std::minmax_element(d.exact.begin() + r * cols, d.exact.begin() + (r + 1) * cols);
        if (*hi - *lo < 1.0) return false;
      }
      return true;
    };
    while (!spread_ok(x)) x = RandomData(dtype, n, random, 2, 5);
    HostData w = RandomData(dtype, cols, random, 0.5, 1.5);
    HostData b = RandomData(dtype, cols, random, -1, 1);
    HostData dy = RandomData(dtype, n, random, -1, 1);
    HostData y = PoisonedData(dtype, n), dx = PoisonedData(dtype, n);
    std::vector<float> mean(rows, std::nanf("")), rstd(rows, std::nanf(""));
    std::vector<float> dweight(cols, std::nanf("")), dbias(cols, std::nanf(""));
    ASSERT_TRUE(LayerNormCpu({.dtype = dtype,
                              .x = x.data(),
                              .weight = w.data(),
                              .bias = b.data(),
                              .y = y.data(),
                              .mean = mean.data(),
                              .rstd = rstd.data(),
                              .rows = rows,
                              .cols = cols})
                    .ok());
    ASSERT_TRUE(LayerNormBackwardCpu({.dtype = dtype,
                                      .dy = dy.data(),
                                      .x = x.data(),
                                      .weight = w.data(),
                                      .mean = mean.data(),
                                      .rstd = rstd.data(),
                                      .dx = dx.data(),
                                      .dweight = dweight.data(),
                                      .dbias = dbias.data(),
                                      .rows = rows,
                                      .cols = cols})
                    .ok());
    const auto ref = LayerNormFloat64(x.exact, w.exact, b.exact, dy.exact, rows, cols, 1e-5);
    const std::vector<double> got_y = ValuesOf(dtype, y.bytes), got_dx = ValuesOf(dtype, dx.bytes);
    const std::vector<double> got_dw(dweight.begin(), dweight.end()),
        got_db(dbias.begin(), dbias.end()), got_rstd(rstd.begin(), rstd.end());
    ASSERT_TRUE(AllFinite(got_y) && AllFinite(got_dx) && AllFinite(got_dw) && AllFinite(got_db));
    EXPECT_LT(RelativeError(got_y, ref.y), bound);
    EXPECT_LT(RelativeError(got_rstd, ref.rstd), 2e-6);
    EXPECT_LT(RelativeError(got_dx, ref.dx, ref.dx_scale), bound);
    EXPECT_LT(RelativeError(got_dw, ref.dweight), 2e-6);
    EXPECT_LT(RelativeError(got_db, ref.dbias), 2e-6);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, LayerNormCpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// L = sum(y * u): the backward with dy = u must equal central differences of L in x, weight
// and bias.
TEST(LayerNormCpuGradientTest, BackwardMatchesCentralDifferences) {
  std::mt19937 random(13);
  const int64_t rows = 3, cols = 6;
  auto floats = [](const HostData& h) {
    return std::vector<float>(h.exact.begin(), h.exact.end());
  };
  std::vector<float> x = floats(RandomData(DType::kF32, rows * cols, random, -2, 2));
  std::vector<float> w = floats(RandomData(DType::kF32, cols, random, 0.5, 1.5));
  std::vector<float> b = floats(RandomData(DType::kF32, cols, random, -1, 1));
  const std::vector<float> u = floats(RandomData(DType::kF32, rows * cols, random, -1, 1));
  auto loss = [&](const std::vector<float>& xv, const std::vector<float>& wv,
                  const std::vector<float>& bv) {
    std::vector<float> y(rows * cols), mean(rows), rstd(rows);
    EXPECT_TRUE(LayerNormCpu({.x = xv.data(),
                              .weight = wv.data(),
                              .bias = bv.data(),
                              .y = y.data(),
                              .mean = mean.data(),
                              .rstd = rstd.data(),
                              .rows = rows,
                              .cols = cols})
                    .ok());
    double l = 0;
    for (int64_t i = 0; i < rows * cols; ++i) l += static_cast<double>(y[i]) * u[i];
    return l;
  };
  std::vector<float> y(rows * cols), mean(rows), rstd(rows), dx(rows * cols), dw(cols), db(cols);
  ASSERT_TRUE(LayerNormCpu({.x = x.data(),
                            .weight = w.data(),
                            .bias = b.data(),
                            .y = y.data(),
                            .mean = mean.data(),
                            .rstd = rstd.data(),
                            .rows = rows,
                            .cols = cols})
                  .ok());
  ASSERT_TRUE(LayerNormBackwardCpu({.dy = u.data(),
                                    .x = x.data(),
                                    .weight = w.data(),
                                    .mean = mean.data(),
                                    .rstd = rstd.data(),
                                    .dx = dx.data(),
                                    .dweight = dw.data(),
                                    .dbias = db.data(),
                                    .rows = rows,
                                    .cols = cols})
                  .ok());
  constexpr float h = 1e-2f;
  auto numeric = [&](std::vector<float>& v, size_t i) {
    const float keep = v[i];
    v[i] = keep + h;
    const double plus = loss(x, w, b);
    v[i] = keep - h;
    const double minus = loss(x, w, b);
    v[i] = keep;
    return (plus - minus) / (2 * h);
  };
  for (size_t i = 0; i < x.size(); ++i) {
    const double n = numeric(x, i);
    EXPECT_NEAR(dx[i], n, 3e-3 + 3e-3 * std::abs(n)) << "x[" << i << "]";
  }
  for (size_t c = 0; c < w.size(); ++c) {
    const double nw = numeric(w, c), nb = numeric(b, c);
    EXPECT_NEAR(dw[c], nw, 3e-3 + 3e-3 * std::abs(nw)) << "w[" << c << "]";
    EXPECT_NEAR(db[c], nb, 3e-3 + 3e-3 * std::abs(nb)) << "b[" << c << "]";
  }
}

TEST(LayerNormCpuTest, BadArgumentsAreNamed) {
  float buf[4] = {};
  EXPECT_THAT(
      LayerNormCpu(
          {.x = buf, .weight = buf, .y = buf, .mean = buf, .rstd = buf, .rows = 1, .cols = 4})
          .message(),
      HasSubstr("bias is null"));
  EXPECT_THAT(LayerNormCpu({.rows = 1, .cols = 4, .eps = -1}).message(),
              HasSubstr("eps must be positive"));
  EXPECT_THAT(LayerNormBackwardCpu({.dtype = DType::kI64, .rows = 1, .cols = 1}).message(),
              HasSubstr("LayerNormBackward: dtype i64 is not supported"));
  float dw[2] = {1, 1}, db[2] = {1, 1};
  EXPECT_TRUE(LayerNormBackwardCpu({.dweight = dw, .dbias = db, .rows = 0, .cols = 2}).ok());
  EXPECT_EQ(dw[1], 0.0f);
  EXPECT_EQ(db[1], 0.0f);
}

}  // namespace
}  // namespace mimo::kernels
