// The MoE router's CUDA kernels against the CPU twin (itself checked against float64): the same
// choices and counts, weights and scores within 1e-6, gradients and losses within 1e-5; outputs
// poisoned first; two runs bitwise equal. Skips without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/moe_router.h"
#include "tests/kernels/cuda_test_util.h"

namespace mimo::kernels {
namespace {

using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

template <typename T>
std::vector<char> Raw(const std::vector<T>& v) {
  std::vector<char> out(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

template <typename T>
std::vector<T> Typed(const std::vector<char>& bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

double RelError(const std::vector<float>& got, const std::vector<float>& want, double floor) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), floor);
}

struct CudaRouterCase {
  const char* name;
  RouterConfig config;
  int64_t tokens;
  bool bias;
  std::vector<int32_t> lengths;  // Empty: the micro-batch is one sequence.
};

void PrintTo(const CudaRouterCase& c, std::ostream* os) { *os << c.name; }

class MoeRouterCudaTest : public ::testing::TestWithParam<CudaRouterCase> {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }
};

struct Outputs {
  std::vector<float> scores, probs, dlogits, aux_dlogits, losses;
  std::vector<int32_t> indices, counts;
};

TEST_P(MoeRouterCudaTest, MatchesTheCpuTwin) {
  const CudaRouterCase& k = GetParam();
  const RouterConfig& c = k.config;
  const int64_t t = k.tokens, e = c.experts;
  std::mt19937 random(5);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> logits(t * e), bias, dprobs(t * c.top_k);
  for (float& v : logits) v = normal(random);
  for (float& v : dprobs) v = normal(random);
  if (k.bias) {
    for (int64_t i = 0; i < e; ++i) bias.push_back(0.1f * normal(random));
  }
  std::vector<int32_t> cu;
  if (!k.lengths.empty()) {
    cu.push_back(0);
    for (int32_t n : k.lengths) cu.push_back(cu.back() + n);
  }
  const int64_t num_seqs = cu.empty() ? 0 : static_cast<int64_t>(cu.size()) - 1;

  // The CPU twin.
  Outputs want;
  want.scores.resize(t * e);
  want.probs.resize(t * c.top_k);
  want.indices.resize(t * c.top_k);
  want.counts.resize(e);
  want.dlogits.resize(t * e);
  want.aux_dlogits.assign(t * e, 0.0f);
  want.losses.resize(2);
  ASSERT_TRUE(MoeRouterCpu({.config = c,
                            .logits = logits.data(),
                            .expert_bias = bias.empty() ? nullptr : bias.data(),
                            .scores = want.scores.data(),
                            .indices = want.indices.data(),
                            .probs = want.probs.data(),
                            .tokens_per_expert = want.counts.data(),
                            .tokens = t})
                  .ok());
  ASSERT_TRUE(MoeRouterBackwardCpu({.config = c,
                                    .dprobs = dprobs.data(),
                                    .scores = want.scores.data(),
                                    .indices = want.indices.data(),
                                    .dlogits = want.dlogits.data(),
                                    .tokens = t})
                  .ok());
  ASSERT_TRUE(MoeAuxLossCpu({.config = c,
                             .logits = logits.data(),
                             .scores = want.scores.data(),
                             .indices = want.indices.data(),
                             .cu_seqlens = cu.empty() ? nullptr : cu.data(),
                             .num_seqs = num_seqs,
                             .tokens = t,
                             .aux_coeff = 0.01f,
                             .z_coeff = 0.001f,
                             .losses = want.losses.data(),
                             .dlogits = want.aux_dlogits.data(),
                             .loss_grad = 2.0f})
                  .ok());

  auto run = [&]() {
    DeviceBuffer d_logits(Raw(logits)), d_bias(Raw(bias)), d_dprobs(Raw(dprobs)), d_cu(Raw(cu));
    DeviceBuffer d_scores(t * e * 4), d_probs(t * c.top_k * 4), d_indices(t * c.top_k * 4),
        d_counts(e * 4), d_dlogits(t * e * 4), d_aux(Raw(std::vector<float>(t * e, 0.0f))),
        d_losses(8);
    const int64_t seqs = cu.empty() ? 1 : num_seqs;
    DeviceBuffer workspace(MoeAuxLossWorkspaceBytes(t, seqs, e));
    EXPECT_TRUE(LaunchMoeRouter({.config = c,
                                 .logits = d_logits.as<float>(),
                                 .expert_bias = bias.empty() ? nullptr : d_bias.as<float>(),
                                 .scores = d_scores.as<float>(),
                                 .indices = d_indices.as<int32_t>(),
                                 .probs = d_probs.as<float>(),
                                 .tokens_per_expert = d_counts.as<int32_t>(),
                                 .tokens = t},
                                nullptr)
                    .ok());
    // Once more, adding to the counts: they double.
    EXPECT_TRUE(LaunchMoeRouter({.config = c,
                                 .logits = d_logits.as<float>(),
                                 .expert_bias = bias.empty() ? nullptr : d_bias.as<float>(),
                                 .scores = d_scores.as<float>(),
                                 .indices = d_indices.as<int32_t>(),
                                 .probs = d_probs.as<float>(),
                                 .tokens_per_expert = d_counts.as<int32_t>(),
                                 .tokens = t,
                                 .accumulate_counts = true},
                                nullptr)
                    .ok());
    EXPECT_TRUE(LaunchMoeRouterBackward({.config = c,
                                         .dprobs = d_dprobs.as<float>(),
                                         .scores = d_scores.as<float>(),
                                         .indices = d_indices.as<int32_t>(),
                                         .dlogits = d_dlogits.as<float>(),
                                         .tokens = t},
                                        nullptr)
                    .ok());
    EXPECT_TRUE(LaunchMoeAuxLoss({.config = c,
                                  .logits = d_logits.as<float>(),
                                  .scores = d_scores.as<float>(),
                                  .indices = d_indices.as<int32_t>(),
                                  .cu_seqlens = cu.empty() ? nullptr : d_cu.as<int32_t>(),
                                  .num_seqs = num_seqs,
                                  .tokens = t,
                                  .aux_coeff = 0.01f,
                                  .z_coeff = 0.001f,
                                  .losses = d_losses.as<float>(),
                                  .dlogits = d_aux.as<float>(),
                                  .loss_grad = 2.0f,
                                  .workspace = workspace.get(),
                                  .workspace_bytes = MoeAuxLossWorkspaceBytes(t, seqs, e)},
                                 nullptr)
                    .ok());
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    Outputs o;
    o.scores = Typed<float>(d_scores.Bytes());
    o.probs = Typed<float>(d_probs.Bytes());
    o.indices = Typed<int32_t>(d_indices.Bytes());
    o.counts = Typed<int32_t>(d_counts.Bytes());
    o.dlogits = Typed<float>(d_dlogits.Bytes());
    o.aux_dlogits = Typed<float>(d_aux.Bytes());
    o.losses = Typed<float>(d_losses.Bytes());
    return o;
  };
  const Outputs got = run();
  EXPECT_EQ(got.indices, want.indices);
  std::vector<int32_t> twice = want.counts;
  for (int32_t& n : twice) n *= 2;
  EXPECT_EQ(got.counts, twice);
  EXPECT_LT(RelError(got.scores, want.scores, 1e-30), 1e-6);
  EXPECT_LT(RelError(got.probs, want.probs, 1e-30), 1e-6);
  EXPECT_LT(RelError(got.dlogits, want.dlogits, 1e-3), 1e-5);
  EXPECT_LT(RelError(got.aux_dlogits, want.aux_dlogits, 1e-12), 1e-5);
  EXPECT_NEAR(got.losses[0], want.losses[0], 1e-5 * want.losses[0]);
  EXPECT_NEAR(got.losses[1], want.losses[1], 1e-5 * want.losses[1]);
  // Reproducible: a second run gives the same bits.
  const Outputs again = run();
  EXPECT_EQ(Raw(again.dlogits), Raw(got.dlogits));
  EXPECT_EQ(Raw(again.aux_dlogits), Raw(got.aux_dlogits));
  EXPECT_EQ(Raw(again.losses), Raw(got.losses));
}

// Sequence parallelism: the auxiliary losses of rows [333, 1000) of a micro-batch given the
// whole micro-batch's counts and tokens, against the CPU twin of the same part.
TEST_F(MoeRouterCudaTest, APartOfAMicroBatchMatchesTheCpuTwin) {
  const RouterConfig c{.experts = 64, .top_k = 6};
  const int64_t t = 1000, first = 333, rows = t - first, e = c.experts;
  std::mt19937 random(9);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> logits(t * e), scores(t * e), probs(t * c.top_k);
  for (float& v : logits) v = normal(random);
  std::vector<int32_t> indices(t * c.top_k), counts(e);
  ASSERT_TRUE(MoeRouterCpu({.config = c,
                            .logits = logits.data(),
                            .scores = scores.data(),
                            .indices = indices.data(),
                            .probs = probs.data(),
                            .tokens_per_expert = counts.data(),
                            .tokens = t})
                  .ok());
  const std::vector<float> part_logits(logits.begin() + first * e, logits.end());
  const std::vector<float> part_scores(scores.begin() + first * e, scores.end());
  const std::vector<int32_t> part_indices(indices.begin() + first * c.top_k, indices.end());
  std::vector<float> want_losses(2), want_grad(rows * e, 0.0f);
  MoeAuxLossParams p{.config = c,
                     .logits = part_logits.data(),
                     .scores = part_scores.data(),
                     .indices = part_indices.data(),
                     .tokens = rows,
                     .counts = counts.data(),
                     .total_tokens = t,
                     .aux_coeff = 0.01f,
                     .z_coeff = 0.001f,
                     .losses = want_losses.data(),
                     .dlogits = want_grad.data(),
                     .loss_grad = 2.0f};
  ASSERT_TRUE(MoeAuxLossCpu(p).ok());
  DeviceBuffer d_logits(Raw(part_logits)), d_scores(Raw(part_scores)), d_indices(Raw(part_indices)),
      d_counts(Raw(counts)), d_grad(Raw(std::vector<float>(rows * e, 0.0f))), d_losses(8),
      workspace(MoeAuxLossWorkspaceBytes(rows, 1, e));
  p.logits = d_logits.as<float>();
  p.scores = d_scores.as<float>();
  p.indices = d_indices.as<int32_t>();
  p.counts = d_counts.as<int32_t>();
  p.losses = d_losses.as<float>();
  p.dlogits = d_grad.as<float>();
  p.workspace = workspace.get();
  p.workspace_bytes = MoeAuxLossWorkspaceBytes(rows, 1, e);
  ASSERT_TRUE(LaunchMoeAuxLoss(p, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> losses = Typed<float>(d_losses.Bytes());
  EXPECT_NEAR(losses[0], want_losses[0], 1e-5 * want_losses[0]);
  EXPECT_NEAR(losses[1], want_losses[1], 1e-5 * want_losses[1]);
  EXPECT_LT(RelError(Typed<float>(d_grad.Bytes()), want_grad, 1e-12), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MoeRouterCudaTest,
    ::testing::Values(
        CudaRouterCase{"MixtralSoftmax", {.experts = 8, .top_k = 2}, 4097, false, {}},
        CudaRouterCase{"FineGrainedSoftmax",
                       {.experts = 64, .top_k = 6},
                       2049,
                       false,
                       {1000, 0, 1, 63, 64, 65, 856}},
        CudaRouterCase{"QwenSigmoidBiased",
                       {.experts = 128, .top_k = 8, .score = RouterScore::kSigmoid},
                       1537,
                       true,
                       {}},
        CudaRouterCase{"DeepSeekGroupLimited",
                       {.experts = 256,
                        .top_k = 8,
                        .score = RouterScore::kSigmoid,
                        .scaling_factor = 2.5f,
                        .num_groups = 8,
                        .group_top_k = 4},
                       513,
                       true,
                       {500, 13}},
        CudaRouterCase{"NoTokens", {.experts = 4, .top_k = 2}, 0, false, {0, 0}},
        // The warp kernels' edges: experts not a multiple of 32, 1024 experts
        // (every bit of a lane's taken mask), 32 choices, a softmax with a bias, no
        // normalization, a sigmoid's single choice, a scaling factor.
        CudaRouterCase{"SoftmaxBiased40Experts",
                       {.experts = 40, .top_k = 10, .scaling_factor = 1.5f},
                       777,
                       true,
                       {}},
        CudaRouterCase{"Softmax1024ExpertsTop32",
                       {.experts = 1024, .top_k = 32, .normalize = false},
                       300,
                       false,
                       {}},
        CudaRouterCase{
            "SigmoidTop1",
            {.experts = 33, .top_k = 1, .score = RouterScore::kSigmoid, .scaling_factor = 2.0f},
            129,
            true,
            {}}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace mimo::kernels
