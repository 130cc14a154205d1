// MoE token dropping's CPU twin against ranks counted pair by pair (both policies, ties, pairs
// already dropped, capacities from 0 to above every load); Megatron's capacity formula;
// argument checks.
#include "kernels/moe_capacity.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/kernels/moe_capacity_reference.h"
#include "tests/kernels/moe_permute_reference.h"

namespace mimo::kernels {
namespace {

using testing::CapacityDropReference;
using testing::RandomRouting;

std::vector<int32_t> Drop(TokenDropPolicy policy, const std::vector<int32_t>& indices,
                          const std::vector<float>& probs, int64_t top_k, int64_t experts,
                          int64_t capacity) {
  std::vector<int32_t> kept(indices.size(), 7);
  const absl::Status s = MoeCapacityDropCpu({.policy = policy,
                                             .indices = indices.data(),
                                             .probs = probs.data(),
                                             .kept = kept.data(),
                                             .tokens = static_cast<int64_t>(indices.size()) / top_k,
                                             .top_k = top_k,
                                             .experts = experts,
                                             .capacity = capacity});
  EXPECT_TRUE(s.ok()) << s;
  return kept;
}

TEST(MoeCapacityTest, MatchesRanksCountedPairByPair) {
  std::mt19937 random(5);
  const int64_t tokens = 53, top_k = 3, experts = 6;
  const std::vector<int32_t> indices = RandomRouting(tokens, top_k, experts, 1.5, random, 0.1);
  // Weights on a coarse grid, so that ties are common.
  std::uniform_int_distribution<int> grid(0, 7);
  std::vector<float> probs(indices.size());
  for (float& p : probs) p = grid(random) / 8.0f;
  for (TokenDropPolicy policy : {TokenDropPolicy::kProbs, TokenDropPolicy::kPosition}) {
    for (int64_t capacity : {0, 1, 5, 17, 40, 1000}) {
      EXPECT_EQ(Drop(policy, indices, probs, top_k, experts, capacity),
                CapacityDropReference(policy, indices, probs, capacity))
          << static_cast<int>(policy) << " " << capacity;
    }
  }
}

TEST(MoeCapacityTest, KeepsTheHeaviestOrTheEarliest) {
  // Expert 0 gets pairs 0, 2, 3 (weights .1, .5, .5), expert 1 pair 1; capacity 2.
  const std::vector<int32_t> indices = {0, 1, 0, 0};
  const std::vector<float> probs = {0.1f, 0.9f, 0.5f, 0.5f};
  EXPECT_EQ(Drop(TokenDropPolicy::kProbs, indices, probs, 1, 2, 2),
            (std::vector<int32_t>{-1, 1, 0, 0}));
  EXPECT_EQ(Drop(TokenDropPolicy::kPosition, indices, probs, 1, 2, 2),
            (std::vector<int32_t>{0, 1, 0, -1}));
  EXPECT_EQ(Drop(TokenDropPolicy::kProbs, {}, {}, 2, 2, 2), std::vector<int32_t>{});
}

TEST(MoeCapacityTest, CapacityFollowsMegatron) {
  EXPECT_EQ(MoeExpertCapacity(4096, 2, 8, 1.0), 1024);
  EXPECT_EQ(MoeExpertCapacity(4096, 2, 8, 1.25), 1280);
  EXPECT_EQ(MoeExpertCapacity(100, 3, 7, 1.0), 43);  // ceil(300 / 7)
  EXPECT_EQ(MoeExpertCapacity(3, 1, 8, 1.0), 4);     // The minimum.
}

TEST(MoeCapacityTest, RejectsBadArguments) {
  std::vector<int32_t> indices = {0, 3}, kept(2);
  std::vector<float> probs = {1, 1};
  MoeCapacityDropParams p{.indices = indices.data(),
                          .probs = probs.data(),
                          .kept = kept.data(),
                          .tokens = 2,
                          .top_k = 1,
                          .experts = 2,
                          .capacity = 1};
  const absl::Status out_of_range = MoeCapacityDropCpu(p);
  EXPECT_EQ(out_of_range.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out_of_range.message().find("expert 3"), absl::string_view::npos);
  indices[1] = 1;
  EXPECT_TRUE(MoeCapacityDropCpu(p).ok());
  p.capacity = -1;
  EXPECT_EQ(MoeCapacityDropCpu(p).code(), absl::StatusCode::kInvalidArgument);
  p.capacity = 1;
  p.probs = nullptr;  // The weight policy needs them.
  EXPECT_EQ(MoeCapacityDropCpu(p).code(), absl::StatusCode::kInvalidArgument);
  p.policy = TokenDropPolicy::kPosition;
  EXPECT_TRUE(MoeCapacityDropCpu(p).ok());
}

}  // namespace
}  // namespace mimo::kernels
