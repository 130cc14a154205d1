// The fused QKV rows between mimo's order and Megatron's: the order for 4 heads in 2 groups, a
// permutation for every shape, runs that cover a range in mimo's order, and module sizes.
#include "tools/convert/qkv_layout.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>
#include <set>
#include <vector>

namespace mimo::tools {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

// Megatron's rows for 4 heads in 2 groups of width 1: q0 q1 k0 v0 q2 q3 k1 v1, where mimo has
// q0 q1 q2 q3 k0 k1 v0 v1.
TEST(QkvLayoutTest, InterleavesEachGroupsQueriesKeyAndValue) {
  const QkvShape s{.heads = 4, .groups = 2, .head_dim = 1};
  const std::vector<char> mimo = {'a', 'b', 'c', 'd', 'K', 'L', 'V', 'W'};  // q0..q3 k0 k1 v0 v1
  std::vector<char> megatron(8);
  ToMegatronOrder(s, 1, mimo.data(), megatron.data());
  EXPECT_EQ(std::string(megatron.begin(), megatron.end()), "abKVcdLW");
}

TEST(QkvLayoutTest, IsAPermutationThatKeepsEachHeadsRowsTogether) {
  for (const QkvShape s :
       {QkvShape{1, 1, 3}, QkvShape{4, 4, 2}, QkvShape{8, 2, 5}, QkvShape{6, 1, 4}}) {
    std::set<int64_t> seen;
    for (int64_t r = 0; r < s.rows(); ++r) {
      const int64_t m = MegatronRow(s, r);
      ASSERT_GE(m, 0);
      ASSERT_LT(m, s.rows());
      seen.insert(m);
      if (r % s.head_dim != 0) {
        EXPECT_EQ(m, MegatronRow(s, r - 1) + 1);
      }
    }
    EXPECT_EQ(static_cast<int64_t>(seen.size()), s.rows());
  }
}

TEST(QkvLayoutTest, RunsCoverARangeRowByRow) {
  const QkvShape s{.heads = 8, .groups = 2, .head_dim = 3};
  for (const auto& [first, count] :
       {std::pair<int64_t, int64_t>{0, 36}, {5, 20}, {24, 12}, {7, 1}}) {
    std::vector<int64_t> want, got;
    for (int64_t r = first; r < first + count; ++r) want.push_back(MegatronRow(s, r));
    for (const auto& [to, n] : MegatronRuns(s, first, count)) {
      for (int64_t i = 0; i < n; ++i) got.push_back(to + i);
    }
    EXPECT_EQ(got, want) << first << " " << count;
  }
  // The query heads of one group are one run; its key follows them in Megatron's order only.
  EXPECT_THAT(MegatronRuns(s, 0, 12), ElementsAre(Pair(0, 12)));
  EXPECT_THAT(MegatronRuns(s, 0, 15), ElementsAre(Pair(0, 12), Pair(18, 3)));
}

TEST(QkvLayoutTest, ShapesComeFromTheModulesTransformer) {
  v1::Module m;
  m.set_name("language");
  EXPECT_THAT(QkvShapeOf(m).status().message(), HasSubstr("has no model"));
  v1::Transformer* t = m.mutable_language()->mutable_transformer();
  t->set_hidden_size(64);
  t->set_num_attention_heads(4);
  absl::StatusOr<QkvShape> s = QkvShapeOf(m);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->groups, 4);  // Unset: one per head.
  EXPECT_EQ(s->head_dim, 16);
  t->set_num_query_groups(3);
  EXPECT_THAT(QkvShapeOf(m).status().message(), HasSubstr("do not split"));
}

}  // namespace
}  // namespace mimo::tools
