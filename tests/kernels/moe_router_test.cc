// The MoE router's CPU twin against float64 routing (choices exact, weights and scores within
// 1e-6, gradients within 1e-5 of float64 central differences), and its argument checks.
#include "kernels/moe_router.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/kernels/moe_router_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct RouterCase {
  const char* name;
  RouterConfig config;
  bool bias = false;
};

void PrintTo(const RouterCase& c, std::ostream* os) { *os << c.name; }

std::vector<RouterCase> Cases() {
  return {
      {"SoftmaxTop2", {.experts = 8, .top_k = 2}},
      {"SoftmaxPreSoftmaxTop3", {.experts = 7, .top_k = 3, .normalize = false}},
      {"SoftmaxTop1Scaled", {.experts = 5, .top_k = 1, .scaling_factor = 2.5f}},
      {"SigmoidBiasedTop4",
       {.experts = 12, .top_k = 4, .score = RouterScore::kSigmoid},
       /*bias=*/true},
      {"SigmoidGroupLimited",
       {.experts = 16,
        .top_k = 4,
        .score = RouterScore::kSigmoid,
        .scaling_factor = 2.5f,
        .num_groups = 4,
        .group_top_k = 2},
       /*bias=*/true},
      {"SigmoidTop1KeepsItsScore", {.experts = 6, .top_k = 1, .score = RouterScore::kSigmoid}},
      {"OneExpert", {.experts = 1, .top_k = 1}},
  };
}

std::vector<float> Floats(const std::vector<double>& v) { return {v.begin(), v.end()}; }
std::vector<double> Doubles(const float* p, size_t n) { return {p, p + n}; }

// A relative L2 error bounded away from zero by `floor`.
double RelError(const std::vector<double>& got, const std::vector<double>& want, double floor) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), floor);
}

class MoeRouterCpuTest : public ::testing::TestWithParam<RouterCase> {
 protected:
  void SetUp() override {
    const RouterConfig& c = GetParam().config;
    std::mt19937 random(17);
    std::normal_distribution<double> normal(0.0, 1.5);
    logits_.resize(kTokens * c.experts);
    for (double& v : logits_) v = static_cast<float>(normal(random));  // Exact in fp32.
    if (GetParam().bias) {
      for (int64_t e = 0; e < c.experts; ++e)
        bias_.push_back(static_cast<float>(0.1 * normal(random)));
    }
    dprobs_.resize(kTokens * c.top_k);
    for (double& v : dprobs_) v = static_cast<float>(normal(random));
  }
  static constexpr int64_t kTokens = 37;
  std::vector<double> logits_, bias_, dprobs_;
};

TEST_P(MoeRouterCpuTest, ForwardMatchesFloat64) {
  const RouterConfig& c = GetParam().config;
  const std::vector<float> logits = Floats(logits_), bias = Floats(bias_);
  std::vector<float> scores(kTokens * c.experts, NAN), probs(kTokens * c.top_k, NAN);
  std::vector<int32_t> indices(kTokens * c.top_k, -1), counts(c.experts, -1);
  ASSERT_TRUE(MoeRouterCpu({.config = c,
                            .logits = logits.data(),
                            .expert_bias = bias.empty() ? nullptr : bias.data(),
                            .scores = scores.data(),
                            .indices = indices.data(),
                            .probs = probs.data(),
                            .tokens_per_expert = counts.data(),
                            .tokens = kTokens})
                  .ok());
  const RouterReference want = RouterFloat64(c, logits_, bias_, kTokens);
  EXPECT_EQ(indices, want.indices);
  EXPECT_EQ(counts, want.counts);
  EXPECT_LT(RelError(Doubles(scores.data(), scores.size()), want.scores, 1e-30), 1e-6);
  EXPECT_LT(RelError(Doubles(probs.data(), probs.size()), want.probs, 1e-30), 1e-6);
  int64_t total = 0;
  for (int32_t n : counts) total += n;
  EXPECT_EQ(total, kTokens * c.top_k);
  // A second micro-batch adds its counts when asked to.
  ASSERT_TRUE(MoeRouterCpu({.config = c,
                            .logits = logits.data(),
                            .expert_bias = bias.empty() ? nullptr : bias.data(),
                            .scores = scores.data(),
                            .indices = indices.data(),
                            .probs = probs.data(),
                            .tokens_per_expert = counts.data(),
                            .tokens = kTokens,
                            .accumulate_counts = true})
                  .ok());
  for (int64_t e = 0; e < c.experts; ++e) EXPECT_EQ(counts[e], 2 * want.counts[e]) << e;
}

