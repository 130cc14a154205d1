// The 1F1B schedule: every stage forwards and backwards each micro-batch once, in Megatron's
// order (warm-up forwards, then one forward and one backward, then cool-down backwards), and a
// simulation of every stage at once with blocking sends (a send completes only together with the
// neighbour's matching receive) runs to the end for many shapes: no deadlock, every transfer
// paired with the same micro-batch on both sides. The interleaved schedule likewise, over 2-4
// ranks of 2-3 chunks, with its simulated bubble within the formula's.
#include "mimo/pipeline_schedule.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

namespace mimo {
namespace {

using A = PipelineAction;

std::string Name(const A& a) {
  static const char* kNames[] = {"RecvAct", "F", "SendAct", "RecvGrad", "B", "SendGrad"};
  return std::string(kNames[a.kind]) + std::to_string(a.micro_batch);
}

// Runs every stage's actions with rendezvous transfers; returns the number of actions left
// undone (0: all ran) and records the order of compute actions per stage.
int64_t Simulate(const std::vector<std::vector<A>>& plan) {
  const int stages = static_cast<int>(plan.size());
  std::vector<size_t> at(stages, 0);
  auto current = [&](int s) -> const A* {
    return at[s] < plan[s].size() ? &plan[s][at[s]] : nullptr;
  };
  bool progress = true;
  while (progress) {
    progress = false;
    for (int s = 0; s < stages; ++s) {
      const A* a = current(s);
      if (a == nullptr) continue;
      if (a->kind == A::kForward || a->kind == A::kBackward) {
        ++at[s];
        progress = true;
        continue;
      }
      // A transfer pairs with the neighbour's current action.
      const int peer = a->kind == A::kSendActivation || a->kind == A::kRecvGradient ? s + 1 : s - 1;
      const A::Kind want = a->kind == A::kSendActivation   ? A::kRecvActivation
                           : a->kind == A::kRecvActivation ? A::kSendActivation
                           : a->kind == A::kSendGradient   ? A::kRecvGradient
                                                           : A::kSendGradient;
      EXPECT_TRUE(peer >= 0 && peer < stages) << "stage " << s << " " << Name(*a);
      if (peer < 0 || peer >= stages) return -1;
      const A* b = current(peer);
      if (b != nullptr && b->kind == want) {
        EXPECT_EQ(b->micro_batch, a->micro_batch) << "stage " << s << " " << Name(*a);
        ++at[s];
        ++at[peer];
        progress = true;
      }
    }
  }
  int64_t left = 0;
  for (int s = 0; s < stages; ++s) left += static_cast<int64_t>(plan[s].size() - at[s]);
  return left;
}

TEST(PipelineScheduleTest, EveryShapeRunsToTheEndWithBlockingSends) {
  for (int stages = 1; stages <= 6; ++stages) {
    for (int64_t m = 1; m <= 9; ++m) {
      SCOPED_TRACE(::testing::Message() << stages << " stages, " << m << " micro-batches");
      std::vector<std::vector<A>> plan;
      for (int s = 0; s < stages; ++s) {
        auto actions = OneForwardOneBackward(s, stages, m);
        ASSERT_TRUE(actions.ok()) << actions.status();
        // Each micro-batch forwarded once and then backwarded once; the forwards and backwards
        // each in order; at most stages - s forwards outstanding (1F1B's memory bound).
        int64_t forwards = 0, backwards = 0;
        for (const A& a : *actions) {
          if (a.kind == A::kForward) {
            EXPECT_EQ(a.micro_batch, forwards++);
            EXPECT_LE(forwards - backwards, stages - s);
          }
          if (a.kind == A::kBackward) {
            EXPECT_EQ(a.micro_batch, backwards++);
            EXPECT_LT(a.micro_batch, forwards);
          }
          if (s == 0) {
            EXPECT_TRUE(a.kind != A::kRecvActivation && a.kind != A::kSendGradient);
          }
          if (s == stages - 1) {
            EXPECT_TRUE(a.kind != A::kSendActivation && a.kind != A::kRecvGradient);
          }
        }
        EXPECT_EQ(forwards, m);
        EXPECT_EQ(backwards, m);
        plan.push_back(*std::move(actions));
      }
      EXPECT_EQ(Simulate(plan), 0);
    }
  }
}

TEST(PipelineScheduleTest, MegatronsOrderOnTwoStages) {
  // Stage 0 of 2 over 3 micro-batches: one warm-up forward, then F1 B0, F2 B1, then B2.
  auto first = OneForwardOneBackward(0, 2, 3);
  ASSERT_TRUE(first.ok());
  std::string order;
  for (const A& a : *first) order += Name(a) + " ";
  EXPECT_EQ(order, "F0 SendAct0 F1 SendAct1 RecvGrad0 B0 F2 SendAct2 RecvGrad1 B1 RecvGrad2 B2 ");
  auto last = OneForwardOneBackward(1, 2, 3);
  ASSERT_TRUE(last.ok());
  order.clear();
  for (const A& a : *last) order += Name(a) + " ";
  EXPECT_EQ(order, "RecvAct0 F0 B0 RecvAct1 SendGrad0 F1 B1 RecvAct2 SendGrad1 F2 B2 SendGrad2 ");
}

TEST(PipelineScheduleTest, BubbleFractionAndBadArguments) {
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(1, 8), 0.0);
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(2, 8), 1.0 / 9.0);
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(4, 4), 3.0 / 7.0);
  EXPECT_EQ(OneForwardOneBackward(2, 2, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OneForwardOneBackward(0, 2, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OneForwardOneBackward(-1, 2, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

// Interleaved: every rank's actions run with rendezvous transfers (a send completes together with
// its receive on rank s + 1 or s - 1, mod the ranks), each pair on the same micro-batch and the
// adjacent virtual stage; forwards taking 1 time unit and backwards 2 (transfers instant), the
// returned share of the makespan the idlest rank waits.
struct InterleavedRun {
  int64_t left = 0;  // Actions not run (0: all ran).
  double bubble = 0;
};

InterleavedRun RunInterleaved(const std::vector<std::vector<A>>& plan) {
  const int p = static_cast<int>(plan.size());
  std::vector<size_t> at(p, 0);
  std::vector<double> clock(p, 0), busy(p, 0);
  auto current = [&](int s) -> const A* {
    return at[s] < plan[s].size() ? &plan[s][at[s]] : nullptr;
  };
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < p; ++s) {
      const A* a = current(s);
      if (a == nullptr) continue;
      if (a->kind == A::kForward || a->kind == A::kBackward) {
        const double cost = a->kind == A::kForward ? 1 : 2;
        clock[s] += cost;
        busy[s] += cost;
        ++at[s];
        progress = true;
        continue;
      }
      const bool up = a->kind == A::kSendActivation || a->kind == A::kRecvGradient;
      const int peer = (s + (up ? 1 : p - 1)) % p;
      const A::Kind want = a->kind == A::kSendActivation   ? A::kRecvActivation
                           : a->kind == A::kRecvActivation ? A::kSendActivation
                           : a->kind == A::kSendGradient   ? A::kRecvGradient
                                                           : A::kSendGradient;
      const A* b = current(peer);
      if (b == nullptr || b->kind != want) continue;
      EXPECT_EQ(b->micro_batch, a->micro_batch) << "rank " << s << " " << Name(*a);
      // The virtual stages: the receiver's is the sender's next (activations) or previous one.
      const int mine = a->chunk * p + s, theirs = b->chunk * p + peer;
      EXPECT_EQ(std::abs(mine - theirs), 1) << "rank " << s << " " << Name(*a);
      EXPECT_EQ(theirs - mine, up ? 1 : -1) << "rank " << s << " " << Name(*a);
      clock[s] = clock[peer] = std::max(clock[s], clock[peer]);
      ++at[s];
      ++at[peer];
      progress = true;
    }
  }
  InterleavedRun run;
  const double makespan = *std::max_element(clock.begin(), clock.end());
  for (int s = 0; s < p; ++s) {
    run.left += static_cast<int64_t>(plan[s].size() - at[s]);
    run.bubble = std::max(run.bubble, 1 - busy[s] / makespan);
  }
  return run;
}

TEST(PipelineScheduleTest, InterleavedShapesRunToTheEndWithBlockingSends) {
  for (int p = 2; p <= 4; ++p) {
    for (int v = 2; v <= 3; ++v) {
      for (int64_t m = p; m <= 3 * p; m += p) {
        SCOPED_TRACE(::testing::Message()
                     << p << " stages x " << v << " chunks, " << m << " micro-batches");
        auto plan = InterleavedOneForwardOneBackward(p, v, m);
        ASSERT_TRUE(plan.ok()) << plan.status();
        ASSERT_EQ(plan->size(), static_cast<size_t>(p));
        for (int s = 0; s < p; ++s) {
          // Each chunk's micro-batches forwarded in order, each backwarded after its forward.
          std::vector<int64_t> forwards(v, 0), backwards(v, 0);
          for (const A& a : (*plan)[s]) {
            ASSERT_GE(a.chunk, 0);
            ASSERT_LT(a.chunk, v);
            if (a.kind == A::kForward) {
              EXPECT_EQ(a.micro_batch, forwards[a.chunk]++);
            }
            if (a.kind == A::kBackward) {
              EXPECT_EQ(a.micro_batch, backwards[a.chunk]++);
              EXPECT_LT(a.micro_batch, forwards[a.chunk]);
            }
            const int virtual_stage = a.chunk * p + s;
            if (virtual_stage == 0) {
              EXPECT_TRUE(a.kind != A::kRecvActivation && a.kind != A::kSendGradient);
            }
            if (virtual_stage == p * v - 1) {
              EXPECT_TRUE(a.kind != A::kSendActivation && a.kind != A::kRecvGradient);
            }
          }
          EXPECT_EQ(forwards, std::vector<int64_t>(v, m));
          EXPECT_EQ(backwards, std::vector<int64_t>(v, m));
        }
        const InterleavedRun run = RunInterleaved(*plan);
        EXPECT_EQ(run.left, 0);
        // Chunks of 1 / v the work: forwards of 1 / v, backwards of 2 / v units -- the run's
        // shares are the same whatever the unit. Within the formula's bubble (+ 1% of the step)
        // and below the plain 1F1B's.
        EXPECT_NEAR(run.bubble, PipelineBubbleFraction(p, m, v), 1e-9);
        EXPECT_LT(run.bubble, PipelineBubbleFraction(p, m));
      }
    }
  }
}

TEST(PipelineScheduleTest, InterleavedBadArguments) {
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(4, 8, 2), 3.0 / 19.0);
  for (const auto& [p, v, m] : {std::tuple{1, 2, 2}, {2, 1, 2}, {2, 2, 3}, {2, 2, 0}}) {
    EXPECT_EQ(InterleavedOneForwardOneBackward(p, v, m).status().code(),
              absl::StatusCode::kInvalidArgument)
        << p << " " << v << " " << m;
  }
}

}  // namespace
}  // namespace mimo
