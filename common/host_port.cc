// HOST:PORT addresses as the mimo programs take them on their command lines.
#include "common/host_port.h"

#include <algorithm>
#include <string>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace mimo {
namespace {

// What to give instead of an address without a host: to listen, every interface on its port
// (`port`, or the example's when it is not a number); to connect, `give`.
std::string NoHost(absl::string_view port, const HostPortRules& rules, const std::string& give) {
  if (!rules.listen) return give;
  if (port.empty() || !absl::c_all_of(port, absl::ascii_isdigit)) {
    const absl::string_view example = rules.example;
    port = example.substr(std::min(example.size(), example.rfind(':') + 1));
  }
  return absl::StrCat("give ", rules.any_host ? absl::StrCat(":", port, " or ") : "",
                      "0.0.0.0:", port, " (every interface), or HOST:PORT");
}

}  // namespace

absl::Status CheckHostPort(absl::string_view address, const HostPortRules& rules) {
  const std::string give = absl::StrCat("give HOST:PORT, e.g. ", rules.example,
                                        rules.listen ? " (port 0: any free one)" : "");
  if (address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(rules.name, " is empty; ", give));
  }
  const std::string quoted = absl::StrCat("'", absl::CEscape(address), "'");
  absl::string_view host;
  absl::string_view port;
  if (address.front() == '[') {
    const size_t close = address.find(']');
    if (close == absl::string_view::npos || close + 1 >= address.size() ||
        address[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat(quoted, " is not [IPV6]:PORT; ", give));
    }
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
    for (char c : host) {
      if (!absl::ascii_isxdigit(c) && c != ':' && c != '.') {
        return absl::InvalidArgumentError(
            absl::StrCat(quoted, ": '", absl::CEscape(host), "' is not an IPv6 address"));
      }
    }
  } else {
    const size_t colon = address.rfind(':');
    if (colon == absl::string_view::npos) {
      if (absl::c_all_of(address, absl::ascii_isdigit)) {  // A port alone.
        return absl::InvalidArgumentError(
            absl::StrCat(quoted, " has no host; ", NoHost(address, rules, give)));
      }
      return absl::InvalidArgumentError(absl::StrCat(quoted, " has no port; ", give));
    }
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (absl::StrContains(host, ':')) {
      return absl::InvalidArgumentError(
          absl::StrCat(quoted, ": an IPv6 address goes in brackets, e.g. ", rules.ipv6_example));
    }
    for (char c : host) {
      if (!absl::ascii_isalnum(c) && c != '.' && c != '-' && c != '_') {
        return absl::InvalidArgumentError(
            absl::StrCat(quoted, ": '", absl::CEscape(host), "' is not a host name or IP address"));
      }
    }
  }
  if (host.empty() && !(rules.any_host && address.front() == ':')) {
    return absl::InvalidArgumentError(
        absl::StrCat(quoted, " has no host; ", NoHost(port, rules, give)));
  }
  const int min_port = rules.listen ? 0 : 1;
  int value = 0;
  for (char c : port) {
    if (!absl::ascii_isdigit(c) || value > 65535) {
      value = -1;
      break;
    }
    value = value * 10 + (c - '0');
  }
  if (port.empty() || value < min_port || value > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(quoted, ": the port must be a number in ",
                                                   min_port, "-65535, got '", absl::CEscape(port),
                                                   "'"));
  }
  return absl::OkStatus();
}

}  // namespace mimo
