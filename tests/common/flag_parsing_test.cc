// "--name=" with nothing after '=' gives an option the empty value, as "--name ''" does (CLI11 2.1
// alone takes the next argument as the value, or fails for want of one), for options of
// subcommands and option groups too (a flag's empty value is refused); unknown names and arguments
// after "--" are left alone.
#include "common/flag_parsing.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <sstream>
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
  EXPECT_THAT(Split(app_, {"prog", "--metrics-listen=", "--nope=", "--=", "-o="}),
              ElementsAre("prog", "--metrics-listen", "", "--nope=", "--=", "-o="));
  // The program's name, and what comes after "--", are no options.
  EXPECT_THAT(Split(app_, {"--db=", "plan", "--", "--component=", "--db="}),
              ElementsAre("--db=", "plan", "--", "--component=", "--db="));
  Parse({"plan", "--", "--component="});
  EXPECT_THAT(flags_.components, ElementsAre("default"));
  EXPECT_THAT(flags_.positionals, ElementsAre("--component="));
}

// The message of the CLI::ParseError that ParseFlags throws for `argv` after the program's name;
// "parsed" when none is thrown.
std::string ParseMessage(CLI::App& app, std::vector<const char*> argv) {
  argv.insert(argv.begin(), "prog");
  try {
    ParseFlags(app, static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    return e.what();
  }
  return "parsed";
}

// A mistyped command is named with the commands there are (CLI11 said "A subcommand is
// required"); without any, CLI11's message stands.
TEST(CommandParsingTest, AnUnknownCommandIsNamed) {
  CLI::App app;
  app.add_option("--server", [](const CLI::results_t&) { return true; });
  app.add_subcommand("list");
  app.add_subcommand("plan");
  app.require_subcommand(1);
  EXPECT_EQ(ParseMessage(app, {"lsit"}), "'lsit' is not a command; the commands are list, plan");
  EXPECT_EQ(ParseMessage(app, {"--server", "x", "lsit", "more"}),
            "'lsit' is not a command; the commands are list, plan");
  EXPECT_EQ(ParseMessage(app, {}), "A subcommand is required");
  EXPECT_EQ(ParseMessage(app, {"list"}), "parsed");
}

// A named option that must be an existing file refuses an empty value by name (CLI::ExistingFile
// said "File does not exist: " of "--tls-ca="); a positional one is left to its check.
TEST(EmptyFileTest, AnEmptyFileIsRefusedNamingTheFlag) {
  CLI::App app;
  std::string ca, spec;
  app.add_option("--tls-ca", ca)->check(CLI::ExistingFile);
  app.add_option("SPEC", spec)->check(CLI::ExistingFile);
  EXPECT_EQ(ParseMessage(app, {"--tls-ca="}),
            "--tls-ca: the value is empty; give a file, or leave the flag out for its default");
  EXPECT_EQ(ParseMessage(app, {"--tls-ca", ""}),
            "--tls-ca: the value is empty; give a file, or leave the flag out for its default");
  EXPECT_THAT(ParseMessage(app, {""}), ::testing::HasSubstr("File does not exist"));
}

// CLI11 reads a flag's empty value as set, so "--overwrite=$UNSET" overwrote: refused, naming the
// flag. A flag's explicit values are CLI11's.
TEST_F(FlagParsingTest, AFlagGivenAnEmptyValueIsRefused) {
  try {
    Parse({"--wait="});
    FAIL() << "accepted";
  } catch (const CLI::ValidationError& e) {
    EXPECT_STREQ(e.what(),
                 "--wait: the value is empty; give true or false, or leave the flag out for its "
                 "default");
  }
  EXPECT_FALSE(flags_.wait);
  Parse({"--wait=false"});
  EXPECT_FALSE(flags_.wait);
  Parse({"--wait=true"});
  EXPECT_TRUE(flags_.wait);
}

// An option that takes a number refuses an empty value, naming itself: CLI11 2.1 read "" as 0
// ("mimo-make-shards --seed ''" wrote seed 0's samples, "mimo-convert reshard --world=" took the
// default world), or said "Value  not in range" where the option had a range.
class EmptyNumberTest : public ::testing::Test {
 protected:
  EmptyNumberTest() {
    app_.add_option("--seed", seed_);
    app_.add_option("--count", count_)->check(CLI::Range(1, 10));
    app_.add_option("--bytes", bytes_);
    app_.add_option("--name", name_);
    app_.add_option_group("Timing")->add_option("--timeout", timeout_);
    CLI::App* run = app_.add_subcommand("run");
    run->add_option("--world", world_);
    run->add_option("--sizes", sizes_);
    run->callback([this] { ran_ = true; });
  }
  // The message of the CLI::ValidationError that parsing `argv` throws; "" if it parses.
  std::string Refusal(std::vector<const char*> argv) {
    argv.insert(argv.begin(), "prog");
    try {
      ParseFlags(app_, static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ValidationError& e) {
      EXPECT_EQ(app_.exit(e, null_, null_), static_cast<int>(CLI::ExitCodes::ValidationError));
      return e.what();
    }
    return "";
  }
  CLI::App app_;
  int64_t seed_ = 7;
  int count_ = 1;
  uint64_t bytes_ = 1;
  std::string name_ = "default";
  double timeout_ = 1.5;
  int world_ = 4;
  std::vector<int> sizes_;
  bool ran_ = false;
  std::ostringstream null_;
};

TEST_F(EmptyNumberTest, AnEmptyNumberIsRefusedNamingTheFlag) {
  for (const char* form : {"=", " "}) {
    SCOPED_TRACE(form);
    const auto refusal = [&](const std::vector<std::string>& words) {
      std::vector<std::string> argv;
      for (const std::string& word : words) {
        if (word.starts_with("--") && std::string(form) == " ") {
          argv.push_back(word);
          argv.emplace_back();  // "--seed ''".
        } else {
          argv.push_back(word + (word.starts_with("--") ? "=" : ""));
        }
      }
      std::vector<const char*> pointers;
      for (const std::string& a : argv) pointers.push_back(a.c_str());
      return Refusal(pointers);
    };
    EXPECT_EQ(refusal({"--seed"}),
              "--seed: the value is empty; give an integer, or leave the flag out for its default");
    EXPECT_EQ(
        refusal({"--count"}),  // Ahead of the range's "Value  not in range 1 to 10".
        "--count: the value is empty; give an integer, or leave the flag out for its default");
    EXPECT_EQ(
        refusal({"--bytes"}),
        "--bytes: the value is empty; give an integer, or leave the flag out for its default");
    EXPECT_EQ(
        refusal({"--timeout"}),
        "--timeout: the value is empty; give a number, or leave the flag out for its default");
    EXPECT_EQ(
        refusal({"run", "--world"}),
        "--world: the value is empty; give an integer, or leave the flag out for its default");
    EXPECT_EQ(
        refusal({"run", "--sizes"}),
        "--sizes: the value is empty; give an integer, or leave the flag out for its default");
  }
  EXPECT_FALSE(ran_);  // Refused before the subcommand's callback.
  EXPECT_EQ(seed_, 7);
}

TEST_F(EmptyNumberTest, OtherValuesAreLeftToTheirOptions) {
  EXPECT_EQ(Refusal({"--name="}), "");  // Text may be empty.
  EXPECT_EQ(name_, "");
  EXPECT_EQ(Refusal({"--seed", "0", "--count", "3", "--timeout=0.25", "run", "--world", "8"}), "");
  EXPECT_EQ(seed_, 0);
  EXPECT_EQ(count_, 3);
  EXPECT_EQ(timeout_, 0.25);
  EXPECT_EQ(world_, 8);
  EXPECT_TRUE(ran_);
  EXPECT_EQ(Refusal({"--count", "11"}), "--count: Value 11 not in range 1 to 10");
  // Parsed again, the check is not given twice (nor does it change the option's type in --help).
  EXPECT_EQ(Refusal({"--seed="}),
            "--seed: the value is empty; give an integer, or leave the flag out for its default");
  EXPECT_EQ(app_.get_option("--seed")->get_type_name(), "INT");
}

}  // namespace
}  // namespace mimo
