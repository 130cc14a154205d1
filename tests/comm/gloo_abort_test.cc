// Scratch experiment (to be replaced by the real regression test).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "comm/collective_check.h"
#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "tests/comm/run_ranks.h"

namespace mimo::comm {
namespace {

TEST(GlooAbortExperiment, AbortMidLoop) {
  const int n = getenv("N") ? atoi(getenv("N")) : 2;
  const int trials = getenv("T") ? atoi(getenv("T")) : 40;
  std::mt19937 rng(42);
  int slow = 0;
  for (int trial = 0; trial < trials; ++trial) {
    InMemoryStore store;
    std::vector<int> members(n);
    std::iota(members.begin(), members.end(), 0);
    std::vector<std::unique_ptr<ProcessGroups>> groups(n);
    RunRanks(n, [&](int rank) {
      auto created = ProcessGroups::CreateGloo({{.kind = "world", .members = members}}, store,
                                               {.rank = rank, .timeout = absl::Seconds(5),
                                                .hostname = "127.0.0.1"});
      ASSERT_TRUE(created.ok()) << created.status();
      groups[rank] = *std::move(created);
    });
    std::vector<absl::Time> ended(n);
    std::vector<absl::Status> st(n);
    std::atomic<absl::Time*> abort_time{nullptr};
    absl::Time at;
    std::thread aborter([&] {
      absl::SleepFor(absl::Milliseconds(20 + rng() % 60));
      at = absl::Now();
      groups[trial % n]->AbortAll();
    });
    RunRanks(n, [&](int rank) {
      absl::Status s;
      while (s.ok()) s = CheckCollectives(*groups[rank]->Get("world"), rank, "world");
      st[rank] = s;
      ended[rank] = absl::Now();
    });
    aborter.join();
    for (int r = 0; r < n; ++r) {
      const absl::Duration d = ended[r] - at;
      if (d > absl::Seconds(2)) {
        ++slow;
        printf("trial %d rank %d (aborted %d) took %s: %s\n", trial, r, trial % n,
               absl::FormatDuration(d).c_str(), std::string(st[r].message()).c_str());
      }
    }
  }
  EXPECT_EQ(slow, 0);
}

}  // namespace
}  // namespace mimo::comm
