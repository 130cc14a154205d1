// The programs built beside a test binary (build-dev/bin, or a relocated GPU bundle), and a way to
// run them through the shell: for tests of the programs' command lines.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>

namespace mimo::test_binaries {

// The program `name` in the folder of the running test binary.
inline std::string BinaryBesideUs(const std::string& name) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  return self.substr(0, self.rfind('/') + 1) + name;
}

// Runs `command` with `sh -c` (add "2>&1" for stderr too); returns its exit code (-1 when it did
// not exit normally, killed by a signal say) and what it printed on stdout.
inline std::pair<int, std::string> RunShell(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buffer[256];
  while (pipe != nullptr && fgets(buffer, sizeof(buffer), pipe) != nullptr) out += buffer;
  const int status = pipe != nullptr ? pclose(pipe) : -1;
  return {status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace mimo::test_binaries
