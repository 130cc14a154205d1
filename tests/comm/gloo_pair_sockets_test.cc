// FindGlooPairSockets on bare Gloo contexts connected over loopback.
#include "comm/gloo_pair_sockets.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <memory>
#include <vector>

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
      // Found with the socket's device (the kernel's encoding, translated) and inode; another
      // device's file with that inode is not it.
      struct stat st;
      ASSERT_EQ(fstat(socket.fd, &st), 0);
      EXPECT_EQ(socket.dev, st.st_dev);
      EXPECT_EQ(socket.inode, st.st_ino);
      EXPECT_FALSE(IsSocketWithInode(socket.fd, socket.dev + 1, socket.inode));
      EXPECT_FALSE(IsSocketWithInode(socket.fd, socket.dev, socket.inode + 1));
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

TEST(FindGlooPairSocketsTest, ThisProcessCanFindThem) {
  const absl::Status findable = CheckGlooPairSocketsFindable();
  EXPECT_TRUE(findable.ok()) << findable;
}

TEST(FindGlooPairSocketsTest, FindsNothingOfAContextNeverConnected) {
  gloo::rendezvous::Context context(0, 2);
  EXPECT_TRUE(FindGlooPairSockets(context).empty());
}

}  // namespace
}  // namespace mimo::comm
