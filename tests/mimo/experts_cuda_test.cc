// Tests of mimo/experts.h on the CUDA ops against the CPU ops: per-expert GEMMs (one batch) and
// grouped GEMMs (cuBLASLt row tiles and mimo's weight-gradient kernel), skewed and balanced row
// counts, f32 and bf16.
#include <iostream>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda_ops.h"
#include "kernels/device_info.h"
#include "mimo/experts.h"
#include "tests/mimo/experts_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using testing::RelL2Check;
using testing::RunExperts;

class ExpertsCudaTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    const kernels::CudaDevices devices = kernels::ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }
};

TEST_P(ExpertsCudaTest, MatchTheCpuExperts) {
  const DType dtype = GetParam();
  const TransformerConfig config = testing::ExpertsConfig(dtype);
  auto cpu = kernels::NewCpuOps();
  auto gpu = kernels::NewCudaOps();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  // Same dtype on both sides: fp32 within 1e-5; bf16 within 2e-2 (h1 and the activation rounded
  // to bf16 from fp32 values that differ in the last bits).
  const double bound = dtype == DType::kF32 ? 1e-5 : 2e-2;
  const SequentialExpertsBuilder sequential;
  const GroupedExpertsBuilder grouped;
  for (const auto& [rows_name, counts] : {std::pair{"skewed", testing::SkewedExpertRows()},
                                          std::pair{"balanced", testing::BalancedExpertRows()}}) {
    const testing::ExpertsRun want = RunExperts(*cpu, config, sequential, counts);
    ASSERT_EQ(want.values.size(), 4u);
    for (const auto& [builder_name, builder] :
         {std::pair<const char*, const ExpertsBuilder*>{"per-expert", &sequential},
          std::pair<const char*, const ExpertsBuilder*>{"grouped", &grouped}}) {
      SCOPED_TRACE(absl::StrCat(rows_name, " rows, ", builder_name, " GEMMs"));
      const testing::ExpertsRun got = RunExperts(**gpu, config, *builder, counts);
      ASSERT_EQ(got.values.size(), want.values.size());
      RelL2Check check(bound);
      for (const auto& [name, values] : want.values) check(got.values.at(name), values, name);
      std::cout << rows_name << " rows, " << builder_name << " GEMMs, " << kernels::DTypeName(dtype)
                << ": " << check.Worst() << "\n";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ExpertsCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) {
                           return std::string(kernels::DTypeName(info.param));
                         });

}  // namespace
}  // namespace mimo