TEST_P(MoeRouterCpuTest, BackwardMatchesFloat64CentralDifferences) {
  const RouterConfig& c = GetParam().config;
  const std::vector<float> logits = Floats(logits_), bias = Floats(bias_), dprobs = Floats(dprobs_);
  std::vector<float> scores(kTokens * c.experts), probs(kTokens * c.top_k);
  std::vector<int32_t> indices(kTokens * c.top_k), counts(c.experts);
  ASSERT_TRUE(MoeRouterCpu({.config = c,
                            .logits = logits.data(),
                            .expert_bias = bias.empty() ? nullptr : bias.data(),
                            .scores = scores.data(),
                            .indices = indices.data(),
                            .probs = probs.data(),
                            .tokens_per_expert = counts.data(),
                            .tokens = kTokens})
                  .ok());
  std::vector<float> dlogits(kTokens * c.experts, NAN);
  ASSERT_TRUE(MoeRouterBackwardCpu({.config = c,
                                    .dprobs = dprobs.data(),
                                    .scores = scores.data(),
                                    .indices = indices.data(),
                                    .dlogits = dlogits.data(),
                                    .tokens = kTokens})
                  .ok());
  const std::vector<double> want = RouterBackwardFloat64(c, logits_, indices, dprobs_, kTokens);
  // Relative to the gradients' own size, or to 1% of the incoming gradient's where they cancel
  // to ~0 (top-1 normalized weights are constant: fp32 leaves rounding noise).
  double scale = 0;
  for (double v : dprobs_) scale += v * v;
  scale = 1e-2 * c.scaling_factor * std::sqrt(scale);
  EXPECT_LT(RelError(Doubles(dlogits.data(), dlogits.size()), want, scale), 1e-5);
}

TEST_P(MoeRouterCpuTest, AuxLossesAndGradientsMatchFloat64) {
  const RouterConfig& c = GetParam().config;
  const std::vector<float> logits = Floats(logits_), bias = Floats(bias_);
  std::vector<float> scores(kTokens * c.experts), probs(kTokens * c.top_k);
  std::vector<int32_t> indices(kTokens * c.top_k), counts(c.experts);
  ASSERT_TRUE(MoeRouterCpu({.config = c,
                            .logits = logits.data(),
                            .expert_bias = bias.empty() ? nullptr : bias.data(),
                            .scores = scores.data(),
                            .indices = indices.data(),
                            .probs = probs.data(),
                            .tokens_per_expert = counts.data(),
                            .tokens = kTokens})
                  .ok());
  // Per micro-batch (no sequences) and per sequence, one of them empty.
  for (const std::vector<int32_t>& cu :
       {std::vector<int32_t>{}, std::vector<int32_t>{0, 10, 10, 31, 37}}) {
    // Added to: from zeros (compared at full precision), and from 0.5.
    std::vector<float> dlogits(kTokens * c.experts, 0.0f), offset(kTokens * c.experts, 0.5f);
    float losses[2] = {NAN, NAN};
    MoeAuxLossParams p{.config = c,
                       .logits = logits.data(),
                       .scores = scores.data(),
                       .indices = indices.data(),
                       .cu_seqlens = cu.empty() ? nullptr : cu.data(),
                       .num_seqs = cu.empty() ? 0 : static_cast<int64_t>(cu.size()) - 1,
                       .tokens = kTokens,
                       .aux_coeff = 0.01f,
                       .z_coeff = 0.001f,
                       .losses = losses,
                       .dlogits = dlogits.data(),
                       .loss_grad = 3.0f};
    ASSERT_TRUE(MoeAuxLossCpu(p).ok());
    p.dlogits = offset.data();
    ASSERT_TRUE(MoeAuxLossCpu(p).ok());
    const std::vector<double> want = AuxLossFloat64(c, logits_, indices, cu, kTokens, 0.01, 0.001);
    EXPECT_NEAR(losses[0], want[0], 1e-6 * want[0]) << cu.size();
    EXPECT_NEAR(losses[1], want[1], 1e-6 * want[1]) << cu.size();
    std::vector<double> grad = AuxLossGradFloat64(c, logits_, indices, cu, kTokens, 0.01, 0.001);
    for (double& g : grad) g *= 3.0;
    // The gradient's own size sets the scale (central differences in float64 are good to ~1e-9
    // of the losses, which are ~1e-2 here).
    EXPECT_LT(RelError(Doubles(dlogits.data(), dlogits.size()), grad, 1e-6), 1e-5) << cu.size();
    for (size_t i = 0; i < offset.size(); ++i) {
      ASSERT_NEAR(offset[i], 0.5 + dlogits[i], 1e-7) << i;
    }
  }
}

