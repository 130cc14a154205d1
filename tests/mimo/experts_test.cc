// Tests of mimo/experts.h on the CPU ops: per-expert GEMMs and grouped GEMMs compute the same rows
// alike, for skewed and for balanced row counts.
#include "mimo/experts.h"

#include "gtest/gtest.h"
#include "tests/mimo/experts_test_util.h"

namespace mimo {
namespace {

using testing::BalancedExpertRows;
using testing::ExpertsConfig;
using testing::RunExperts;
using testing::SkewedExpertRows;

// On the CPU every row's product is computed alone, so per-expert products and the grouped GEMM's
// groups give equal outputs, input gradients and weight gradients.
TEST(ExpertsTest, PerExpertGemmsEqualGroupedGemms) {
  auto ops = kernels::NewCpuOps();
  const TransformerConfig config = ExpertsConfig(kernels::DType::kF32);
  for (const auto& counts : {SkewedExpertRows(), BalancedExpertRows()}) {
    const testing::ExpertsRun sequential =
        RunExperts(*ops, config, SequentialExpertsBuilder(), counts);
    const testing::ExpertsRun grouped = RunExperts(*ops, config, GroupedExpertsBuilder(), counts);
    ASSERT_EQ(sequential.values.size(), 4u);
    EXPECT_EQ(sequential.values, grouped.values);
  }
}

}  // namespace
}  // namespace mimo
