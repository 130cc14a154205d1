// Tests of mimo/parameter.h: layout-independent initial values and parameter creation.
#include "mimo/parameter.h"

#include <cmath>

#include "common/bfloat16.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"

namespace mimo {
namespace {

using kernels::DType;

ParameterSpec Normal(const std::string& name, kernels::Shape shape, float std = 0.02f) {
  return {.name = name, .shape = std::move(shape), .init = InitKind::kNormal, .std = std};
}

TEST(InitialValuesTest, NormalHasTheRequestedMomentsAndIsDeterministic) {
  const ParameterSpec spec = Normal("decoder.layers.0.mlp.linear_fc1.weight", {301, 333}, 0.5f);
  const std::vector<float> v = InitialValues(spec, 1234);
  ASSERT_EQ(v.size(), 301u * 333u);
  double sum = 0, sum2 = 0, sum4 = 0;
  for (float x : v) {
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sum2 += static_cast<double>(x) * x;
    sum4 += static_cast<double>(x) * x * x * x;
  }
  const double n = static_cast<double>(v.size());
  const double var = sum2 / n;
  // ~100k samples: the mean within 4 standard errors, the variance within 2%, the normal's
  // kurtosis (3) within 5%.
  EXPECT_NEAR(sum / n, 0.0, 4 * 0.5 / std::sqrt(n));
  EXPECT_NEAR(std::sqrt(var), 0.5, 0.5 * 0.01);
  EXPECT_NEAR(sum4 / n / (var * var), 3.0, 0.15);
  EXPECT_EQ(InitialValues(spec, 1234), v);
}

TEST(InitialValuesTest, DependsOnSeedAndNameOnly) {
  const ParameterSpec a = Normal("a.weight", {4, 5});
  const std::vector<float> base = InitialValues(a, 7);
  EXPECT_NE(InitialValues(a, 8), base);
  EXPECT_NE(InitialValues(Normal("b.weight", {4, 5}), 7), base);
  // A longer tensor of the same name starts with the same values: element i depends on i alone.
  const std::vector<float> longer = InitialValues(Normal("a.weight", {5, 5}), 7);
  EXPECT_EQ(std::vector<float>(longer.begin(), longer.begin() + 20), base);
  // Odd element counts are filled to the end.
  const std::vector<float> odd = InitialValues(Normal("a.weight", {7}), 7);
  EXPECT_EQ(std::vector<float>(odd.begin(), odd.end()),
            std::vector<float>(base.begin(), base.begin() + 7));
}

TEST(InitialValuesTest, AShardHoldsItsSliceOfTheFullTensor) {
  const std::vector<float> full = InitialValues(Normal("experts.weight", {6, 5, 3}), 9);
  // Dimension 0 (experts over EP ranks): rows 2..3 of 6.
  ParameterSpec rows = Normal("experts.weight", {2, 5, 3});
  rows.shards = {{.dim = 0, .offset = 2, .full_size = 6}};
  EXPECT_EQ(InitialValues(rows, 9), std::vector<float>(full.begin() + 30, full.begin() + 60));
  // Dimension 1: columns 1..3 of 5 of every row (odd offsets and sizes cross Philox blocks).
  ParameterSpec cols = Normal("experts.weight", {6, 3, 3});
  cols.shards = {{.dim = 1, .offset = 1, .full_size = 5}};
  std::vector<float> want;
  for (int e = 0; e < 6; ++e) {
    want.insert(want.end(), full.begin() + e * 15 + 3, full.begin() + e * 15 + 12);
  }
  EXPECT_EQ(InitialValues(cols, 9), want);
  // Two dimensions at once, one of them in two blocks (SwiGLU's [gate; up] rows): experts 4..5,
  // and of the 4 rows of each, row 1 of the first pair and row 3 of the second.
  const std::vector<float> swiglu = InitialValues(Normal("fc1.weight", {6, 4, 3}), 9);
  ParameterSpec both = Normal("fc1.weight", {2, 2, 3});
  both.shards = {{.dim = 0, .offset = 4, .full_size = 6},
                 {.dim = 1, .offset = 1, .full_size = 4, .blocks = 2}};
  want.clear();
  for (int e = 4; e < 6; ++e) {
    for (int row : {1, 3}) {
      want.insert(want.end(), swiglu.begin() + (e * 4 + row) * 3,
                  swiglu.begin() + (e * 4 + row + 1) * 3);
    }
  }
  EXPECT_EQ(InitialValues(both, 9), want);
  // Ranges of unequal blocks (a fused [Q; K; V] weight of 4 + 2 + 2 rows over two tp ranks):
  // rank 1 holds rows 2..3, 5 and 7.
  const std::vector<float> qkv = InitialValues(Normal("qkv.weight", {8, 3}), 9);
  ParameterSpec part = Normal("qkv.weight", {4, 3});
  part.shards = {{.dim = 0, .full_size = 8, .ranges = {{2, 2}, {5, 1}, {7, 1}}}};
  want.clear();
  for (int row : {2, 3, 5, 7}) {
    want.insert(want.end(), qkv.begin() + row * 3, qkv.begin() + row * 3 + 3);
  }
  EXPECT_EQ(InitialValues(part, 9), want);
}

TEST(InitialValuesTest, LargeTensorsFilledInParallelMatchTheElementwiseValues) {
  // 9 M values: filled by several threads; a shard's values and a prefix of the whole tensor
  // (element i depends on i alone) tell whether each thread started at its own index.
  const ParameterSpec whole = Normal("big.weight", {3, 1000, 3001});
  const std::vector<float> v = InitialValues(whole, 11);
  EXPECT_EQ(std::vector<float>(v.begin(), v.begin() + 5000),
            InitialValues(Normal("big.weight", {5000}), 11));
  ParameterSpec tail = Normal("big.weight", {2, 1000, 3001});
  tail.shards = {{.dim = 0, .offset = 1, .full_size = 3}};
  EXPECT_EQ(InitialValues(tail, 11), std::vector<float>(v.begin() + 1000 * 3001, v.end()));
}

TEST(InitialValuesTest, OnesAndZeros) {
  EXPECT_EQ(InitialValues({.name = "n.weight", .shape = {3}, .init = InitKind::kOnes}, 1),
            std::vector<float>(3, 1.0f));
  EXPECT_EQ(InitialValues({.name = "n.bias", .shape = {2, 2}, .init = InitKind::kZeros}, 1),
            std::vector<float>(4, 0.0f));
}

TEST(ParameterTest, Fp32WeightIsTheMasterAndGradStartsAtZero) {
  auto ops = kernels::NewCpuOps();
  auto p = Parameter::Create(*ops, Normal("w", {3, 4}), DType::kF32, 9);
  ASSERT_TRUE(p.ok()) << p.status();
  Parameter& param = **p;
  EXPECT_EQ(param.numel(), 12);
  EXPECT_EQ(param.weight().data(), param.master().data());
  const std::vector<float> want = InitialValues(param.spec(), 9);
  EXPECT_EQ(std::vector<float>(param.master().data<float>(), param.master().data<float>() + 12),
            want);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(param.grad().data<float>()[i], 0.0f);
  param.grad().data<float>()[3] = 5;
  ASSERT_TRUE(param.ZeroGrad(*ops).ok());
  EXPECT_EQ(param.grad().data<float>()[3], 0.0f);
}

// ResetGrad zeroes a gradient unless the backward writes it whole; then it only marks it stale,
// once: the first writer takes the mark, a reader finding it still stale zeroes it.
TEST(ParameterTest, ResetGradMarksGradientsTheBackwardWritesWholeStale) {
  auto ops = kernels::NewCpuOps();
  auto p = Parameter::Create(*ops, Normal("w", {3, 4}), DType::kF32, 9);
  ASSERT_TRUE(p.ok()) << p.status();
  Parameter& param = **p;
  float* g = param.grad().data<float>();
  g[3] = 5;
  ASSERT_TRUE(param.ResetGrad(*ops).ok());
  EXPECT_EQ(g[3], 0.0f);
  EXPECT_FALSE(param.grad_stale());
  EXPECT_FALSE(param.TakeStaleGrad());

  param.set_backward_writes_whole_grad();
  g[3] = 5;
  ASSERT_TRUE(param.ResetGrad(*ops).ok());
  EXPECT_EQ(g[3], 5.0f);  // No memset.
  EXPECT_TRUE(param.grad_stale());
  EXPECT_TRUE(param.TakeStaleGrad());
  EXPECT_FALSE(param.TakeStaleGrad());
  ASSERT_TRUE(param.ZeroGradIfStale(*ops).ok());
  EXPECT_EQ(g[3], 5.0f);  // Written by its taker: left alone.

  ASSERT_TRUE(param.ResetGrad(*ops).ok());
  ASSERT_TRUE(param.ZeroGradIfStale(*ops).ok());
  EXPECT_EQ(g[3], 0.0f);
  EXPECT_FALSE(param.grad_stale());
}

TEST(ParameterTest, Bf16WeightIsTheRoundedMaster) {
  auto ops = kernels::NewCpuOps();
  auto p = Parameter::Create(*ops, Normal("w", {5}, 1.0f), DType::kBF16, 3);
  ASSERT_TRUE(p.ok()) << p.status();
  const Parameter& param = **p;
  ASSERT_NE(param.weight().data(), param.master().data());
  EXPECT_EQ(param.weight().dtype(), DType::kBF16);
  EXPECT_EQ(param.master().dtype(), DType::kF32);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(param.weight().data<uint16_t>()[i], FloatToBFloat16(param.master().data<float>()[i]));
  }
}

TEST(ParameterTest, RejectsBadSpecsAndDtypes) {
  auto ops = kernels::NewCpuOps();
  EXPECT_EQ(Parameter::Create(*ops, Normal("", {2}), DType::kF32, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Parameter::Create(*ops, Normal("w", {2, 0}), DType::kF32, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Parameter::Create(*ops, Normal("w", {}), DType::kF32, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Parameter::Create(*ops, Normal("w", {2}, 0.0f), DType::kF32, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  ParameterSpec outside = Normal("w", {2, 3});
  outside.shards = {{.dim = 0, .offset = 3, .full_size = 4}};  // Rows 3..4 of 4.
  const auto bad_shard = Parameter::Create(*ops, outside, DType::kF32, 1);
  EXPECT_EQ(bad_shard.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_shard.status().message().find("full size 4"), absl::string_view::npos);
  outside.shards = {{.dim = 2, .offset = 0, .full_size = 4}};
  EXPECT_EQ(Parameter::Create(*ops, outside, DType::kF32, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  outside.shards = {{.dim = 0, .offset = 0, .full_size = 4},
                    {.dim = 0, .offset = 0, .full_size = 4}};
  EXPECT_EQ(Parameter::Create(*ops, outside, DType::kF32, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  outside.shards = {{.dim = 0, .full_size = 4, .ranges = {{0, 1}, {3, 2}}}};  // Past the end.
  EXPECT_EQ(Parameter::Create(*ops, outside, DType::kF32, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  outside.shards = {{.dim = 0, .full_size = 4, .ranges = {{2, 1}, {1, 1}}}};  // Out of order.
  EXPECT_EQ(Parameter::Create(*ops, outside, DType::kF32, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  outside.shards = {{.dim = 0, .full_size = 4, .ranges = {{0, 1}}}};  // 1 row of the 2 held.
  EXPECT_EQ(Parameter::Create(*ops, outside, DType::kF32, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  const auto bad_dtype = Parameter::Create(*ops, Normal("w", {2}), DType::kI32, 1);
  EXPECT_EQ(bad_dtype.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_dtype.status().message().find("i32"), absl::string_view::npos);
}

}  // namespace
}  // namespace mimo