// Sequence parallelism: the micro-batch's rows split into three uneven parts (one empty), each
// given the whole micro-batch's counts and tokens: the parts' losses add up to the whole's and
// their gradients are the whole's rows.
TEST_P(MoeRouterCpuTest, PartsOfAMicroBatchAddUpToIt) {
  const RouterConfig& c = GetParam().config;
  const std::vector<float> logits = Floats(logits_), bias = Floats(bias_);
  std::vector<float> scores(kTokens * c.experts), probs(kTokens * c.top_k);
  std::vector<int32_t> indices(kTokens * c.top_k), counts(c.experts);
  ASSERT_TRUE(MoeRouterCpu({.config = c,
                            .logits = logits.data(),
                            .expert_bias = bias.empty() ? nullptr : bias.data(),
                            .scores = scores.data(),
                            .indices = indices.data(),
                            .probs = probs.data(),
                            .tokens_per_expert = counts.data(),
                            .tokens = kTokens})
                  .ok());
  std::vector<float> whole_grad(kTokens * c.experts, 0.0f);
  float whole[2];
  MoeAuxLossParams p{.config = c,
                     .logits = logits.data(),
                     .scores = scores.data(),
                     .indices = indices.data(),
                     .tokens = kTokens,
                     .aux_coeff = 0.01f,
                     .z_coeff = 0.001f,
                     .losses = whole,
                     .dlogits = whole_grad.data(),
                     .loss_grad = 2.0f};
  ASSERT_TRUE(MoeAuxLossCpu(p).ok());
  std::vector<float> grad(kTokens * c.experts, 0.0f);
  double sum[2] = {0, 0};
  for (const auto& [begin, end] : {std::pair<int64_t, int64_t>{0, 13}, {13, 13}, {13, kTokens}}) {
    float part[2] = {NAN, NAN};
    MoeAuxLossParams q = p;
    q.logits = logits.data() + begin * c.experts;
    q.scores = scores.data() + begin * c.experts;
    q.indices = indices.data() + begin * c.top_k;
    q.tokens = end - begin;
    q.counts = counts.data();
    q.total_tokens = kTokens;
    q.losses = part;
    q.dlogits = grad.data() + begin * c.experts;
    ASSERT_TRUE(MoeAuxLossCpu(q).ok()) << begin;
    sum[0] += part[0];
    sum[1] += part[1];
  }
  EXPECT_NEAR(sum[0], whole[0], 1e-6 * whole[0]);
  EXPECT_NEAR(sum[1], whole[1], 1e-6 * whole[1]);
  for (size_t i = 0; i < grad.size(); ++i) ASSERT_NEAR(grad[i], whole_grad[i], 1e-9) << i;
  // The whole micro-batch's tokens cannot be fewer than the part's, nor come with sequences.
  p.counts = counts.data();
  p.total_tokens = kTokens - 1;
  EXPECT_EQ(MoeAuxLossCpu(p).code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Configs, MoeRouterCpuTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(MoeRouterTest, TiesGoToTheLowerExpert) {
  const RouterConfig c{.experts = 4, .top_k = 2};
  const std::vector<float> logits = {1, 2, 2, 2};
  std::vector<float> scores(4), probs(2);
  std::vector<int32_t> indices(2), counts(4);
  ASSERT_TRUE(MoeRouterCpu({.config = c,
                            .logits = logits.data(),
                            .scores = scores.data(),
                            .indices = indices.data(),
                            .probs = probs.data(),
                            .tokens_per_expert = counts.data(),
                            .tokens = 1})
                  .ok());
  EXPECT_EQ(indices, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(counts, (std::vector<int32_t>{0, 1, 1, 0}));
  EXPECT_FLOAT_EQ(probs[0], 0.5f);
}

TEST(MoeRouterTest, ZeroTokensZeroesTheCountsAndLosses) {
  const RouterConfig c{.experts = 3, .top_k = 1};
  std::vector<int32_t> counts(3, 9);
  ASSERT_TRUE(MoeRouterCpu({.config = c, .tokens_per_expert = counts.data(), .tokens = 0}).ok());
  EXPECT_EQ(counts, std::vector<int32_t>(3, 0));
  float losses[2] = {NAN, NAN};
  ASSERT_TRUE(
      MoeAuxLossCpu({.config = c, .tokens = 0, .aux_coeff = 1, .z_coeff = 1, .losses = losses})
          .ok());
  EXPECT_EQ(losses[0], 0.0f);
  EXPECT_EQ(losses[1], 0.0f);
}

TEST(MoeRouterTest, RejectsBadIndicesAndSequences) {
  const RouterConfig c{.experts = 3, .top_k = 1};
  const std::vector<float> logits(4 * 3, 0.0f), scores(4 * 3, 1.0f / 3), dprobs(4, 1.0f);
  std::vector<int32_t> indices = {0, 1, 3, 2};
  std::vector<float> dlogits(12);
  float losses[2];
  EXPECT_EQ(MoeRouterBackwardCpu({.config = c,
                                  .dprobs = dprobs.data(),
                                  .scores = scores.data(),
                                  .indices = indices.data(),
                                  .dlogits = dlogits.data(),
                                  .tokens = 4})
                .code(),
            absl::StatusCode::kInvalidArgument);
  MoeAuxLossParams p{.config = c,
                     .logits = logits.data(),
                     .scores = scores.data(),
                     .indices = indices.data(),
                     .tokens = 4,
                     .aux_coeff = 1,
                     .losses = losses};
  EXPECT_EQ(MoeAuxLossCpu(p).code(), absl::StatusCode::kInvalidArgument);
  indices[2] = 2;
  EXPECT_TRUE(MoeAuxLossCpu(p).ok());
  const std::vector<int32_t> decreasing = {0, 100000, 4};
  p.cu_seqlens = decreasing.data();
  p.num_seqs = 2;
  EXPECT_EQ(MoeAuxLossCpu(p).code(), absl::StatusCode::kInvalidArgument);
}

TEST(MoeRouterTest, RejectsBadConfigs) {
  const auto code = [](RouterConfig c) { return CheckRouterConfig(c).code(); };
  const auto bad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code({.experts = 0, .top_k = 1}), bad);
  EXPECT_EQ(code({.experts = 1025, .top_k = 1}), bad);
  EXPECT_EQ(code({.experts = 4, .top_k = 5}), bad);
  EXPECT_EQ(code({.experts = 64, .top_k = 33}), bad);
  EXPECT_EQ(code({.experts = 4, .top_k = 1, .scaling_factor = 0}), bad);
  EXPECT_EQ(code({.experts = 8, .top_k = 2, .num_groups = 3, .group_top_k = 1}), bad);
  EXPECT_EQ(code({.experts = 8, .top_k = 3, .num_groups = 4, .group_top_k = 2}), bad);
  EXPECT_EQ(code({.experts = 8, .top_k = 6, .num_groups = 4, .group_top_k = 2}), bad);
  EXPECT_EQ(code({.experts = 8, .top_k = 2, .group_top_k = 2}), bad);
  EXPECT_TRUE(
      CheckRouterConfig({.experts = 8, .top_k = 4, .num_groups = 4, .group_top_k = 2}).ok());
  float losses[2];
  EXPECT_EQ(MoeAuxLossCpu({.config = {.experts = 2, .top_k = 1}, .aux_coeff = -1, .losses = losses})
                .code(),
            bad);
  const auto missing = MoeRouterCpu({.config = {.experts = 2, .top_k = 1}, .tokens = 1});
  EXPECT_EQ(missing.code(), bad);
}

}  // namespace
}  // namespace mimo::kernels
