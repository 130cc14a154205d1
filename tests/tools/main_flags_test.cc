// mimo-convert's and mimo-make-shards' command lines: "--flag=" (nothing after '=') gives a flag
// the empty value, as "--flag ''" does (CLI11 alone refused it or took the next argument for it).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/common/test_binaries.h"

namespace mimo::tools {
namespace {

using test_binaries::BinaryBesideUs;
using test_binaries::RunShell;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// Runs the program `name` built beside this test with `args` (shell words); returns its exit code
// and its output (stdout and stderr).
std::pair<int, std::string> RunProgram(const std::string& name, const std::string& args) {
  return RunShell(absl::StrCat(BinaryBesideUs(name), " ", args, " 2>&1"));
}

// `flag` given empty after '=' and as '' (each before `rest`) exits the same, non-zero, with the
// same output; a message of CLI11 that misses the value (or names a value taken from `rest`)
// differs.
void ExpectEmptyAfterEqualsIsEmpty(const std::string& program, const std::string& before,
                                   const std::string& flag, const std::string& rest) {
  SCOPED_TRACE(absl::StrCat(program, " ", before, " ", flag));
  const auto [code, out] = RunProgram(program, absl::StrCat(before, " ", flag, "= ", rest));
  const auto [code_with_space, out_with_space] =
      RunProgram(program, absl::StrCat(before, " ", flag, " '' ", rest));
  EXPECT_NE(code, 0) << out;
  EXPECT_EQ(code, code_with_space);
  EXPECT_EQ(out, out_with_space);
  EXPECT_THAT(out, Not(HasSubstr("missing")));
}

TEST(ConvertFlagsTest, AnEmptyValueAfterEqualsIsAnEmptyValue) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/convert-flags-", getpid());
  // --from is read as the empty path and refused by name, where CLI11 took --to for it and then
  // wanted --to (and the empty path then said "cannot list : ").
  const auto [code, out] = RunProgram("mimo-convert", absl::StrCat("export --from= --to ", dir));
  EXPECT_EQ(code, 1) << out;
  EXPECT_EQ(out, "error: --from is empty: give it a path\n");
  ExpectEmptyAfterEqualsIsEmpty("mimo-convert", "export", "--from", absl::StrCat("--to ", dir));
  ExpectEmptyAfterEqualsIsEmpty("mimo-convert", absl::StrCat("export --from ", dir), "--to", "");
  ExpectEmptyAfterEqualsIsEmpty("mimo-convert", absl::StrCat("export --from ", dir),
                                "--max-shard-bytes", absl::StrCat("--to ", dir));
  ExpectEmptyAfterEqualsIsEmpty("mimo-convert", "reshard", "--from",
                                absl::StrCat("--to ", dir, " --component language=tp=1"));
  ExpectEmptyAfterEqualsIsEmpty("mimo-convert", absl::StrCat("reshard --from ", dir), "--component",
                                absl::StrCat("--to ", dir));
  ExpectEmptyAfterEqualsIsEmpty("mimo-convert", "import", "--spec",
                                absl::StrCat("--from ", dir, " --to ", dir));
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(MakeShardsFlagsTest, AnEmptyValueAfterEqualsIsAnEmptyValue) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/make-shards-flags-", getpid());
  // The empty count is refused as such, where CLI11 took OUT_DIR for it.
  const auto [code, out] = RunProgram("mimo-make-shards", absl::StrCat("--samples= ", dir));
  EXPECT_EQ(code, 2) << out;
  EXPECT_THAT(out, StartsWith("--samples: the value is empty; give an integer"));
  for (const char* flag : {"--samples", "--shards", "--image-size", "--mel-bins",
                           "--frames-per-token", "--max-frames"}) {
    ExpectEmptyAfterEqualsIsEmpty("mimo-make-shards", "", flag, dir);
  }
  EXPECT_FALSE(std::filesystem::exists(dir));  // Every one was refused before writing.
}

constexpr char kEmptyInteger[] =
    ": the value is empty; give an integer, or leave the flag out for its default";

// Every number flag given an empty value is a usage error naming it, in both forms: CLI11 alone
// read "--seed ''" as seed 0 (and "--world ''" as the default world), silently.
TEST(MakeShardsFlagsTest, AnEmptyNumberIsAUsageError) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/make-shards-empty-", getpid());
  for (const char* flag : {"--seed", "--samples", "--shards", "--image-size", "--mel-bins",
                           "--frames-per-token", "--max-frames"}) {
    for (const char* empty : {" ''", "="}) {
      SCOPED_TRACE(absl::StrCat(flag, empty));
      const auto [code, out] = RunProgram("mimo-make-shards", absl::StrCat(flag, empty, " ", dir));
      EXPECT_EQ(code, 2) << out;
      EXPECT_THAT(out, StartsWith(absl::StrCat(flag, kEmptyInteger)));
    }
  }
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(ConvertFlagsTest, AnEmptyNumberIsAUsageError) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/convert-empty-", getpid());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {absl::StrCat("export --from ", dir, " --to ", dir, " --max-shard-bytes"),
       "--max-shard-bytes"},
      {absl::StrCat("reshard --from ", dir, " --to ", dir, " --component language=tp=1 --world"),
       "--world"},
      {absl::StrCat("import --from ", dir, " --to ", dir, " --spec ", dir, " --world"), "--world"},
  };
  for (const auto& [args, flag] : cases) {
    for (const char* empty : {" ''", "="}) {
      SCOPED_TRACE(absl::StrCat(args, empty));
      const auto [code, out] = RunProgram("mimo-convert", absl::StrCat(args, empty));
      EXPECT_EQ(code, 2) << out;
      EXPECT_THAT(out, StartsWith(absl::StrCat(flag, kEmptyInteger)));
    }
  }
  EXPECT_FALSE(std::filesystem::exists(dir));
}

}  // namespace
}  // namespace mimo::tools
