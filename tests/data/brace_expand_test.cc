// ExpandBraces: ranges (zero-padded, descending), lists, nesting, several groups, literal
// braces, errors.
#include "data/brace_expand.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mimo::data {
namespace {

using ::testing::ElementsAre;

std::vector<std::string> Expand(const std::string& pattern) {
  auto out = ExpandBraces(pattern);
  EXPECT_TRUE(out.ok()) << pattern << ": " << out.status();
  return out.ok() ? *out : std::vector<std::string>{};
}

TEST(BraceExpandTest, Ranges) {
  EXPECT_THAT(
      Expand("/d/shard-{000..003}.tar"),
      ElementsAre("/d/shard-000.tar", "/d/shard-001.tar", "/d/shard-002.tar", "/d/shard-003.tar"));
  EXPECT_EQ(Expand("s{0..099}").size(), 100u);
  EXPECT_EQ(Expand("s{0..099}")[7], "s007");
  EXPECT_EQ(Expand("s{000..099}").back(), "s099");
  EXPECT_THAT(Expand("{8..11}"), ElementsAre("8", "9", "10", "11"));
  EXPECT_THAT(Expand("{3..1}"), ElementsAre("3", "2", "1"));
  EXPECT_THAT(Expand("{-1..1}"), ElementsAre("-1", "0", "1"));
  EXPECT_THAT(Expand("{5..5}"), ElementsAre("5"));
}

TEST(BraceExpandTest, ListsNestingAndSeveralGroups) {
  EXPECT_THAT(Expand("/d/{train,val}.tar"), ElementsAre("/d/train.tar", "/d/val.tar"));
  EXPECT_THAT(Expand("{a,b}-{0..1}"), ElementsAre("a-0", "a-1", "b-0", "b-1"));
  EXPECT_THAT(Expand("x{a,{b,c}d,}y"), ElementsAre("xay", "xbdy", "xcdy", "xy"));
  EXPECT_THAT(Expand("{a,b{1..2}}"), ElementsAre("a", "b1", "b2"));
  EXPECT_THAT(Expand("plain.tar"), ElementsAre("plain.tar"));
  EXPECT_THAT(Expand("{x}-{1,2}"), ElementsAre("{x}-1", "{x}-2"));  // Literal braces stay.
  EXPECT_THAT(Expand("{1..a}"), ElementsAre("{1..a}"));
}

TEST(BraceExpandTest, Errors) {
  EXPECT_EQ(ExpandBraces("/d/{a,b").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ExpandBraces("/d/a}").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ExpandBraces("{0..9999999}").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ExpandBraces("{0..999}{0..999}{0..9}").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mimo::data
