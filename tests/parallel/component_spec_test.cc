// The component grammar NAME=tp=N[,pp=N,dp=N,cp=N,ep=N,etp=N,rank_offset=N] and its errors.
#include "parallel/component_spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mimo::parallel {
namespace {

using ::testing::HasSubstr;

std::string Error(absl::string_view text) {
  absl::StatusOr<ModuleParallelism> m = ParseComponent(text);
  EXPECT_FALSE(m.ok()) << text;
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(m.status().message());
}

TEST(ParseComponentTest, EveryKey) {
  absl::StatusOr<ModuleParallelism> m =
      ParseComponent("language=tp=2,pp=4,dp=8,cp=2,ep=16,etp=1,rank_offset=12");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->name, "language");
  EXPECT_EQ(m->tp, 2);
  EXPECT_EQ(m->pp, 4);
  EXPECT_EQ(m->dp, 8);
  EXPECT_EQ(m->cp, 2);
  EXPECT_EQ(m->ep, 16);
  EXPECT_EQ(m->etp, 1);
  EXPECT_EQ(m->rank_offset, 12);
}

TEST(ParseComponentTest, EmptyRestMeansDefaults) {
  absl::StatusOr<ModuleParallelism> m = ParseComponent("language=");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->name, "language");
  EXPECT_EQ(m->tp, 1);
  EXPECT_EQ(m->cp, 1);
  EXPECT_EQ(m->pp, 1);
  EXPECT_EQ(m->ep, 1);
  EXPECT_EQ(m->etp, 1);
  EXPECT_FALSE(m->dp.has_value());
  EXPECT_FALSE(m->rank_offset.has_value());
}

TEST(ParseComponentTest, TrimsAndSkipsEmptyTokens) {
  absl::StatusOr<ModuleParallelism> m = ParseComponent("  vision = tp = 4 ,, , dp=2 ,");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->name, "vision");
  EXPECT_EQ(m->tp, 4);
  EXPECT_EQ(m->dp, 2);
}

TEST(ParseComponentTest, NegativeValuesParseAndAreLeftToThePlanner) {
  absl::StatusOr<ModuleParallelism> m = ParseComponent("vision=tp=-2");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->tp, -2);
}

TEST(ParseComponentTest, Malformed) {
  EXPECT_EQ(Error("vision"),
            "component 'vision' is malformed: expected NAME=KEY=VALUE[,KEY=VALUE...], e.g. "
            "language=tp=2,ep=4");
  EXPECT_THAT(Error(""), HasSubstr("component '' is malformed"));
}

TEST(ParseComponentTest, EmptyName) {
  EXPECT_EQ(Error("=tp=2"), "component '=tp=2' has an empty module name");
  EXPECT_EQ(Error("  =tp=2"), "component '  =tp=2' has an empty module name");
}

TEST(ParseComponentTest, MalformedToken) {
  EXPECT_EQ(Error("vision=tp2"),
            "component 'vision=tp2': token 'tp2' is malformed: expected KEY=VALUE");
  EXPECT_EQ(Error("vision=tp=2,=4"),
            "component 'vision=tp=2,=4': token '=4' is malformed: expected KEY=VALUE");
}

TEST(ParseComponentTest, UnknownKeyListsSupportedKeys) {
  EXPECT_EQ(Error("vision=tp=2,sp=2"),
            "component 'vision=tp=2,sp=2': unknown key 'sp' (supported keys: tp, pp, dp, cp, ep, "
            "etp, vpp, rank_offset)");
}

TEST(ParseComponentTest, NonIntegerValue) {
  EXPECT_EQ(Error("vision=tp=two"),
            "component 'vision=tp=two': value 'two' of key 'tp' is not an integer");
  EXPECT_EQ(Error("vision=tp=2.5"),
            "component 'vision=tp=2.5': value '2.5' of key 'tp' is not an integer");
  EXPECT_EQ(Error("vision=dp="), "component 'vision=dp=': value '' of key 'dp' is not an integer");
  EXPECT_EQ(Error("vision=dp=99999999999"),
            "component 'vision=dp=99999999999': value '99999999999' of key 'dp' is not an "
            "integer");
}

TEST(ParseComponentTest, KeyGivenTwice) {
  EXPECT_EQ(Error("vision=tp=2,tp=4"), "component 'vision=tp=2,tp=4': key 'tp' is given twice");
}

TEST(ParseComponentTest, ReportsEveryBadToken) {
  const std::string error = Error("vision=tp=x,foo=1,dp");
  EXPECT_THAT(error, HasSubstr("value 'x' of key 'tp' is not an integer"));
  EXPECT_THAT(error, HasSubstr("unknown key 'foo'"));
  EXPECT_THAT(error, HasSubstr("token 'dp' is malformed"));
}

TEST(ParseComponentsTest, Several) {
  absl::StatusOr<std::vector<ModuleParallelism>> modules =
      ParseComponents({"vision=tp=2", "language=ep=4,rank_offset=2"});
  ASSERT_TRUE(modules.ok()) << modules.status();
  ASSERT_EQ(modules->size(), 2u);
  EXPECT_EQ((*modules)[0].name, "vision");
  EXPECT_EQ((*modules)[1].name, "language");
  EXPECT_EQ((*modules)[1].ep, 4);
}

TEST(ParseComponentsTest, NoComponent) {
  absl::StatusOr<std::vector<ModuleParallelism>> modules = ParseComponents({});
  ASSERT_FALSE(modules.ok());
  EXPECT_EQ(modules.status().message(),
            "no component given: pass at least one NAME=KEY=VALUE[,KEY=VALUE...], e.g. "
            "language=tp=2,ep=4");
}

TEST(ParseComponentsTest, ModuleGivenTwice) {
  absl::StatusOr<std::vector<ModuleParallelism>> modules =
      ParseComponents({"vision=tp=2", "language=", " vision =dp=2"});
  ASSERT_FALSE(modules.ok());
  EXPECT_EQ(modules.status().message(),
            "module 'vision' is given by two components ('vision=tp=2' and ' vision =dp=2')");
}

TEST(ParseComponentsTest, CollectsErrorsOfEveryComponent) {
  absl::StatusOr<std::vector<ModuleParallelism>> modules =
      ParseComponents({"vision", "audio=tp=q", "language="});
  ASSERT_FALSE(modules.ok());
  EXPECT_THAT(modules.status().message(), HasSubstr("component 'vision' is malformed"));
  EXPECT_THAT(modules.status().message(), HasSubstr("value 'q' of key 'tp'"));
}

}  // namespace
}  // namespace mimo::parallel
