// Tests of mimo/gradient_buffer.h: the bucket plan (consecutive parameters up to the bucket size,
// a larger parameter alone, aligned starts, padding to the multiple), the parameters' gradients
// living in the buffer, and, over two Gloo ranks, every gradient summed exactly in place.
#include "mimo/gradient_buffer.h"

#include <gtest/gtest.h>

#include <cstdint>
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

TEST(GradientBufferTest, PlansPaddedBucketsAndHoldsTheGradients) {
  auto ops = kernels::NewCpuOps();
  auto params = Params(*ops, {10, 20, 5000, 7, 3, 40, 1});
  // Gradients written before the move are kept.
  params[3]->grad().data<float>()[6] = 42.0f;
  auto buffer = GradientBuffer::Create(*ops, Ptrs(params), 40, 3);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  // Each gradient at a multiple of 64 elements, each bucket a multiple of lcm(3, 64) = 192:
  // [10, 20] -> 64 + 20 -> 192, [5000] -> 5056 (5000 aligned) -> 5184, [7, 3] -> 192, [40] -> 192,
  // [1] -> 192.
  const std::vector<GradientBucket>& b = (*buffer)->buckets();
  ASSERT_EQ(b.size(), 5u);
  const int64_t padded[] = {192, 5184, 192, 192, 192};
  int64_t begin = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    EXPECT_EQ(b[i].padded, padded[i]) << i;
    EXPECT_EQ(b[i].begin, begin) << i;
    begin += padded[i];
  }
  EXPECT_EQ((*buffer)->tensor().numel(), begin);
  EXPECT_EQ(b[0].offsets, (std::vector<int64_t>{0, 64}));
  // Each gradient is a view of its place, 256-byte aligned; the gaps are zero.
  const float* data = (*buffer)->tensor().data<float>();
  EXPECT_EQ(params[1]->grad().data<float>(), data + 64);
  EXPECT_EQ(params[3]->grad().data<float>(), data + 192 + 5184);
  for (const auto& p : params) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p->grad().data()) % 256, 0u) << p->name();
  }
  EXPECT_EQ(data[192 + 5184 + 6], 42.0f);
  for (int64_t k = 10; k < 64; ++k) EXPECT_EQ(data[k], 0.0f);
  for (int64_t k = 84; k < 192; ++k) EXPECT_EQ(data[k], 0.0f);
  EXPECT_EQ(params[2]->grad().shape(), kernels::Shape{5000});

  // Reset clears every gradient while one parameter's backward does not write it whole; a buffer
  // of no parameters has nothing to clear.
  for (size_t i = 0; i + 1 < params.size(); ++i) {
    params[i]->set_backward_writes_whole_grad();
    ASSERT_TRUE(params[i]->ResetGrad(*ops).ok());  // Stale: the memset below writes it.
  }
  params[1]->grad().data<float>()[3] = 5.0f;
  ASSERT_TRUE((*buffer)->Reset(*ops).ok());
  EXPECT_EQ(params[1]->grad().data<float>()[3], 0.0f);
  EXPECT_EQ(data[192 + 5184 + 6], 0.0f);
  for (const auto& p : params) EXPECT_FALSE(p->grad_stale()) << p->name();
  auto none = GradientBuffer::Create(*ops, {});
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE((*none)->Reset(*ops).ok());
  // Where every backward writes its gradient whole, they are only marked stale.
  params.back()->set_backward_writes_whole_grad();
  params[1]->grad().data<float>()[3] = 5.0f;
  ASSERT_TRUE((*buffer)->Reset(*ops).ok());
  EXPECT_EQ(params[1]->grad().data<float>()[3], 5.0f);
  for (const auto& p : params) EXPECT_TRUE(p->grad_stale()) << p->name();

  auto again = Params(*ops, {3});
  EXPECT_EQ(GradientBuffer::Create(*ops, Ptrs(again), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradientBuffer::Create(*ops, Ptrs(again), 10, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradientBuffer::Create(*ops, {again[0].get(), again[0].get()}, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GradientBufferTest, SumsEveryGradientOverTheGroup) {
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
    auto buffer = GradientBuffer::Create(*ops, Ptrs(params), 40);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    for (size_t i = 0; i < params.size(); ++i) {
      float* g = params[i]->grad().data<float>();
      for (int64_t k = 0; k < sizes[i]; ++k) g[k] = static_cast<float>((rank + 1) * (k + i));
    }
    ASSERT_TRUE((*buffer)->AllReduce(*ops, (*groups)->Get("dp")).ok());
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
