// Tests of mimo/gradient_sync.h: collectives start during the backward as buckets become ready,
// in the buckets' order on every rank however the reports come (two Gloo ranks reporting in
// different orders still sum every gradient exactly), the rest at Finish; errors reported.
#include "mimo/gradient_sync.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "mimo/gradient_buffer.h"
#include "tests/comm/run_ranks.h"

namespace mimo {
namespace {

std::vector<std::unique_ptr<Parameter>> Params(kernels::Ops& ops, int n, int64_t size) {
  std::vector<std::unique_ptr<Parameter>> params;
  for (int i = 0; i < n; ++i) {
    auto p = Parameter::Create(ops, {.name = "p" + std::to_string(i), .shape = {size}},
                               kernels::DType::kF32, 1);
    EXPECT_TRUE(p.ok()) << p.status();
    params.push_back(*std::move(p));
  }
  return params;
}

// Waits up to 10 s for `flag`.
bool Eventually(const std::atomic<bool>& flag) {
  for (int i = 0; i < 10000 && !flag.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return flag.load();
}

TEST(GradientSyncTest, StartsABucketDuringTheBackwardOnceItAndThoseBeforeAreReady) {
  auto ops = kernels::NewCpuOps();
  auto params = Params(*ops, 3, 4);
  std::atomic<bool> ran[3] = {false, false, false};
  std::vector<GradientSync::Bucket> buckets;
  for (int i = 0; i < 3; ++i) {
    buckets.push_back({.params = {params[i].get()}, .collective = [&ran, i] {
                         ran[i] = true;
                         return absl::OkStatus();
                       }});
  }
  auto sync = GradientSync::Create(*ops, std::move(buckets));
  ASSERT_TRUE(sync.ok()) << sync.status();
  for (int step = 0; step < 2; ++step) {
    for (auto& r : ran) r = false;
    // Bucket 1 first: it waits for bucket 0, which comes next and starts both.
    ASSERT_TRUE((*sync)->Ready({params[1].get()}).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_FALSE(ran[1].load());
    ASSERT_TRUE((*sync)->Ready({params[0].get()}).ok());
    // Both run before Finish is called: the reduction overlaps what the caller does next.
    EXPECT_TRUE(Eventually(ran[0]));
    EXPECT_TRUE(Eventually(ran[1]));
    EXPECT_FALSE(ran[2].load());
    ASSERT_TRUE((*sync)->Finish().ok());  // Bucket 2 was never reported: started here.
    EXPECT_TRUE(ran[2].load());
    EXPECT_EQ((*sync)->started_early(), 2) << "step " << step;
  }
}

// A stale gradient (Parameter::ResetGrad) that no backward wrote is zero by the time its bucket's
// collective reads it, whether reported ready or left for Finish.
TEST(GradientSyncTest, ZeroesStaleGradientsBeforeTheirCollective) {
  auto ops = kernels::NewCpuOps();
  auto params = Params(*ops, 3, 4);
  std::vector<float> seen[3];
  auto record = [&seen, &params](std::vector<int> which) {
    return [&seen, &params, which] {
      for (int i : which) {
        const float* g = params[i]->grad().data<float>();
        seen[i].assign(g, g + 4);
      }
      return absl::OkStatus();
    };
  };
  // Bucket 0: p0 and p1, reported ready; bucket 1: p2, never reported.
  std::vector<GradientSync::Bucket> buckets;
  buckets.push_back({.params = {params[0].get(), params[1].get()}, .collective = record({0, 1})});
  buckets.push_back({.params = {params[2].get()}, .collective = record({2})});
  auto sync = GradientSync::Create(*ops, std::move(buckets));
  ASSERT_TRUE(sync.ok()) << sync.status();
  for (auto& p : params) {
    p->set_backward_writes_whole_grad();
    std::fill_n(p->grad().data<float>(), 4, 7.0f);  // An earlier step's values.
    ASSERT_TRUE(p->ResetGrad(*ops).ok());
    EXPECT_TRUE(p->grad_stale());
  }
  // The backward wrote p0 only.
  ASSERT_TRUE(params[0]->TakeStaleGrad());
  std::fill_n(params[0]->grad().data<float>(), 4, 3.0f);
  ASSERT_TRUE((*sync)->Ready({params[0].get(), params[1].get()}).ok());
  ASSERT_TRUE((*sync)->Finish().ok());
  EXPECT_EQ(seen[0], std::vector<float>(4, 3.0f));
  EXPECT_EQ(seen[1], std::vector<float>(4, 0.0f));
  EXPECT_EQ(seen[2], std::vector<float>(4, 0.0f));
  for (const auto& p : params) EXPECT_FALSE(p->grad_stale()) << p->name();
}

TEST(GradientSyncTest, SumsOverTwoRanksThatReportInDifferentOrders) {
  const int kParams = 6;
  const int64_t kSize = 50;
  comm::InMemoryStore store;
  std::vector<std::vector<float>> got(2);
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "dp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    comm::Communicator* dp = (*groups)->Get("dp");
    auto ops = kernels::NewCpuOps();
    auto params = Params(*ops, kParams, kSize);
    std::vector<Parameter*> ptrs;
    for (const auto& p : params) ptrs.push_back(p.get());
    // Two parameters a bucket.
    auto buffer = GradientBuffer::Create(*ops, ptrs, 2 * kSize);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    ASSERT_EQ((*buffer)->buckets().size(), 3u);
    std::vector<GradientSync::Bucket> buckets;
    for (size_t i = 0; i < 3; ++i) {
      const GradientBuffer* grads = buffer->get();
      buckets.push_back({.params = (*buffer)->buckets()[i].params,
                         .collective = [grads, dp, i] { return grads->AllReduceBucket(i, dp); }});
    }
    auto sync = GradientSync::Create(*ops, std::move(buckets));
    ASSERT_TRUE(sync.ok()) << sync.status();
    for (int step = 1; step <= 2; ++step) {
      for (int i = 0; i < kParams; ++i) {
        float* g = params[i]->grad().data<float>();
        for (int64_t k = 0; k < kSize; ++k) g[k] = static_cast<float>(step * (rank + 1) * (k + i));
      }
      // Rank 0 reports from the last parameter back, rank 1 in another order and never param 5.
      const std::vector<int> order =
          rank == 0 ? std::vector<int>{5, 4, 3, 2, 1, 0} : std::vector<int>{2, 0, 1, 4, 3};
      for (int i : order) ASSERT_TRUE((*sync)->Ready({params[i].get()}).ok());
      ASSERT_TRUE((*sync)->Finish().ok());
      for (int i = 0; i < kParams; ++i) {
        const float* g = params[i]->grad().data<float>();
        for (int64_t k = 0; k < kSize; ++k) {
          ASSERT_EQ(g[k], static_cast<float>(3 * step * (k + i)))
              << "rank " << rank << " step " << step << " param " << i << " element " << k;
        }
      }
    }
    EXPECT_EQ((*sync)->started_early(), rank == 0 ? 3 : 2);
  });
}

TEST(GradientSyncTest, ReportsErrors) {
  auto ops = kernels::NewCpuOps();
  auto params = Params(*ops, 3, 4);
  std::atomic<int> calls{0};
  std::atomic<bool> fail{true};
  std::vector<GradientSync::Bucket> buckets;
  for (int i = 0; i < 3; ++i) {
    buckets.push_back({.params = {params[i].get()}, .collective = [&, i] {
                         ++calls;
                         if (i == 1 && fail) return absl::UnavailableError("peer gone");
                         return absl::OkStatus();
                       }});
  }
  auto sync = GradientSync::Create(*ops, std::move(buckets));
  ASSERT_TRUE(sync.ok()) << sync.status();
  // A gradient reported twice was still being written when first reported.
  ASSERT_TRUE((*sync)->Ready({params[2].get()}).ok());
  absl::Status twice = (*sync)->Ready({params[2].get()});
  EXPECT_EQ(twice.code(), absl::StatusCode::kInternal);
  EXPECT_NE(twice.message().find("p2"), std::string::npos) << twice;
  // Bucket 1 fails: Finish says so, with its index; bucket 2 is dropped.
  absl::Status finished = (*sync)->Finish();
  EXPECT_EQ(finished.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(finished.message().find("bucket 1"), std::string::npos) << finished;
  EXPECT_EQ(calls.load(), 2);
  // The next step starts clean.
  fail = false;
  EXPECT_TRUE((*sync)->Finish().ok());
  EXPECT_EQ(calls.load(), 5);
  // A step abandoned half-way (its backward failed): the next starts clean.
  ASSERT_TRUE((*sync)->Ready({params[0].get()}).ok());
  (*sync)->Abandon();
  calls = 0;
  ASSERT_TRUE((*sync)->Ready({params[0].get()}).ok());  // Not "reported twice".
  EXPECT_TRUE((*sync)->Finish().ok());
  EXPECT_EQ(calls.load(), 3);
  // A parameter in two buckets, a bucket without a collective.
  EXPECT_EQ(
      GradientSync::Create(
          *ops, {{.params = {params[0].get()}, .collective = [] { return absl::OkStatus(); }},
                 {.params = {params[0].get()}, .collective = [] { return absl::OkStatus(); }}})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradientSync::Create(*ops, {{.params = {params[0].get()}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mimo
