// Tests of mimo/moe_layer.h over random valid configurations on the CPU ops: every router setting,
// token dropping, shared experts, alignments, padding rows, packed sequences and the graph-safe
// path mixed at random; each layer builds, runs forward and backward to finite values, counts
// every real pair once, and gives the same values as the eager layer with per-expert GEMMs.
#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "mimo/moe_layer.h"
#include "mimo/packed_sequences.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using testing::Download;
using testing::ParametersByName;
using testing::Upload;

constexpr int64_t kHidden = 8;

// A random valid MoE layer configuration.
struct RandomCase {
  TransformerConfig config;
  MoeConfig moe;
  std::vector<int32_t> lengths;  // Packed sequences.
  int64_t padding_rows = 0;
};

RandomCase MakeCase(std::mt19937& random) {
  auto pick = [&](int n) { return static_cast<int>(random() % static_cast<unsigned>(n)); };
  RandomCase c;
  c.config.num_layers = 2;
  c.config.hidden_size = kHidden;
  c.config.num_attention_heads = 2;
  c.config.ffn_hidden_size = 6;
  c.config.activation = pick(2) ? MlpActivation::kSwiglu : MlpActivation::kGelu;
  c.config.add_bias_linear = false;
  c.config.init_std = 0.5f;
  c.config.dtype = DType::kF32;
  MoeConfig& m = c.moe;
  const int experts = 1 + pick(16);
  m.router.experts = experts;
  m.router.top_k = 1 + pick(std::min(experts, 4));
  m.router.score = pick(2) ? kernels::RouterScore::kSigmoid : kernels::RouterScore::kSoftmax;
  m.router.normalize = pick(2) == 1;
  if (pick(2) == 1) m.router.scaling_factor = 2.5f;
  // Group-limited routing where the groups leave top_k experts to choose from.
  for (int groups : {2, 4, 8}) {
    if (experts % groups != 0 || pick(3) != 0) continue;
    const int group_k = 1 + pick(groups);
    if (m.router.top_k % group_k == 0 && m.router.top_k <= group_k * (experts / groups)) {
      m.router.num_groups = groups;
      m.router.group_top_k = group_k;
    }
    break;
  }
  m.aux_loss_coeff = pick(2) ? 0.1f : 0.0f;
  m.per_sequence_aux_loss = pick(2) == 1;
  m.z_loss_coeff = pick(2) ? 0.01f : 0.0f;
  m.expert_ffn_hidden_size = pick(2) ? 4 : 0;
  m.shared_expert_ffn_hidden_size = pick(2) ? 4 : 0;
  m.align = 1 + pick(8);
  m.expert_bias = pick(2) == 1;
  m.capacity_factor = pick(2) ? 0.25 * (1 + pick(8)) : 0.0;
  m.drop_policy = pick(2) ? kernels::TokenDropPolicy::kPosition : kernels::TokenDropPolicy::kProbs;
  m.graph_safe = pick(4) == 0;
  const int tokens = 1 + pick(24);
  for (int left = tokens; left > 0;) {
    const int n = 1 + pick(left);
    c.lengths.push_back(n);
    left -= n;
  }
  // Padding rows (the graph-safe path and the per-sequence loss take none).
  if (!m.graph_safe && !m.per_sequence_aux_loss && pick(3) == 0) c.padding_rows = pick(tokens + 1);
  return c;
}

// What one run of a layer gives.
struct LayerRun {
  std::map<std::string, std::vector<double>> values;
  int64_t load = 0;  // Pairs counted over all experts.
};

LayerRun RunLayer(kernels::Ops& ops, const RandomCase& c, const ExpertsBuilder& experts,
                  const std::vector<float>& x, const std::vector<float>& dy) {
  LayerRun run;
  BuildContext build{.ops = &ops, .config = &c.config, .seed = 5, .prefix = "mlp"};
  auto layer = MoeLayer::Create(build, c.moe, experts);
  EXPECT_TRUE(layer.ok()) << layer.status();
  if (!layer.ok()) return run;
  auto sequences = PackedSequences::Create(ops, c.lengths);
  EXPECT_TRUE(sequences.ok()) << sequences.status();
  if (!sequences.ok()) return run;
  const int64_t t = sequences->tokens();
  std::vector<AuxLossRecord> losses;
  const StepContext ctx{.ops = &ops,
                        .sequences = &*sequences,
                        .loss_scale = 0.5f,
                        .aux_losses = &losses,
                        .padding_rows = c.padding_rows};
  auto out = (*layer)->Forward(ctx, Upload(ops, x, {t, kHidden}, DType::kF32));
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return run;
  run.values["y"] = Download(ops, out->y);
  EXPECT_EQ(losses.size(), 1u);
  if (!losses.empty()) run.values["losses"] = Download(ops, losses[0].losses);
  auto dx =
      (*layer)->Backward(ctx, std::move(out->saved), Upload(ops, dy, {t, kHidden}, DType::kF32));
  EXPECT_TRUE(dx.ok()) << dx.status();
  if (!dx.ok()) return run;
  run.values["dx"] = Download(ops, *dx);
  for (const auto& [name, p] : ParametersByName(**layer)) {
    run.values[name + ".grad"] = Download(ops, p->grad());
  }
  auto load = (*layer)->TakeExpertLoad(ops);
  EXPECT_TRUE(load.ok()) << load.status();
  if (load.ok()) {
    for (int64_t n : *load) run.load += n;
  }
  return run;
}

TEST(MoeLayerRandomTest, RandomConfigsRunCountAndAgree) {
  auto ops = kernels::NewCpuOps();
  const unsigned seed = std::random_device{}();
  std::mt19937 random(seed);
  const SequentialExpertsBuilder sequential;
  const GroupedExpertsBuilder grouped;
  for (int i = 0; i < 1000; ++i) {
    const RandomCase c = MakeCase(random);
    SCOPED_TRACE(absl::StrCat("seed ", seed, " case ", i, ": experts ", c.moe.router.experts,
                              " top_k ", c.moe.router.top_k, " groups ", c.moe.router.num_groups,
                              " capacity ", c.moe.capacity_factor, " align ", c.moe.align,
                              " graph_safe ", c.moe.graph_safe, " padding ", c.padding_rows));
    int64_t tokens = 0;
    for (int32_t n : c.lengths) tokens += n;
    const std::vector<float> x = testing::RandomFloats(tokens * kHidden, random);
    const std::vector<float> dy = testing::RandomFloats(tokens * kHidden, random);
    // Grouped GEMMs (which the graph-safe path needs).
    const LayerRun want = RunLayer(*ops, c, grouped, x, dy);
    ASSERT_FALSE(want.values.empty());
    for (const auto& [name, values] : want.values) {
      for (double v : values) ASSERT_TRUE(std::isfinite(v)) << name;
    }
    // Every real (token, choice) pair counts once, dropped or not; padding rows never.
    EXPECT_EQ(want.load, (tokens - c.padding_rows) * c.moe.router.top_k);
    // The eager layer with per-expert GEMMs: the same values (graph-safe or not, every row's
    // products are computed alone on the CPU).
    RandomCase eager = c;
    eager.moe.graph_safe = false;
    const LayerRun got = RunLayer(*ops, eager, sequential, x, dy);
    EXPECT_EQ(got.values, want.values);
    EXPECT_EQ(got.load, want.load);
  }
}

}  // namespace
}  // namespace mimo
