// Runs a job's ranks as threads of this process over Gloo and an in-memory store: each rank's
// assignment from the job's plan, its groups, then the test's body. A rank that fails aborts the
// groups of every other rank (so that none waits for it forever), and every rank's groups live
// until all bodies are done (a late abort must find them).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "coordinator/plan_proto.h"
#include "coordinator/spec_validation.h"
#include "mimo/v1/worker_service.pb.h"
#include "worker/group_specs.h"

namespace mimo::worker::testing {

struct PlanRanksOptions {
  // The groups of a rank's assignment; default: GroupSpecsOf(assignment.rank()).
  std::function<absl::StatusOr<std::vector<comm::GroupSpec>>(const v1::Assignment&)> group_specs;
  // Changes a rank's assignment before its groups are made; default: nothing.
  std::function<void(v1::Assignment&)> mutate;
  absl::Duration timeout = absl::Seconds(30);  // Of connecting and of every collective.
};

// What a rank runs once its groups are connected.
using PlanRankBody =
    std::function<absl::Status(int rank, const v1::Assignment& assignment,
                               comm::ProcessGroups& groups, comm::KeyValueStore& store)>;

// Every rank of `spec`'s plan (job "j-test", attempt 1); each rank's status: its groups' error,
// or its body's. Empty (and a test failure) when the spec does not plan.
inline std::vector<absl::Status> RunPlanRanks(const v1::JobSpec& spec, const PlanRankBody& body,
                                              const PlanRanksOptions& options = {}) {
  absl::StatusOr<parallel::RankPlan> plan = coordinator::ValidateJobSpec(spec, nullptr);
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) return {};
  const int world = plan->world_size();
  comm::InMemoryStore store;
  absl::Mutex mu;
  bool failed = false;
  int finished = 0;
  std::vector<comm::ProcessGroups*> live(world, nullptr);
  std::vector<absl::Status> statuses(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      v1::Assignment a;
      a.set_job_id("j-test");
      a.set_attempt(1);
      *a.mutable_spec() = spec;
      a.set_world_size(world);
      *a.mutable_rank() = coordinator::RankToProto(*plan, r);
      coordinator::ModulesToProto(*plan, a.mutable_modules());
      if (options.mutate) options.mutate(a);
      absl::StatusOr<std::vector<comm::GroupSpec>> specs =
          options.group_specs ? options.group_specs(a) : GroupSpecsOf(a.rank());
      std::unique_ptr<comm::ProcessGroups> groups;
      if (specs.ok()) {
        absl::StatusOr<std::unique_ptr<comm::ProcessGroups>> created =
            comm::ProcessGroups::CreateGloo(
                *specs, store, {.rank = r, .timeout = options.timeout, .hostname = "127.0.0.1"});
        if (created.ok()) {
          groups = *std::move(created);
        } else {
          statuses[r] = created.status();
        }
      } else {
        statuses[r] = specs.status();
      }
      if (groups != nullptr) {
        {
          absl::MutexLock lock(&mu);
          live[r] = groups.get();
          if (failed) groups->AbortAll();
        }
        statuses[r] = body(r, a, *groups, store);
      }
      absl::MutexLock lock(&mu);
      if (!statuses[r].ok()) {
        failed = true;
        for (comm::ProcessGroups* g : live) {
          if (g != nullptr) g->AbortAll();
        }
      }
      ++finished;
      auto all_finished = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return finished == world; };
      mu.Await(absl::Condition(&all_finished));
      live[r] = nullptr;
    });
  }
  for (std::thread& t : threads) t.join();
  return statuses;
}

}  // namespace mimo::worker::testing
