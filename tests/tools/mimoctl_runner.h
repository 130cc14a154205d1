// Runs the mimoctl built beside the test binary through the shell and captures its output.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/common/test_binaries.h"

namespace mimo::tools::testing {

struct MimoctlResult {
  int exit_code = -1;  // -1 when mimoctl did not exit normally.
  std::string out, err;
};

// mimoctl is built into the same folder as the tests (also inside a relocated GPU bundle).
inline std::string MimoctlPath() { return test_binaries::BinaryBesideUs("mimoctl"); }

// The path of examples/NAME: under the working folder when run from a checkout (as on a GPU host,
// where the sources moved), else beside this source file.
inline std::string ExampleSpec(const std::string& name) {
  const std::filesystem::path here = std::filesystem::current_path() / "examples" / name;
  if (std::filesystem::exists(here)) return here.string();
  return (std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "examples" /
          name)
      .string();
}

// Runs `mimoctl ARGS` (ARGS already shell-quoted). Stderr goes to a file of its own, so tests
// running in parallel never read each other's errors.
inline MimoctlResult RunMimoctl(const std::string& args) {
  std::string err_path = ::testing::TempDir() + "/mimoctl-stderr-XXXXXX";
  const int fd = mkstemp(err_path.data());
  EXPECT_GE(fd, 0) << "mkstemp " << err_path;
  if (fd >= 0) close(fd);
  MimoctlResult result;
  FILE* pipe = popen(absl::StrCat(MimoctlPath(), " ", args, " 2>", err_path).c_str(), "r");
  EXPECT_NE(pipe, nullptr) << "popen mimoctl";
  if (pipe == nullptr) return result;
  char buffer[65536];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.out.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::stringstream err;
  err << std::ifstream(err_path).rdbuf();
  result.err = err.str();
  std::remove(err_path.c_str());
  return result;
}

}  // namespace mimo::tools::testing
