// MoE token dropping's CUDA kernels against the CPU twin (itself checked against ranks counted
// pair by pair): equal outputs for both policies, Mixtral-like, fine-grained and skewed routing,
// weights with ties, pairs already dropped, capacities from 0 to above every load, no tokens;
// outputs poisoned first. Skips without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/moe_capacity.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/moe_permute_reference.h"

namespace mimo::kernels {
namespace {

using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct CapacityCase {
  const char* name;
  int64_t tokens, top_k, experts;
  double skew, dropped, factor;
  int grid;  // Weights on a grid of this many steps (ties), 0: continuous.
};

void PrintTo(const CapacityCase& c, std::ostream* os) { *os << c.name; }

class MoeCapacityCudaTest : public ::testing::TestWithParam<CapacityCase> {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }
};

template <typename T>
std::vector<char> Raw(const std::vector<T>& v) {
  std::vector<char> out(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

TEST_P(MoeCapacityCudaTest, EqualToTheCpuTwin) {
  const CapacityCase& k = GetParam();
  std::mt19937 random(21);
  const std::vector<int32_t> indices =
      RandomRouting(k.tokens, k.top_k, k.experts, k.skew, random, k.dropped);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::vector<float> probs(indices.size());
  for (float& p : probs) {
    p = k.grid > 0 ? static_cast<float>(static_cast<int>(uniform(random) * k.grid)) / k.grid
                   : uniform(random);
  }
  const int64_t pairs = k.tokens * k.top_k;
  const int64_t base = MoeExpertCapacity(k.tokens, k.top_k, k.experts, k.factor);
  DeviceBuffer d_indices(Raw(indices)), d_probs(Raw(probs));
  const size_t workspace_bytes = MoeCapacityDropWorkspaceBytes(pairs, k.experts);
  DeviceBuffer workspace(workspace_bytes);
  for (TokenDropPolicy policy : {TokenDropPolicy::kProbs, TokenDropPolicy::kPosition}) {
    // ... and no limit at all: INT64_MAX keeps every pair (the launcher clamps it to the pairs).
    for (int64_t capacity :
         {int64_t{0}, base / 2, base, 4 * base + 100, std::numeric_limits<int64_t>::max()}) {
      MoeCapacityDropParams p{.policy = policy,
                              .probs = probs.data(),
                              .tokens = k.tokens,
                              .top_k = k.top_k,
                              .experts = k.experts,
                              .capacity = capacity};
      std::vector<int32_t> want(pairs);
      p.indices = indices.data();
      p.kept = want.data();
      ASSERT_TRUE(MoeCapacityDropCpu(p).ok());
      DeviceBuffer d_kept(pairs * sizeof(int32_t));
      // Poisoned with 0x7f7f7f7f, not the buffer's usual 0xff bytes: -1 is a valid output.
      ASSERT_EQ(cudaMemset(d_kept.get(), 0x7f, pairs * sizeof(int32_t)), cudaSuccess);
      p.indices = d_indices.as<int32_t>();
      p.probs = d_probs.as<float>();
      p.kept = d_kept.as<int32_t>();
      p.workspace = workspace.get();
      p.workspace_bytes = workspace_bytes;
      ASSERT_TRUE(LaunchMoeCapacityDrop(p, nullptr).ok());
      EXPECT_EQ(d_kept.Bytes(), Raw(want))
          << "policy " << static_cast<int>(policy) << ", capacity " << capacity;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MoeCapacityCudaTest,
    ::testing::Values(CapacityCase{"MixtralBalanced", 8192, 2, 8, 0.0, 0.0, 1.0, 0},
                      CapacityCase{"FineGrainedZipfTies", 4097, 6, 64, 1.2, 0.0, 1.25, 16},
                      CapacityCase{"ManyExpertsSkewedDropped", 3001, 8, 128, 2.0, 0.2, 1.0, 0},
                      CapacityCase{"ThousandExperts", 2000, 8, 1000, 1.0, 0.1, 1.0, 4},
                      CapacityCase{"OneToken", 1, 1, 3, 0.0, 0.0, 1.0, 0},
                      CapacityCase{"NoTokens", 0, 2, 4, 0.0, 0.0, 1.0, 0}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace mimo::kernels
