// mimo-coordinator's command line: bad values of --gpu-workers and of the durations exit 2 with a
// message naming the flag, and `--gpu-workers auto` asks the worker binary how many GPUs it can
// use.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace mimo::coordinator {
namespace {

using ::testing::HasSubstr;

std::string BinaryBesideUs(const std::string& name) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  return self.substr(0, self.rfind('/') + 1) + name;
}

// Runs mimo-coordinator with `flags` (shell words); returns its exit code and its output.
std::pair<int, std::string> RunCoordinator(const std::string& flags) {
  const std::string db = absl::StrCat(::testing::TempDir(), "/flags-", getpid(), ".db");
  const std::string command =
      absl::StrCat(BinaryBesideUs("mimo-coordinator"), " --listen 127.0.0.1:0 --metrics-listen '' ",
                   "--db ", db, " ", flags, " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buffer[256];
  while (pipe != nullptr && fgets(buffer, sizeof(buffer), pipe) != nullptr) out += buffer;
  const int status = pipe != nullptr ? pclose(pipe) : -1;
  std::filesystem::remove(db);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// A stand-in worker binary that prints `text` for --count-gpus.
std::string FakeWorker(const std::string& text) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/fake-worker-", getpid());
  std::ofstream(path) << "#!/bin/sh\necho '" << text << "'\n";
  std::filesystem::permissions(path, std::filesystem::perms::owner_all);
  return path;
}

TEST(CoordinatorFlagsTest, GpuWorkersOutOfRangeExitsTwo) {
  for (const char* value : {"0", "65", "two"}) {
    const auto [code, out] = RunCoordinator(absl::StrCat("--gpu-workers ", value));
    EXPECT_EQ(code, 2) << out;
    EXPECT_THAT(out, HasSubstr(absl::StrCat("--gpu-workers: expected a number in [1, 64] or "
                                            "'auto', got '",
                                            value, "'")));
  }
}

TEST(CoordinatorFlagsTest, BadDurationsExitTwoNamingTheFlag) {
  for (const char* flag : {"--finished-job-ttl", "--join-timeout", "--heartbeat-timeout"}) {
    for (const char* value : {"0s", "-5m", "soon"}) {
      const auto [code, out] = RunCoordinator(absl::StrCat(flag, " ", value));
      EXPECT_EQ(code, 2) << out;
      EXPECT_THAT(out, HasSubstr(absl::StrCat(flag, ": expected a positive duration")));
    }
  }
}

TEST(CoordinatorFlagsTest, GpuWorkersAutoNeedsACountFromTheWorker) {
  const auto [code, out] =
      RunCoordinator(absl::StrCat("--gpu-workers auto --worker-binary ", FakeWorker("lots")));
  EXPECT_EQ(code, 2) << out;
  EXPECT_THAT(out, HasSubstr("auto: could not count GPUs with"));
  EXPECT_THAT(out, HasSubstr("--count-gpus': lots"));
}

TEST(CoordinatorFlagsTest, GpuWorkersAutoWithNoGpuSaysSo) {
  const auto [code, out] =
      RunCoordinator(absl::StrCat("--gpu-workers auto --worker-binary ", FakeWorker("0")));
  EXPECT_EQ(code, 2) << out;
  EXPECT_THAT(out, HasSubstr("sees no CUDA device"));
}

TEST(CoordinatorFlagsTest, CpuAndGpuWorkersExcludeEachOther) {
  const auto [code, out] = RunCoordinator("--cpu-workers 2 --gpu-workers 2");
  EXPECT_EQ(code, 2) << out;
  EXPECT_THAT(out, HasSubstr("excludes"));
}

}  // namespace
}  // namespace mimo::coordinator
