// FindGlooPairSockets and GlooPairWatcher on bare Gloo contexts connected over loopback.
#include "comm/gloo_pair_sockets.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "comm/in_memory_store.h"
#include "gloo/transport/pair.h"
#include "gloo/transport/tcp/address.h"
#include "tests/comm/gloo_contexts.h"

namespace mimo::comm {
namespace {

// The port of an IPv4 or IPv6 socket address.
int Port(const sockaddr_storage& address) {
  return address.ss_family == AF_INET6
             ? ntohs(reinterpret_cast<const sockaddr_in6&>(address).sin6_port)
             : ntohs(reinterpret_cast<const sockaddr_in&>(address).sin_port);
}

// The port of the local end of `peer`'s pair in `context`.
int PairPort(gloo::Context& context, int peer) {
  const auto& address =
      dynamic_cast<const gloo::transport::tcp::Address&>(context.getPair(peer)->address());
  return Port(address.getSockaddr());
}

TEST(FindGlooPairSocketsTest, FindsTheSocketOfEveryPair) {
  constexpr int kSize = 3;
  InMemoryStore store;
  auto contexts = ConnectGlooContexts(kSize, store, absl::Seconds(20));
  for (int rank = 0; rank < kSize; ++rank) {
    SCOPED_TRACE(::testing::Message() << "rank " << rank);
    const std::vector<GlooPairSocket> sockets = FindGlooPairSockets(*contexts[rank]);
    ASSERT_EQ(sockets.size(), kSize - 1u);
    int expected_peer = 0;
    for (const GlooPairSocket& socket : sockets) {
      if (expected_peer == rank) ++expected_peer;
      EXPECT_EQ(socket.peer, expected_peer++);
      EXPECT_TRUE(IsSameSocket(socket));
      // Both ends match: this end is the pair's, the other end the peer's pair for this rank.
      sockaddr_storage local, remote;
      socklen_t length = sizeof(local);
      ASSERT_EQ(getsockname(socket.fd, reinterpret_cast<sockaddr*>(&local), &length), 0);
      length = sizeof(remote);
      ASSERT_EQ(getpeername(socket.fd, reinterpret_cast<sockaddr*>(&remote), &length), 0);
      EXPECT_EQ(Port(local), PairPort(*contexts[rank], socket.peer));
      EXPECT_EQ(Port(remote), PairPort(*contexts[socket.peer], rank));
    }
  }
}

TEST(FindGlooPairSocketsTest, FindsNothingOfAContextNeverConnected) {
  gloo::rendezvous::Context context(0, 2);
  EXPECT_TRUE(FindGlooPairSockets(context).empty());
}

TEST(GlooPairWatcherTest, ReportsEachPeerWhoseConnectionCloses) {
  constexpr int kSize = 3;
  InMemoryStore store;
  auto contexts = ConnectGlooContexts(kSize, store, absl::Seconds(20));
  absl::Mutex mu;
  std::vector<int> closed;
  absl::Notification both_closed;
  absl::StatusOr<std::unique_ptr<GlooPairWatcher>> watcher =
      GlooPairWatcher::Start(*contexts[0], [&](int peer) {
        absl::MutexLock lock(&mu);
        closed.push_back(peer);
        if (closed.size() == 2) both_closed.Notify();
      });
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  // Rank 2 goes (its pairs close their sockets); rank 0's Gloo reads the end of file and fails
  // its pair; then rank 1 goes too.
  contexts[2].reset();
  contexts[1].reset();
  both_closed.WaitForNotification();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(closed.size(), 2u);
  EXPECT_NE(closed[0], closed[1]);
}

}  // namespace
}  // namespace mimo::comm
