// Tests of mimo/optimizer.h on the CPU ops: the learning-rate schedule; two AdamW updates with
// clipping and per-parameter weight decay against float64; a non-finite gradient norm skips the
// update; bf16 weights follow the masters; bad configs.
#include "mimo/optimizer.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using testing::Download;

TEST(LearningRateTest, WarmsUpThenFollowsTheCosine) {
  const OptimizerConfig c{.lr = 1.0f, .min_lr = 0.1f, .warmup_steps = 4, .decay_steps = 10};
  EXPECT_DOUBLE_EQ(LearningRate(c, 1), 0.25);
  EXPECT_DOUBLE_EQ(LearningRate(c, 4), 1.0);
  EXPECT_NEAR(LearningRate(c, 9), 0.1 + 0.45, 1e-6);  // Half way: t = 0.5.
  EXPECT_NEAR(LearningRate(c, 14), 0.1, 1e-6);
  EXPECT_NEAR(LearningRate(c, 100), 0.1, 1e-6);  // Holds at min_lr.
  const OptimizerConfig flat{.lr = 0.5f};
  EXPECT_DOUBLE_EQ(LearningRate(flat, 1), 0.5);
  EXPECT_DOUBLE_EQ(LearningRate(flat, 1000), 0.5);
}

std::unique_ptr<Parameter> NewParam(kernels::Ops& ops, const std::string& name, int64_t n,
                                    bool decay, DType dtype) {
  auto p = Parameter::Create(
      ops,
      {.name = name, .shape = {n}, .init = InitKind::kNormal, .std = 1.0f, .weight_decay = decay},
      dtype, 7);
  EXPECT_TRUE(p.ok()) << p.status();
  return *std::move(p);
}

TEST(AdamWOptimizerTest, TwoClippedStepsMatchFloat64) {
  auto ops = kernels::NewCpuOps();
  std::vector<std::unique_ptr<Parameter>> params;
  params.push_back(NewParam(*ops, "w", 5, true, DType::kBF16));
  params.push_back(NewParam(*ops, "b", 3, false, DType::kBF16));
  const OptimizerConfig c{.lr = 0.1f,
                          .min_lr = 0.01f,
                          .weight_decay = 0.5f,
                          .beta1 = 0.8f,
                          .beta2 = 0.9f,
                          .eps = 1e-6f,
                          .clip_grad = 1.0f,
                          .warmup_steps = 1,
                          .decay_steps = 2};
  auto opt = AdamWOptimizer::Create(*ops, c, {params[0].get(), params[1].get()});
  ASSERT_TRUE(opt.ok()) << opt.status();
  // float64 state.
  std::vector<std::vector<double>> master, m(2), v(2);
  for (const auto& p : params) master.push_back(Download(*ops, p->master()));
  for (int i = 0; i < 2; ++i) m[i].assign(master[i].size(), 0), v[i].assign(master[i].size(), 0);
  const std::vector<std::vector<float>> grads_per_step[2] = {
      {{3, -4, 0, 1, 2}, {0.5f, -1, 2}},               // Norm about 5.9: clipped to 1.
      {{0.1f, 0.2f, -0.1f, 0, 0.05f}, {0, 0.1f, 0}}};  // Norm about 0.27: not clipped.
  for (int step = 1; step <= 2; ++step) {
    const auto& grads = grads_per_step[step - 1];
    double sq = 0;
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(
          ops->CopyFromHost(params[i]->grad().data(), grads[i].data(), 4 * grads[i].size()).ok());
      for (float g : grads[i]) sq += static_cast<double>(g) * g;
    }
    auto stats = (*opt)->Step(*ops);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->step, step);
    EXPECT_FALSE(stats->skipped);
    EXPECT_NEAR(stats->grad_norm, std::sqrt(sq), 1e-5);
    const double lr = LearningRate(c, step), norm = std::sqrt(sq);
    const double scale = std::min(1.0, 1.0 / (norm + 1e-6));
    for (int i = 0; i < 2; ++i) {
      const double wd = i == 0 ? 0.5 : 0.0;
      for (size_t j = 0; j < master[i].size(); ++j) {
        const double g = grads[i][j] * scale;
        m[i][j] = 0.8 * m[i][j] + 0.2 * g;
        v[i][j] = 0.9 * v[i][j] + 0.1 * g * g;
        const double mh = m[i][j] / (1 - std::pow(0.8, step));
        const double vh = v[i][j] / (1 - std::pow(0.9, step));
        master[i][j] -= lr * (mh / (std::sqrt(vh) + 1e-6) + wd * master[i][j]);
      }
      const std::vector<double> got = Download(*ops, params[i]->master());
      const std::vector<double> weight = Download(*ops, params[i]->weight());
      for (size_t j = 0; j < got.size(); ++j) {
        EXPECT_NEAR(got[j], master[i][j], 1e-5 * (1 + std::abs(master[i][j])))
            << "step " << step << " param " << i << " [" << j << "]";
        EXPECT_NEAR(weight[j], got[j], 1e-2 * std::abs(got[j]) + 1e-6);  // Its bf16 rounding.
      }
    }
  }
  EXPECT_EQ((*opt)->steps(), 2);
}

TEST(AdamWOptimizerTest, SkipsANonFiniteNorm) {
  auto ops = kernels::NewCpuOps();
  auto p = NewParam(*ops, "w", 4, true, DType::kF32);
  auto opt = AdamWOptimizer::Create(*ops, {}, {p.get()});
  ASSERT_TRUE(opt.ok());
  const std::vector<double> before = Download(*ops, p->master());
  const std::vector<float> grad = {1, NAN, 0, 2};
  ASSERT_TRUE(ops->CopyFromHost(p->grad().data(), grad.data(), 16).ok());
  auto stats = (*opt)->Step(*ops);
  ASSERT_TRUE(stats.ok());
  EXPECT_TRUE(stats->skipped);
  EXPECT_EQ((*opt)->steps(), 0);
  EXPECT_EQ(Download(*ops, p->master()), before);
}

TEST(AdamWOptimizerTest, RejectsBadConfigs) {
  for (const OptimizerConfig& c :
       {OptimizerConfig{.lr = 0}, OptimizerConfig{.lr = 1, .min_lr = 2},
        OptimizerConfig{.beta1 = 1}, OptimizerConfig{.eps = 0}, OptimizerConfig{.clip_grad = -1},
        OptimizerConfig{.warmup_steps = -1}}) {
    EXPECT_EQ(ValidateOptimizerConfig(c).code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace mimo
