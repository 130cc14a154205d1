// Tests of worker/model_spec.h: the bundled example specs' models map onto mimo configs with
// their sizes and the documented defaults, and build; bad specs name the module at fault.
#include "worker/model_spec.h"

#include <gtest/gtest.h>

#include <string>

#include "kernels/ops.h"
#include "tools/mimoctl/spec_file.h"

namespace mimo::worker {
namespace {

v1::JobSpec Example(const std::string& name) {
  auto spec = tools::ReadJobSpecFile(std::string(MIMO_EXAMPLES_DIR) + "/" + name);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : v1::JobSpec();
}

TEST(ModelSpecTest, MapsTheCpuExample) {
  const v1::JobSpec spec = Example("mimo-cpu-8.yaml");
  auto config = MimoModelConfigFromSpec(spec, ComputeDType(spec.training().precision(), false));
  ASSERT_TRUE(config.ok()) << config.status();
  const LanguageModelConfig& l = config->language;
  EXPECT_EQ(l.vocab_size, 256);
  EXPECT_EQ(l.transformer.num_layers, 2);
  EXPECT_EQ(l.transformer.hidden_size, 64);
  EXPECT_EQ(l.transformer.query_groups(), 2);
  EXPECT_EQ(l.transformer.norm, NormKind::kRmsNorm);
  EXPECT_TRUE(l.transformer.causal);
  EXPECT_EQ(l.transformer.dtype, kernels::DType::kF32);  // PRECISION_FP32 in the spec.
  ASSERT_TRUE(l.moe.has_value());
  EXPECT_EQ(l.moe->router.experts, 4);
  EXPECT_EQ(l.moe->router.top_k, 2);
  EXPECT_FLOAT_EQ(l.moe->aux_loss_coeff, 0.01f);
  EXPECT_EQ(l.moe_layer_freq, 1);
  EXPECT_EQ(l.vocab_chunk, 32768);  // Unset in the spec: the default.
  ASSERT_TRUE(config->vision.has_value());
  EXPECT_EQ(config->vision->max_tokens(), 16);  // (32 / 8)^2 patches.
  EXPECT_EQ(config->vision->projector.kind, ProjectorKind::kMlp);
  EXPECT_EQ(config->vision->output_size, 64);
  EXPECT_FALSE(config->vision->transformer.causal);
  ASSERT_TRUE(config->audio.has_value());
  EXPECT_EQ(config->audio->max_tokens(), 16);  // 64 frames / 4.
  EXPECT_EQ(config->audio->projector.kind, ProjectorKind::kLinear);
  // And the model builds (fp32 on CPU).
  auto f32 = MimoModelConfigFromSpec(spec, kernels::DType::kF32);
  ASSERT_TRUE(f32.ok());
  auto ops = kernels::NewCpuOps();
  BuildContext build{.ops = ops.get(), .config = &f32->language.transformer, .seed = 1234};
  auto model = MimoModel::Create(build, *f32);
  EXPECT_TRUE(model.ok()) << model.status();
}

TEST(ModelSpecTest, MapsTheGpuExample) {
  const v1::JobSpec spec = Example("mimo-gpu-2.yaml");
  auto config = MimoModelConfigFromSpec(spec, ComputeDType(spec.training().precision(), true));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->language.transformer.dtype, kernels::DType::kBF16);
}

TEST(ModelSpecTest, TakesTheVocabularyChunk) {
  v1::JobSpec spec = Example("mimo-cpu-8.yaml");
  for (v1::Module& m : *spec.mutable_modules()) {
    if (m.has_language()) m.mutable_language()->set_vocab_chunk(100);
  }
  auto config = MimoModelConfigFromSpec(spec, kernels::DType::kF32);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->language.vocab_chunk, 100);
}

v1::MoE& LanguageMoe(v1::JobSpec& spec) {
  for (v1::Module& m : *spec.mutable_modules()) {
    if (m.has_language()) return *m.mutable_language()->mutable_moe();
  }
  ADD_FAILURE() << "no language module";
  return *spec.add_modules()->mutable_language()->mutable_moe();
}

