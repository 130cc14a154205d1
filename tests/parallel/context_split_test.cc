// The load-balanced context split: chunks r and 2cp-1-r per member, every token on exactly one
// member, equal regions, causal work balanced, and the errors.
#include "parallel/context_split.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

namespace mimo::parallel {
namespace {

using ::testing::HasSubstr;

TEST(ContextSplitTest, TwoMembersHoldChunksRAnd3MinusR) {
  // Sequences of 8 and 4 tokens: chunks of 2 and 1.
  const std::vector<int32_t> lengths = {8, 4};
  auto r0 = ContextSplitRuns(lengths, 2, 0);
  ASSERT_TRUE(r0.ok()) << r0.status();
  EXPECT_EQ(*r0, (std::vector<TokenRun>{{.local = 0, .global = 0, .position = 0, .length = 2},
                                        {.local = 2, .global = 8, .position = 0, .length = 1},
                                        {.local = 3, .global = 6, .position = 6, .length = 2},
                                        {.local = 5, .global = 11, .position = 3, .length = 1}}));
  auto r1 = ContextSplitRuns(lengths, 2, 1);
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(GlobalTokensOf(*r1), (std::vector<int64_t>{2, 3, 9, 4, 5, 10}));
}

TEST(ContextSplitTest, OneMemberHoldsEverySequenceWhole) {
  auto runs = ContextSplitRuns(std::vector<int32_t>{3, 0, 5}, 1, 0);
  ASSERT_TRUE(runs.ok());
  EXPECT_EQ(GlobalTokensOf(*runs), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ((*runs)[2], (TokenRun{.local = 3, .global = 3, .position = 0, .length = 5}));
}

TEST(ContextSplitTest, EveryTokenOnceWithEqualRegionsAndBalancedCausalWork) {
  for (int size : {2, 3, 4}) {
    const std::vector<int32_t> lengths = {4 * size, 2 * size, 10 * size};
    std::vector<int> seen(16 * size, 0);
    int64_t work0 = -1;
    for (int rank = 0; rank < size; ++rank) {
      auto runs = ContextSplitRuns(lengths, size, rank);
      ASSERT_TRUE(runs.ok());
      ASSERT_EQ(runs->size(), 2 * lengths.size());
      const size_t n = lengths.size();
      int64_t work = 0;
      for (size_t i = 0; i < runs->size(); ++i) {
        const TokenRun& r = (*runs)[i];
        EXPECT_EQ(r.length, (*runs)[i % n].length);  // Region B repeats region A's shape.
        for (int64_t t = 0; t < r.length; ++t) {
          ++seen[r.global + t];
          work += r.position + t + 1;  // Keys a query sees under a causal mask.
        }
      }
      if (work0 < 0) work0 = work;
      EXPECT_EQ(work, work0) << "member " << rank << " of " << size;
    }
    for (int count : seen) EXPECT_EQ(count, 1);
  }
}

TEST(ContextSplitTest, RejectsUnpaddedSequencesAndBadMembers) {
  auto odd = ContextSplitRuns(std::vector<int32_t>{8, 6}, 2, 0);
  ASSERT_FALSE(odd.ok());
  EXPECT_THAT(odd.status().message(), HasSubstr("sequence 1 has 6 tokens"));
  EXPECT_THAT(odd.status().message(), HasSubstr("multiple of 4"));
  EXPECT_FALSE(ContextSplitRuns(std::vector<int32_t>{4}, 2, 2).ok());
  EXPECT_FALSE(ContextSplitRuns(std::vector<int32_t>{4}, 0, 0).ok());
  EXPECT_FALSE(ContextSplitRuns(std::vector<int32_t>{-1}, 1, 0).ok());
}

}  // namespace
}  // namespace mimo::parallel
