// Tests of mimo/gradient_buckets.h: the bucket plan (consecutive parameters up to the bucket
// size, a larger parameter alone) and, over two Gloo ranks, every gradient summed exactly, the
// staged ones and the one reduced in place.
#include "mimo/gradient_buckets.h"

#include <gtest/gtest.h>

#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "tests/comm/run_ranks.h"

namespace mimo {
namespace {

std::vector<std::unique_ptr<Parameter>> Params(kernels::Ops& ops,
                                               const std::vector<int64_t>& sizes) {
  std::vector<std::unique_ptr<Parameter>> params;
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto p = Parameter::Create(ops, {.name = "p" + std::to_string(i), .shape = {sizes[i]}},
                               kernels::DType::kF32, 1);
    EXPECT_TRUE(p.ok()) << p.status();
    params.push_back(*std::move(p));
  }
  return params;
}

std::vector<Parameter*> Ptrs(const std::vector<std::unique_ptr<Parameter>>& params) {
  std::vector<Parameter*> out;
  for (const auto& p : params) out.push_back(p.get());
  return out;
}

TEST(GradientBucketsTest, PlansConsecutiveParametersUpToTheBucketSize) {
  auto ops = kernels::NewCpuOps();
  auto params = Params(*ops, {10, 20, 5000, 7, 3, 40, 1});
  auto buckets = GradientBuckets::Create(*ops, Ptrs(params), 40);
  ASSERT_TRUE(buckets.ok()) << buckets.status();
  // [10, 20], [5000] in place, [7, 3], [40], [1].
  EXPECT_EQ((*buckets)->num_buckets(), 5);
  EXPECT_EQ(GradientBuckets::Create(*ops, Ptrs(params), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GradientBucketsTest, SumsEveryGradientOverTheGroup) {
  const std::vector<int64_t> sizes = {10, 20, 5000, 7, 3, 40, 1};
  comm::InMemoryStore store;
  std::vector<std::vector<std::vector<float>>> got(2);
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "dp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    auto params = Params(*ops, sizes);
    for (size_t i = 0; i < params.size(); ++i) {
      float* g = params[i]->grad().data<float>();
      for (int64_t k = 0; k < sizes[i]; ++k) g[k] = static_cast<float>((rank + 1) * (k + i));
    }
    auto buckets = GradientBuckets::Create(*ops, Ptrs(params), 40);
    ASSERT_TRUE(buckets.ok()) << buckets.status();
    ASSERT_TRUE((*buckets)->AllReduce(*ops, (*groups)->Get("dp")).ok());
    for (const auto& p : params) {
      const float* g = p->grad().data<float>();
      got[rank].emplace_back(g, g + p->numel());
    }
  });
  for (int rank = 0; rank < 2; ++rank) {
    ASSERT_EQ(got[rank].size(), sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) {
      for (int64_t k = 0; k < sizes[i]; ++k) {
        ASSERT_EQ(got[rank][i][k], static_cast<float>(3 * (k + i))) << "param " << i << " " << k;
      }
    }
  }
}

}  // namespace
}  // namespace mimo
