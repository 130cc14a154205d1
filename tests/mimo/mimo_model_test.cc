// Tests of mimo/mimo_model.h on the CPU ops: the whole model (vision and audio encoders feeding an
// MoE language model) against central differences of its loss plus auxiliary losses for every
// parameter of every module, so gradients provably cross from the language model into the
// encoders; config and batch errors.
#include "mimo/mimo_model.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "mimo/optimizer.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::Download;
using testing::ParametersByName;
using testing::RandomFloats;
using testing::Upload;
using testing::UploadInts;

TransformerConfig Encoder() {
  TransformerConfig t;
  t.num_layers = 1;
  t.hidden_size = 6;
  t.num_attention_heads = 2;
  t.ffn_hidden_size = 4;
  t.norm = NormKind::kLayerNorm;
  t.activation = MlpActivation::kGelu;
  t.causal = false;
  t.rotary = false;
  t.init_std = 0.4f;
  t.dtype = DType::kF32;
  return t;
}

MimoModelConfig Config() {
  MimoModelConfig c;
  LanguageModelConfig& l = c.language;
  l.transformer.num_layers = 1;
  l.transformer.hidden_size = 8;
  l.transformer.num_attention_heads = 2;
  l.transformer.ffn_hidden_size = 6;
  l.transformer.add_bias_linear = false;
  l.transformer.init_std = 0.4f;
  l.transformer.dtype = DType::kF32;
  l.vocab_size = 11;
  MoeConfig m;
  m.router = {.experts = 4, .top_k = 2};
  m.aux_loss_coeff = 0.1f;
  m.align = 2;
  l.moe = m;
  ModalityEncoderConfig v;
  v.input = EncoderInput::kImages;
  v.image_size = 4;
  v.patch_size = 2;
  v.num_channels = 2;
  v.transformer = Encoder();
  v.projector = {.kind = ProjectorKind::kMlp, .hidden_size = 5};
  v.output_size = 8;
  c.vision = v;
  ModalityEncoderConfig a;
  a.input = EncoderInput::kAudio;
  a.num_mel_bins = 3;
  a.frames_per_token = 2;
  a.max_frames = 4;
  a.transformer = Encoder();
  a.projector = {.kind = ProjectorKind::kLinear};
  a.output_size = 8;
  c.audio = a;
  return c;
}

class MimoModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ops_ = kernels::NewCpuOps();
    config_ = Config();
    BuildContext build{.ops = ops_.get(), .config = &config_.language.transformer, .seed = 2};
    auto model = MimoModel::Create(build, config_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    auto seqs = PackedSequences::Create(*ops_, {12, 8});
    ASSERT_TRUE(seqs.ok());
    seqs_ = std::make_unique<PackedSequences>(*std::move(seqs));
    std::mt19937 random(6);
    // Sample 0: 2 images (8 tokens at 1..8) and text; sample 1: audio of 4 + 2 frames (3
    // tokens at 13..15) and text. Token 10 is the placeholder.
    std::vector<int32_t> tokens(20), labels(20);
    for (int i = 0; i < 20; ++i) {
      tokens[i] = static_cast<int32_t>(random() % 10);
      labels[i] = static_cast<int32_t>(random() % 11);
    }
    for (int i = 1; i <= 8; ++i) batch_.vision_positions.push_back(i);
    for (int i = 13; i <= 15; ++i) batch_.audio_positions.push_back(i);
    for (int p : batch_.vision_positions) tokens[p] = 10, labels[p] = -1;
    for (int p : batch_.audio_positions) tokens[p] = 10, labels[p] = -1;
    labels[11] = labels[19] = -1;  // No next token after a sequence's last.
    batch_.text = {.tokens = UploadInts(*ops_, tokens), .labels = UploadInts(*ops_, labels)};
    batch_.vision.input =
        Upload(*ops_, RandomFloats(2 * 2 * 4 * 4, random), {2, 2, 4, 4}, DType::kF32);
    batch_.audio.frames = {4, 2};
    batch_.audio.input = Upload(*ops_, RandomFloats(6 * 3, random), {6, 3}, DType::kF32);
  }
  StepContext Context(std::vector<AuxLossRecord>* records) {
    return {.ops = ops_.get(), .sequences = seqs_.get(), .loss_scale = 0.5f, .aux_losses = records};
  }
  double Objective() {
    std::vector<AuxLossRecord> records;
    auto out = model_->Forward(Context(&records), batch_);
    EXPECT_TRUE(out.ok()) << out.status();
    double l = Download(*ops_, out->loss_sum)[0];
    for (const AuxLossRecord& r : records) {
      for (double v : Download(*ops_, r.losses)) l += v;
    }
    return 0.5 * l;
  }

  std::unique_ptr<kernels::Ops> ops_;
  MimoModelConfig config_;
  std::unique_ptr<MimoModel> model_;
  std::unique_ptr<PackedSequences> seqs_;
  MimoBatch batch_;
};

