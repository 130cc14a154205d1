// HOST:PORT addresses as the mimo programs take them on their command lines: checked before a
// channel is made or a port bound (gRPC alone printed raw log lines for an empty address, took the
// https port for one without a port and wrapped ports past 65535 around).
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace mimo {

// What CheckHostPort takes, and the examples its messages give.
struct HostPortRules {
  // Names the address in messages ("the coordinator address is empty").
  absl::string_view name = "the address";
  // A good address ("localhost:50051") and a good IPv6 one ("[::1]:50051").
  absl::string_view example;
  absl::string_view ipv6_example;
  // An address to listen on: port 0 (any free one) is taken, and a message for a port without a
  // host suggests every interface ("0.0.0.0:9464"). Else ports are 1-65535.
  bool listen = false;
  // Listening: ":PORT", with no host, is taken (every interface; the caller reads it so).
  bool any_host = false;
};

// OK when `address` is HOST:PORT: a host name or IPv4 address, or an IPv6 address in brackets
// ([::1]:50051), or no host where `rules.any_host`, and a port number (see HostPortRules::listen).
// InvalidArgument saying what is
// wrong otherwise ("'localhost' has no port; give HOST:PORT, e.g. localhost:50051"), the address
// quoted and C-escaped.
absl::Status CheckHostPort(absl::string_view address, const HostPortRules& rules);

}  // namespace mimo
