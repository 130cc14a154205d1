// CLI11 checks of mimoctl's flags whose messages say what is allowed: the coordinator's address,
// and integers or numbers within a range.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/host_port.h"

namespace mimo::tools {

// How --server (or $MIMO_SERVER) is read (CheckHostPort): ports 1-65535.
inline constexpr HostPortRules kServerRules = {
    .name = "the coordinator address", .example = "localhost:50051", .ipv6_example = "[::1]:50051"};

// Checks --server (or $MIMO_SERVER) with CheckHostPort.
inline CLI::Validator ServerAddress() {
  return CLI::Validator(
      [](std::string& value) { return std::string(CheckHostPort(value, kServerRules).message()); },
      "");
}

// Checks that a job id is not empty: the coordinator's answer to an empty one reads "invalid job
// spec (1 problem)".
inline CLI::Validator JobId() {
  return CLI::Validator(
      [](std::string& value) { return value.empty() ? std::string("the job id is empty") : ""; },
      "");
}

// Checks that a flag is an integer in [min, max], read as CLI11 reads integers (strtoll, base 0)
// but refusing values beyond 64 bits, which strtoll clamps. Its message names the range.
inline CLI::Validator IntegerIn(int64_t min, int64_t max) {
  return CLI::Validator(
      [min, max](std::string& value) -> std::string {
        errno = 0;
        char* end = nullptr;
        const long long n = std::strtoll(value.c_str(), &end, 0);
        if (value.empty() || end != value.c_str() + value.size() || errno == ERANGE || n < min ||
            n > max) {
          return absl::StrCat("must be an integer in [", min, ", ", max, "], got '",
                              absl::CEscape(value), "'");
        }
        return "";
      },
      absl::StrCat("[", min, ", ", max, "]"));
}

// Checks that a flag is a finite number in [min, max]; `unit` ("seconds") names what it counts.
inline CLI::Validator NumberIn(double min, double max, absl::string_view unit) {
  return CLI::Validator(
      [min, max, unit = std::string(unit)](std::string& value) -> std::string {
        char* end = nullptr;
        const double x = std::strtod(value.c_str(), &end);
        if (value.empty() || end != value.c_str() + value.size() || !std::isfinite(x) || x < min ||
            x > max) {
          return absl::StrCat("must be a number of ", unit, " in [", min, ", ", max, "], got '",
                              absl::CEscape(value), "'");
        }
        return "";
      },
      absl::StrCat("[", min, ", ", max, "]"));
}

}  // namespace mimo::tools
