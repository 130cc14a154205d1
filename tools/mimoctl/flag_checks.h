// CLI11 checks of mimoctl's flags whose messages say what is allowed: the coordinator's address,
// and integers or numbers within a range.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace mimo::tools {

// Empty when `address` is HOST:PORT: a host name or IPv4 address, or an IPv6 address in brackets
// ([::1]:50051), and a port in 1-65535. Otherwise what is wrong with it.
inline std::string ServerAddressProblem(absl::string_view address) {
  constexpr absl::string_view kExample = "give HOST:PORT, e.g. localhost:50051";
  if (address.empty()) return absl::StrCat("the coordinator address is empty; ", kExample);
  const std::string quoted = absl::StrCat("'", absl::CEscape(address), "'");
  absl::string_view host;
  absl::string_view port;
  if (address.front() == '[') {
    const size_t close = address.find(']');
    if (close == absl::string_view::npos || close + 1 >= address.size() ||
        address[close + 1] != ':') {
      return absl::StrCat(quoted, " is not [IPV6]:PORT; ", kExample);
    }
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
    for (char c : host) {
      if (!absl::ascii_isxdigit(c) && c != ':' && c != '.') {
        return absl::StrCat(quoted, ": '", absl::CEscape(host), "' is not an IPv6 address");
      }
    }
  } else {
    const size_t colon = address.rfind(':');
    if (colon == absl::string_view::npos) return absl::StrCat(quoted, " has no port; ", kExample);
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (host.find(':') != absl::string_view::npos) {
      return absl::StrCat(quoted, ": an IPv6 address goes in brackets, e.g. [::1]:50051");
    }
    for (char c : host) {
      if (!absl::ascii_isalnum(c) && c != '.' && c != '-' && c != '_') {
        return absl::StrCat(quoted, ": '", absl::CEscape(host),
                            "' is not a host name or IP address");
      }
    }
  }
  if (host.empty()) return absl::StrCat(quoted, " has no host; ", kExample);
  int value = 0;
  for (char c : port) {
    if (!absl::ascii_isdigit(c) || value > 65535) {
      value = -1;
      break;
    }
    value = value * 10 + (c - '0');
  }
  if (port.empty() || value < 1 || value > 65535) {
    return absl::StrCat(quoted, ": the port must be a number in 1-65535, got '",
                        absl::CEscape(port), "'");
  }
  return "";
}

// Checks --server (or $MIMO_SERVER) with ServerAddressProblem.
inline CLI::Validator ServerAddress() {
  return CLI::Validator([](std::string& value) { return ServerAddressProblem(value); }, "");
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
