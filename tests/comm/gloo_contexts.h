// Bare Gloo contexts over loopback, one per rank (a thread), for tests below the communicator.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "comm/gloo_communicator.h"
#include "comm/gloo_error.h"
#include "comm/gloo_store.h"
#include "comm/in_memory_store.h"
#include "gloo/rendezvous/context.h"
#include "tests/comm/run_ranks.h"

namespace mimo::comm {

// Connects ranks 0..n-1 of one context each (each with a device of its own, as in separate
// processes) through `store`; every wait of theirs times out after `timeout`.
inline std::vector<std::shared_ptr<gloo::rendezvous::Context>> ConnectGlooContexts(
    int n, InMemoryStore& store, absl::Duration timeout) {
  std::vector<std::shared_ptr<gloo::rendezvous::Context>> contexts(n);
  std::vector<absl::Status> statuses(n);
  RunRanks(n, [&](int rank) {
    absl::StatusOr<std::shared_ptr<gloo::transport::Device>> device =
        GlooCommunicator::CreateTcpDevice("127.0.0.1");
    statuses[rank] = device.status();
    if (!device.ok()) return;
    statuses[rank] = CallGloo([&] {
      GlooStore gloo_store(store, "test/", "test", timeout);
      auto context = std::make_shared<gloo::rendezvous::Context>(rank, n);
      context->setTimeout(std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
      context->connectFullMesh(gloo_store, *device);
      contexts[rank] = std::move(context);
    });
  });
  for (int rank = 0; rank < n; ++rank) EXPECT_TRUE(statuses[rank].ok()) << statuses[rank];
  return contexts;
}

}  // namespace mimo::comm
