// Tests of mimo/distributed_optimizer.h over three Gloo ranks (an odd group: padded buckets):
// the sharded updates give the weights, norms and steps of AdamWOptimizer on one rank holding
// the summed gradients, in fp32 and bf16, with clipping and weight decay on some parameters; the
// optimizer state is a third of the model; bf16 masters are released; one rank alone updates as
// AdamW does and skips non-finite steps; bad inputs (parameters twice, without masters, mixed
// dtypes) are refused.
#include "mimo/distributed_optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "common/bfloat16.h"
#include "common/status_macros.h"
#include "tests/comm/run_ranks.h"

namespace mimo {
namespace {

using kernels::DType;

// 500: larger than a bucket, staged (3 does not divide it); 300: reduced in place.
const std::vector<int64_t> kSizes = {10, 20, 500, 7, 3, 40, 1, 300};
constexpr int kRanks = 3;
constexpr int kSteps = 3;
constexpr int64_t kBucket = 40;

std::vector<std::unique_ptr<Parameter>> Params(kernels::Ops& ops, DType dtype) {
  std::vector<std::unique_ptr<Parameter>> params;
  for (size_t i = 0; i < kSizes.size(); ++i) {
    auto p = Parameter::Create(
        ops, {.name = "p" + std::to_string(i), .shape = {kSizes[i]}, .weight_decay = i % 2 == 0},
        dtype, 7);
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

// Rank r's gradient of element k of parameter i at `step`: multiples of 1/64, so sums over ranks
// are exact in any order.
float Grad(int rank, int step, size_t i, int64_t k) {
  return static_cast<float>(((rank + 1) * (k + 3 * i + step)) % 23 - 11) / 64.0f;
}

std::vector<float> Weights(const Parameter& p) {
  std::vector<float> out(p.numel());
  for (int64_t k = 0; k < p.numel(); ++k) {
    out[k] = p.weight().dtype() == DType::kF32 ? p.weight().data<float>()[k]
                                               : BFloat16ToFloat(p.weight().data<uint16_t>()[k]);
  }
  return out;
}

struct Outcome {
  std::vector<std::vector<float>> weights;  // Per parameter, after the last step.
  std::vector<double> norms;                // Per step.
};

const OptimizerConfig kConfig{.lr = 0.05f, .weight_decay = 0.1f, .clip_grad = 2.0f};

// AdamWOptimizer on one rank with every rank's gradients summed.
Outcome Reference(DType dtype) {
  Outcome run;
  auto ops = kernels::NewCpuOps();
  auto params = Params(*ops, dtype);
  auto opt = AdamWOptimizer::Create(*ops, kConfig, Ptrs(params));
  EXPECT_TRUE(opt.ok()) << opt.status();
  for (int step = 0; step < kSteps; ++step) {
    for (size_t i = 0; i < params.size(); ++i) {
      float* g = params[i]->grad().data<float>();
      for (int64_t k = 0; k < kSizes[i]; ++k) {
        g[k] = 0;
        for (int r = 0; r < kRanks; ++r) g[k] += Grad(r, step, i, k);
      }
    }
    auto stats = (*opt)->Step(*ops);
    EXPECT_TRUE(stats.ok()) << stats.status();
    run.norms.push_back(stats->grad_norm);
  }
  for (const auto& p : params) run.weights.push_back(Weights(*p));
  return run;
}

class DistributedOptimizerTest : public ::testing::TestWithParam<DType> {};

TEST_P(DistributedOptimizerTest, ShardedUpdatesMatchOneRankWithTheSummedGradients) {
  const DType dtype = GetParam();
  const Outcome want = Reference(dtype);
  std::vector<Outcome> got(kRanks);
  comm::InMemoryStore store;
  comm::RunRanks(kRanks, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "dp", .members = {0, 1, 2}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    auto params = Params(*ops, dtype);
    auto opt = DistributedOptimizer::Create(
        *ops, kConfig, {{.params = Ptrs(params), .dp = (*groups)->Get("dp")}}, kBucket);
    ASSERT_TRUE(opt.ok()) << opt.status();
    // Buckets [10, 20], [500], [7, 3], [40], [1], [300], each gradient starting at a multiple of
    // 64 elements and each bucket padded to a multiple of lcm(3, 64) = 192: 128 -> 192, 512 ->
    // 576, 128 -> 192, 64 -> 192, 64 -> 192, 320 -> 384; a third of each per rank.
    EXPECT_EQ((*opt)->shard_elements(), 64 + 192 + 64 + 64 + 64 + 128);
    for (const auto& p : params) {
      EXPECT_EQ(p->master().data() == nullptr, dtype != DType::kF32) << p->name();
    }
    for (int step = 0; step < kSteps; ++step) {
      for (size_t i = 0; i < params.size(); ++i) {
        float* g = params[i]->grad().data<float>();
        for (int64_t k = 0; k < kSizes[i]; ++k) g[k] = Grad(rank, step, i, k);
      }
      ASSERT_TRUE((*opt)->ReduceScatterGradients(*ops).ok());
      auto squared = (*opt)->SquaredGradNorm(*ops);
      ASSERT_TRUE(squared.ok()) << squared.status();
      auto stats = (*opt)->Apply(*ops, *squared);
      ASSERT_TRUE(stats.ok()) << stats.status();
      EXPECT_EQ(stats->step, step + 1);
      got[rank].norms.push_back(stats->grad_norm);
    }
    for (const auto& p : params) got[rank].weights.push_back(Weights(*p));
  });
  // bf16 weights may round to the neighbouring value where the fp32 masters differ in the
  // last bits (the norm's sum in another order).
  const double rtol = dtype == DType::kF32 ? 1e-6 : 1.0 / 128;
  for (int rank = 0; rank < kRanks; ++rank) {
    ASSERT_EQ(got[rank].norms.size(), static_cast<size_t>(kSteps));
    for (int step = 0; step < kSteps; ++step) {
      EXPECT_NEAR(got[rank].norms[step], want.norms[step], 1e-6 * want.norms[step]);
    }
    ASSERT_EQ(got[rank].weights.size(), kSizes.size());
    for (size_t i = 0; i < kSizes.size(); ++i) {
      for (int64_t k = 0; k < kSizes[i]; ++k) {
        const float w = want.weights[i][k];
        ASSERT_NEAR(got[rank].weights[i][k], w, rtol * std::abs(w) + 1e-7)
            << "rank " << rank << " param " << i << " element " << k;
      }
    }
    EXPECT_EQ(got[rank].weights, got[0].weights);  // The replicas stay identical.
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, DistributedOptimizerTest,
                         ::testing::Values(DType::kF32, DType::kBF16), [](const auto& info) {
                           return info.param == DType::kF32 ? "F32" : "BF16";
                         });

// One rank (no group): the shard is the whole model; with the summed gradients it updates as
// AdamWOptimizer does. A non-finite norm skips the update and changes nothing.
TEST(DistributedOptimizerOneRankTest, MatchesAdamWAndSkipsNonFiniteSteps) {
  const Outcome want = Reference(DType::kF32);
  auto ops = kernels::NewCpuOps();
  auto params = Params(*ops, DType::kF32);
  auto opt = DistributedOptimizer::Create(*ops, kConfig, {{.params = Ptrs(params)}}, kBucket);
  ASSERT_TRUE(opt.ok()) << opt.status();
  auto step = [&](int s, bool poison) -> absl::StatusOr<OptimizerStepStats> {
    for (size_t i = 0; i < params.size(); ++i) {
      float* g = params[i]->grad().data<float>();
      for (int64_t k = 0; k < kSizes[i]; ++k) {
        g[k] = 0;
        for (int r = 0; r < kRanks; ++r) g[k] += Grad(r, s, i, k);
      }
    }
    if (poison) params[2]->grad().data<float>()[7] = std::nanf("");
    MIMO_RETURN_IF_ERROR((*opt)->ReduceScatterGradients(*ops));
    MIMO_ASSIGN_OR_RETURN(const float squared, (*opt)->SquaredGradNorm(*ops));
    return (*opt)->Apply(*ops, squared);
  };
  for (int s = 0; s < kSteps; ++s) {
    auto stats = step(s, false);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_NEAR(stats->grad_norm, want.norms[s], 1e-6 * want.norms[s]);
  }
  std::vector<std::vector<float>> before;
  for (const auto& p : params) before.push_back(Weights(*p));
  for (size_t i = 0; i < kSizes.size(); ++i) {
    for (int64_t k = 0; k < kSizes[i]; ++k) {
      ASSERT_NEAR(before[i][k], want.weights[i][k], 1e-6 * std::abs(want.weights[i][k]) + 1e-7)
          << "param " << i << " element " << k;
    }
  }
  auto skipped = step(kSteps, true);
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  EXPECT_TRUE(skipped->skipped);
  EXPECT_EQ((*opt)->steps(), kSteps);
  for (size_t i = 0; i < params.size(); ++i) EXPECT_EQ(Weights(*params[i]), before[i]);
}

TEST(DistributedOptimizerErrorsTest, RefusesBadBucketsAndParametersWithoutMasters) {
  auto ops = kernels::NewCpuOps();
  auto params = Params(*ops, DType::kBF16);
  EXPECT_EQ(
      DistributedOptimizer::Create(*ops, kConfig, {{.params = Ptrs(params)}}, 0).status().code(),
      absl::StatusCode::kInvalidArgument);
  auto first = DistributedOptimizer::Create(*ops, kConfig, {{.params = Ptrs(params)}});
  ASSERT_TRUE(first.ok()) << first.status();
  // The first took the masters: a second optimizer over them would start from nothing.
  const absl::Status second =
      DistributedOptimizer::Create(*ops, kConfig, {{.params = Ptrs(params)}}).status();
  EXPECT_EQ(second.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(second.message().find("has no master"), std::string::npos) << second;
  auto f32 = Params(*ops, DType::kF32);
  EXPECT_EQ(DistributedOptimizer::Create(*ops, kConfig,
                                         {{.params = {f32[0].get()}}, {.params = {f32[0].get()}}})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto bf16 = Params(*ops, DType::kBF16);
  EXPECT_EQ(DistributedOptimizer::Create(*ops, kConfig, {{.params = {f32[0].get(), bf16[1].get()}}})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mimo
