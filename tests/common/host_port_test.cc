// HOST:PORT checks of the command lines: one function for mimoctl's --server (ports 1-65535) and
// mimo-coordinator's --listen and --metrics-listen (port 0: any free one), each with its own
// wording and examples.
#include "common/host_port.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace mimo {
namespace {

constexpr HostPortRules kConnect = {
    .name = "the coordinator address", .example = "localhost:50051", .ipv6_example = "[::1]:50051"};
constexpr HostPortRules kListen = {.name = "the address",
                                   .example = "0.0.0.0:50051",
                                   .ipv6_example = "[::]:50051",
                                   .listen = true};

TEST(CheckHostPortTest, GoodAddressesAreTaken) {
  for (const char* address : {"localhost:50051", "127.0.0.1:1", "[::1]:65535", "[::]:8080",
                              "my-host_1.example.com:443", "10.0.0.1:09"}) {
    SCOPED_TRACE(address);
    EXPECT_TRUE(CheckHostPort(address, kConnect).ok());
    EXPECT_TRUE(CheckHostPort(address, kListen).ok());
  }
}

TEST(CheckHostPortTest, PortZeroIsOnlyForListening) {
  EXPECT_TRUE(CheckHostPort("0.0.0.0:0", kListen).ok());
  EXPECT_EQ(CheckHostPort("localhost:0", kConnect).message(),
            "'localhost:0': the port must be a number in 1-65535, got '0'");
}

TEST(CheckHostPortTest, MessagesSayWhatIsWrongWithTheCallersExamples) {
  const std::vector<std::pair<std::string, std::string>> connect = {
      {"", "the coordinator address is empty; give HOST:PORT, e.g. localhost:50051"},
      {"localhost", "'localhost' has no port; give HOST:PORT, e.g. localhost:50051"},
      {":50051", "':50051' has no host; give HOST:PORT, e.g. localhost:50051"},
      {"localhost:99999", "'localhost:99999': the port must be a number in 1-65535, got '99999'"},
      {"localhost:", "'localhost:': the port must be a number in 1-65535, got ''"},
      {"h:1x", "'h:1x': the port must be a number in 1-65535, got '1x'"},
      {"::1:50051", "'::1:50051': an IPv6 address goes in brackets, e.g. [::1]:50051"},
      {"[::1]", "'[::1]' is not [IPV6]:PORT; give HOST:PORT, e.g. localhost:50051"},
      {"[g::1]:1", "'[g::1]:1': 'g::1' is not an IPv6 address"},
      {"a b:1", "'a b:1': 'a b' is not a host name or IP address"},
      {"a\nb:1", "'a\\nb:1': 'a\\nb' is not a host name or IP address"},
  };
  for (const auto& [address, message] : connect) {
    SCOPED_TRACE(address);
    const absl::Status status = CheckHostPort(address, kConnect);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(status.message(), message);
  }
  EXPECT_EQ(CheckHostPort("", kListen).message(),
            "the address is empty; give HOST:PORT, e.g. 0.0.0.0:50051 (port 0: any free one)");
  EXPECT_EQ(CheckHostPort("::1:0", kListen).message(),
            "'::1:0': an IPv6 address goes in brackets, e.g. [::]:50051");
  EXPECT_EQ(CheckHostPort("127.0.0.1:65536", kListen).message(),
            "'127.0.0.1:65536': the port must be a number in 0-65535, got '65536'");
}

// To listen, a port without a host is answered with every interface on that port; ":PORT" itself
// is taken only where the caller reads it so (the coordinator's metrics: gRPC takes no address
// without a host).
TEST(CheckHostPortTest, AListenPortWithoutAHostSuggestsEveryInterface) {
  HostPortRules any_host = kListen;
  any_host.example = "0.0.0.0:9464";
  any_host.any_host = true;
  EXPECT_TRUE(CheckHostPort(":9464", any_host).ok());
  EXPECT_TRUE(CheckHostPort(":0", any_host).ok());
  EXPECT_TRUE(CheckHostPort("0.0.0.0:9464", any_host).ok());
  EXPECT_EQ(CheckHostPort("9464", any_host).message(),
            "'9464' has no host; give :9464 or 0.0.0.0:9464 (every interface), or HOST:PORT");
  EXPECT_EQ(CheckHostPort(":", any_host).message(),
            "':': the port must be a number in 0-65535, got ''");
  EXPECT_EQ(CheckHostPort("[]:9464", any_host).message(),
            "'[]:9464' has no host; give :9464 or 0.0.0.0:9464 (every interface), or HOST:PORT");
  EXPECT_EQ(CheckHostPort("50051", kListen).message(),
            "'50051' has no host; give 0.0.0.0:50051 (every interface), or HOST:PORT");
  EXPECT_EQ(CheckHostPort(":8080", kListen).message(),
            "':8080' has no host; give 0.0.0.0:8080 (every interface), or HOST:PORT");
  EXPECT_EQ(CheckHostPort(":x", kListen).message(),  // The example's port, not 'x'.
            "':x' has no host; give 0.0.0.0:50051 (every interface), or HOST:PORT");
  EXPECT_EQ(CheckHostPort("50051", kConnect).message(),
            "'50051' has no host; give HOST:PORT, e.g. localhost:50051");
}

}  // namespace
}  // namespace mimo
