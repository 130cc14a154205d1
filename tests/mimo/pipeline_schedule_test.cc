// The 1F1B schedule: every stage forwards and backwards each micro-batch once, in Megatron's
// order (warm-up forwards, then one forward and one backward, then cool-down backwards), and a
// simulation of every stage at once with blocking sends (a send completes only together with the
// neighbour's matching receive) runs to the end for many shapes: no deadlock, every transfer
// paired with the same micro-batch on both sides.
#include "mimo/pipeline_schedule.h"

#include <gtest/gtest.h>

#include <string>
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

}  // namespace
}  // namespace mimo