TEST(ModelSpecTest, RouterSettingsDefaultAsMegatronDoes) {
  auto config = MimoModelConfigFromSpec(Example("mimo-cpu-8.yaml"), kernels::DType::kF32);
  ASSERT_TRUE(config.ok()) << config.status();
  const MoeConfig& m = *config->language.moe;
  EXPECT_TRUE(m.router.normalize);
  EXPECT_EQ(m.router.scaling_factor, 1.0f);
  EXPECT_EQ(m.router.num_groups, 0);
  EXPECT_EQ(m.router.group_top_k, 0);
  EXPECT_FALSE(m.per_sequence_aux_loss);
  EXPECT_FALSE(m.expert_bias);
  EXPECT_EQ(m.expert_bias_update_rate, 1e-3f);
  EXPECT_EQ(m.drop_policy, kernels::TokenDropPolicy::kProbs);
}

TEST(ModelSpecTest, MapsTheRouterSettings) {
  v1::JobSpec spec = Example("mimo-cpu-8.yaml");
  v1::MoE& moe = LanguageMoe(spec);
  moe.set_router_score(v1::MoE::ROUTER_SCORE_SIGMOID);
  moe.set_normalize_weights(false);
  moe.set_top_k_scaling_factor(2.5);
  moe.set_num_groups(2);
  moe.set_group_top_k(1);
  moe.set_per_sequence_aux_loss(true);
  moe.set_expert_bias(true);
  moe.set_expert_bias_update_rate(0.01);
  moe.set_capacity_factor(1.5);
  moe.set_drop_policy(v1::MoE::DROP_POLICY_POSITION);
  auto config = MimoModelConfigFromSpec(spec, kernels::DType::kF32);
  ASSERT_TRUE(config.ok()) << config.status();
  const MoeConfig& m = *config->language.moe;
  EXPECT_EQ(m.router.score, kernels::RouterScore::kSigmoid);
  EXPECT_FALSE(m.router.normalize);
  EXPECT_EQ(m.router.scaling_factor, 2.5f);
  EXPECT_EQ(m.router.num_groups, 2);
  EXPECT_EQ(m.router.group_top_k, 1);
  EXPECT_TRUE(m.per_sequence_aux_loss);
  EXPECT_TRUE(m.expert_bias);
  EXPECT_EQ(m.expert_bias_update_rate, 0.01f);
  EXPECT_EQ(m.capacity_factor, 1.5);
  EXPECT_EQ(m.drop_policy, kernels::TokenDropPolicy::kPosition);
  // The model builds with them.
  auto ops = kernels::NewCpuOps();
  BuildContext build{.ops = ops.get(), .config = &config->language.transformer, .seed = 7};
  auto model = MimoModel::Create(build, *config);
  EXPECT_TRUE(model.ok()) << model.status();
  // A group setting the router refuses names the language module.
  LanguageMoe(spec).set_group_top_k(3);  // Above num_groups.
  auto bad = MimoModelConfigFromSpec(spec, kernels::DType::kF32);
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("module \"language\""), absl::string_view::npos)
      << bad.status();
  EXPECT_NE(bad.status().message().find("group_top_k"), absl::string_view::npos) << bad.status();
}

TEST(ModelSpecTest, ComputeDTypeFollowsPrecisionAndDevice) {
  EXPECT_EQ(ComputeDType(v1::PRECISION_FP32, true), kernels::DType::kF32);
  EXPECT_EQ(ComputeDType(v1::PRECISION_BF16, false), kernels::DType::kBF16);
  EXPECT_EQ(ComputeDType(v1::PRECISION_UNSPECIFIED, true), kernels::DType::kBF16);
  EXPECT_EQ(ComputeDType(v1::PRECISION_UNSPECIFIED, false), kernels::DType::kF32);
}

TEST(ModelSpecTest, NamesTheModuleAtFault) {
  v1::JobSpec spec = Example("mimo-cpu-8.yaml");
  for (v1::Module& m : *spec.mutable_modules()) {
    if (m.has_vision()) m.mutable_vision()->set_image_size(30);  // Not a multiple of 8.
  }
  auto bad = MimoModelConfigFromSpec(spec, kernels::DType::kF32);
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("module \"vision\""), absl::string_view::npos)
      << bad.status();
  spec = Example("mimo-cpu-8.yaml");
  v1::JobSpec no_language;
  for (const v1::Module& m : spec.modules()) {
    if (!m.has_language()) *no_language.add_modules() = m;
  }
  EXPECT_NE(MimoModelConfigFromSpec(no_language, kernels::DType::kF32)
                .status()
                .message()
                .find("no language module"),
            absl::string_view::npos);
  *spec.add_modules() = spec.modules(0);
  EXPECT_NE(MimoModelConfigFromSpec(spec, kernels::DType::kF32)
                .status()
                .message()
                .find("a second vision encoder"),
            absl::string_view::npos);
}

}  // namespace
}  // namespace mimo::worker
