// "--name=" with nothing after '=' gives an option the empty value, as "--name ''" does (CLI11 2.1
// alone takes the next argument as the value, or fails for want of one), for options of
// subcommands and option groups too; flags, unknown names and arguments after "--" are left alone.
#include "common/flag_parsing.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mimo {
namespace {

using ::testing::ElementsAre;

std::vector<std::string> Split(const CLI::App& app, const std::vector<const char*>& argv) {
  return SplitEmptyEqualsValues(app, static_cast<int>(argv.size()), argv.data());
}

struct Flags {
  std::string listen = "0.0.0.0:9464";
  std::string db = "default.db";
  std::vector<std::string> components = {"default"};
  bool wait = false;
  std::vector<std::string> positionals;
};

// A program like the mimo ones: top-level options and flags, an option group,
// and a subcommand with options of its own.
class FlagParsingTest : public ::testing::Test {
 protected:
  FlagParsingTest() {
    app_.add_option("--metrics-listen", flags_.listen);
    app_.add_flag("--wait", flags_.wait);
    app_.add_option_group("Connection")->add_option("--db", flags_.db);
    CLI::App* plan = app_.add_subcommand("plan");
    plan->add_option("--component", flags_.components);
    plan->add_option("REST", flags_.positionals);
  }
  void Parse(std::vector<const char*> argv) {
    argv.insert(argv.begin(), "prog");
    ParseFlags(app_, static_cast<int>(argv.size()), argv.data());
  }
  CLI::App app_;
  Flags flags_;
};

TEST_F(FlagParsingTest, AnEmptyValueAfterEqualsIsTheEmptyValue) {
  Parse({"--metrics-listen="});
  EXPECT_EQ(flags_.listen, "");
}

TEST_F(FlagParsingTest, TheNextArgumentIsNotTakenAsTheValue) {
  Parse({"--metrics-listen=", "--db", "x.db"});
  EXPECT_EQ(flags_.listen, "");
  EXPECT_EQ(flags_.db, "x.db");
  Parse({"--metrics-listen=", "--db="});
  EXPECT_EQ(flags_.listen, "");
  EXPECT_EQ(flags_.db, "");
}

TEST_F(FlagParsingTest, OptionGroupsAndSubcommandsAreSearched) {
  Parse({"--db=", "plan", "--component="});
  EXPECT_EQ(flags_.db, "");
  EXPECT_THAT(flags_.components, ElementsAre(""));
}

TEST_F(FlagParsingTest, ValuesAfterEqualsAreKept) {
  Parse({"--metrics-listen=127.0.0.1:0", "--db=a=", "plan", "--component=vision=tp=2"});
  EXPECT_EQ(flags_.listen, "127.0.0.1:0");
  EXPECT_EQ(flags_.db, "a=");
  EXPECT_THAT(flags_.components, ElementsAre("vision=tp=2"));
}

TEST_F(FlagParsingTest, OnlyOptionsThatTakeAValueAreSplit) {
  EXPECT_THAT(Split(app_, {"prog", "--metrics-listen=", "--wait=", "--nope=", "--=", "-o="}),
              ElementsAre("prog", "--metrics-listen", "", "--wait=", "--nope=", "--=", "-o="));
  // The program's name, and what comes after "--", are no options.
  EXPECT_THAT(Split(app_, {"--db=", "plan", "--", "--component=", "--db="}),
              ElementsAre("--db=", "plan", "--", "--component=", "--db="));
  Parse({"plan", "--", "--component="});
  EXPECT_THAT(flags_.components, ElementsAre("default"));
  EXPECT_THAT(flags_.positionals, ElementsAre("--component="));
}

TEST_F(FlagParsingTest, AFlagGivenAnEmptyValueIsLeftToCli11) {
  Parse({"--wait="});  // CLI11 reads an empty flag value as the flag's default: set.
  EXPECT_TRUE(flags_.wait);
}

}  // namespace
}  // namespace mimo