TEST_F(MimoModelTest, BackwardMatchesCentralDifferencesAcrossModules) {
  std::vector<AuxLossRecord> records;
  auto out = model_->Forward(Context(&records), batch_);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE(model_->Backward(Context(nullptr), std::move(out->saved), 0.5f).ok());
  constexpr float h = 1e-3f;
  int failures = 0;
  std::map<std::string, int> checked;  // Per module.
  for (const auto& [name, p] : ParametersByName(*model_)) {
    const std::vector<double> grad = Download(*ops_, p->grad());
    for (int64_t i = 0; i < p->numel(); ++i) {
      float& e = p->master().data<float>()[i];
      const float saved = e;
      e = saved + h;
      const double plus = Objective();
      e = saved - h;
      const double minus = Objective();
      e = saved;
      const double numeric = (plus - minus) / (2.0 * h);
      ++checked[name.substr(0, name.find('.'))];
      if (std::abs(grad[i] - numeric) > 3e-3 + 3e-3 * std::abs(numeric) && ++failures <= 5) {
        ADD_FAILURE() << name << "[" << i << "]: analytic " << grad[i] << ", numeric " << numeric;
      }
    }
  }
  EXPECT_EQ(failures, 0);
  EXPECT_GT(checked["vision"], 100);
  EXPECT_GT(checked["audio"], 100);
  EXPECT_GT(checked["language"], 300);
}

// Forward, backward and AdamW over every module, repeated on one batch: the model memorizes it
// (the loss falls far below its start), so gradients and updates reach every part that matters.
TEST_F(MimoModelTest, AdamWStepsFitAFixedBatch) {
  std::vector<Parameter*> params;
  model_->AppendParameters(params);
  auto opt = AdamWOptimizer::Create(
      *ops_, {.lr = 0.03f, .weight_decay = 0.0f, .clip_grad = 1.0f, .warmup_steps = 5}, params);
  ASSERT_TRUE(opt.ok()) << opt.status();
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    for (Parameter* p : params) ASSERT_TRUE(p->ZeroGrad(*ops_).ok());
    auto out = model_->Forward(Context(nullptr), batch_);
    ASSERT_TRUE(out.ok()) << out.status();
    last = Download(*ops_, out->loss_sum)[0];
    if (step == 0) first = last;
    ASSERT_TRUE(model_->Backward(Context(nullptr), std::move(out->saved), 0.5f).ok());
    auto stats = (*opt)->Step(*ops_);
    ASSERT_TRUE(stats.ok()) << stats.status();
    ASSERT_FALSE(stats->skipped);
  }
  EXPECT_LT(last, 0.2 * first) << "loss " << first << " -> " << last;
}

TEST_F(MimoModelTest, RejectsMismatchedBatchesAndConfigs) {
  MimoBatch bad = batch_;
  bad.vision_positions.pop_back();  // 7 placeholders for 8 vision tokens.
  EXPECT_EQ(model_->Forward(Context(nullptr), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  MimoModelConfig config = Config();
  config.audio->output_size = 7;
  const absl::Status s = ValidateMimoModelConfig(config);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("audio: output_size 7"), absl::string_view::npos) << s;
  config = Config();
  config.audio.reset();
  BuildContext build{.ops = ops_.get(), .config = &config.language.transformer};
  auto no_audio = MimoModel::Create(build, config);
  ASSERT_TRUE(no_audio.ok());
  const absl::Status missing = (*no_audio)->Forward(Context(nullptr), batch_).status();
  EXPECT_NE(missing.message().find("no audio encoder"), absl::string_view::npos) << missing;
}

}  // namespace
}  // namespace mimo
