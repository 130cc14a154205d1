// Tests of mimo/modality_encoder.h (and its projector) on the CPU ops: the vision encoder's
// forward against float64 (patches, input projection, position embeddings, a bidirectional
// LayerNorm/GELU layer, final norm, MLP projector), the audio encoder's (stacked frames, positions
// restarting per clip, linear projector); vision and audio backwards against central
// differences for every parameter; Megatron-style names; bad inputs.
#include "mimo/modality_encoder.h"

#include <cmath>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/kernels/gelu_reference.h"
#include "tests/kernels/layernorm_reference.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::Download;
using testing::ParametersByName;
using testing::RandomFloats;
using testing::Upload;

ModalityEncoderConfig Config(EncoderInput input) {
  ModalityEncoderConfig c;
  c.input = input;
  c.image_size = 4;
  c.patch_size = 2;
  c.num_channels = 3;
  c.num_mel_bins = 3;
  c.frames_per_token = 2;
  c.max_frames = 8;
  TransformerConfig& t = c.transformer;
  t.num_layers = 1;
  t.hidden_size = 8;
  t.num_attention_heads = 2;
  t.ffn_hidden_size = 6;
  t.norm = NormKind::kLayerNorm;
  t.activation = MlpActivation::kGelu;
  t.causal = false;
  t.rotary = false;
  t.init_std = 0.4f;
  t.dtype = DType::kF32;
  c.projector = {
      .kind = input == EncoderInput::kImages ? ProjectorKind::kMlp : ProjectorKind::kLinear,
      .hidden_size = 5};
  c.output_size = 6;
  return c;
}

struct Setup {
  std::unique_ptr<kernels::Ops> ops = kernels::NewCpuOps();
  ModalityEncoderConfig config;
  std::unique_ptr<ModalityEncoder> encoder;
  std::vector<float> input;
  EncoderBatch batch;
};

std::unique_ptr<Setup> MakeSetup(EncoderInput kind) {
  auto s = std::make_unique<Setup>();
  s->config = Config(kind);
  BuildContext build{
      .ops = s->ops.get(), .config = &s->config.transformer, .seed = 4, .prefix = "vision"};
  auto encoder = ModalityEncoder::Create(build, s->config);
  EXPECT_TRUE(encoder.ok()) << encoder.status();
  if (!encoder.ok()) return nullptr;
  s->encoder = *std::move(encoder);
  std::mt19937 random(5);
  if (kind == EncoderInput::kImages) {
    s->input = RandomFloats(2 * 3 * 4 * 4, random);
    s->batch.input = Upload(*s->ops, s->input, {2, 3, 4, 4}, DType::kF32);
  } else {
    s->batch.frames = {8, 2, 4};  // 4, 1 and 2 tokens.
    s->input = RandomFloats(14 * 3, random);
    s->batch.input = Upload(*s->ops, s->input, {14, 3}, DType::kF32);
  }
  return s;
}

TEST(ModalityEncoderTest, VisionForwardMatchesFloat64) {
  auto s = MakeSetup(EncoderInput::kImages);
  ASSERT_NE(s, nullptr);
  auto out = s->encoder->Forward({.ops = s->ops.get()}, s->batch);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->tokens, (std::vector<int32_t>{4, 4}));
  std::map<std::string, std::vector<double>> w;
  for (const auto& [name, p] : ParametersByName(*s->encoder)) {
    w[name] = Download(*s->ops, p->master());
  }
  const int64_t t = 8, c = 8, f = 12;
  // Patches: feature (ch, dy, dx) of patch (py, px).
  std::vector<double> rows(t * f);
  for (int b = 0; b < 2; ++b) {
    for (int py = 0; py < 2; ++py) {
      for (int px = 0; px < 2; ++px) {
        for (int ch = 0; ch < 3; ++ch) {
          for (int dy = 0; dy < 2; ++dy) {
            for (int dx = 0; dx < 2; ++dx) {
              rows[(b * 4 + py * 2 + px) * f + (ch * 2 + dy) * 2 + dx] =
                  s->input[((b * 3 + ch) * 4 + py * 2 + dy) * 4 + px * 2 + dx];
            }
          }
        }
      }
    }
  }
  auto linear = [](const std::vector<double>& x, const std::vector<double>& weight,
                   const std::vector<double>& bias, int64_t n, int64_t in, int64_t out) {
    return kernels::testing::GemmFloat64(x, false, weight, true, n, out, in, bias);
  };
  std::vector<double> x = linear(rows, w["vision.embeddings.input_projection.weight"],
                                 w["vision.embeddings.input_projection.bias"], t, f, c);
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t j = 0; j < c; ++j) {
      x[r * c + j] += w["vision.embeddings.position_embedding.weight"][(r % 4) * c + j];
    }
  }
  x = testing::TransformerLayerFloat64(s->config.transformer, "vision.encoder.layers.0", w, x,
                                       {4, 4});
  x = kernels::testing::LayerNormFloat64(
          x, w["vision.encoder.final_layernorm.weight"], w["vision.encoder.final_layernorm.bias"],
          std::vector<double>(t * c), t, c, s->config.transformer.norm_epsilon)
          .y;
  x = linear(x, w["vision.projector.linear_fc1.weight"], w["vision.projector.linear_fc1.bias"], t,
             c, 5);
  x = kernels::testing::GeluFloat64(x, kernels::GeluApproximation::kNone);
  x = linear(x, w["vision.projector.linear_fc2.weight"], w["vision.projector.linear_fc2.bias"], t,
             5, 6);
  EXPECT_LT(testing::RelL2(Download(*s->ops, out->embeddings), x), 1e-5);
}

// The audio encoder: frames_per_token consecutive frames stacked into a token (the frame
// embedding is the input projection of that stack), positions restarting in every clip,
// attention within each clip only, final norm, linear projector.
TEST(ModalityEncoderTest, AudioForwardMatchesFloat64) {
  auto s = MakeSetup(EncoderInput::kAudio);
  ASSERT_NE(s, nullptr);
  auto out = s->encoder->Forward({.ops = s->ops.get()}, s->batch);
  ASSERT_TRUE(out.ok()) << out.status();
  const std::vector<int32_t> clips = {4, 1, 2};
  EXPECT_EQ(out->tokens, clips);
  std::map<std::string, std::vector<double>> w;
  for (const auto& [name, p] : ParametersByName(*s->encoder)) {
    w[name] = Download(*s->ops, p->master());
  }
  const int64_t t = 7, c = 8, f = 6;  // 14 frames of 3 bins, 2 frames a token.
  // Token r's features are frames 2r and 2r + 1, one after the other: the input as it lies.
  const std::vector<double> rows(s->input.begin(), s->input.end());
  ASSERT_EQ(static_cast<int64_t>(rows.size()), t * f);
  std::vector<double> x =
      kernels::testing::GemmFloat64(rows, false, w["vision.embeddings.input_projection.weight"],
                                    true, t, c, f, w["vision.embeddings.input_projection.bias"]);
  int64_t r = 0;
  for (const int32_t clip : clips) {
    for (int32_t i = 0; i < clip; ++i, ++r) {
      for (int64_t j = 0; j < c; ++j) {
        x[r * c + j] += w["vision.embeddings.position_embedding.weight"][i * c + j];
      }
    }
  }
  x = testing::TransformerLayerFloat64(s->config.transformer, "vision.encoder.layers.0", w, x,
                                       clips);
  x = kernels::testing::LayerNormFloat64(
          x, w["vision.encoder.final_layernorm.weight"], w["vision.encoder.final_layernorm.bias"],
          std::vector<double>(t * c), t, c, s->config.transformer.norm_epsilon)
          .y;
  x = kernels::testing::GemmFloat64(x, false, w["vision.projector.linear_fc1.weight"], true, t, 6,
                                    c, w["vision.projector.linear_fc1.bias"]);
  EXPECT_LT(testing::RelL2(Download(*s->ops, out->embeddings), x), 1e-5);
}

class ModalityEncoderGradTest : public ::testing::TestWithParam<EncoderInput> {};

TEST_P(ModalityEncoderGradTest, BackwardMatchesCentralDifferences) {
  auto s = MakeSetup(GetParam());
  ASSERT_NE(s, nullptr);
  const StepContext ctx{.ops = s->ops.get()};
  auto out = s->encoder->Forward(ctx, s->batch);
  ASSERT_TRUE(out.ok()) << out.status();
  std::mt19937 random(9);
  const std::vector<float> r = RandomFloats(out->embeddings.numel(), random);
  ASSERT_TRUE(s->encoder
                  ->Backward(ctx, std::move(out->saved),
                             Upload(*s->ops, r, out->embeddings.shape(), DType::kF32))
                  .ok());
  auto objective = [&] {
    auto again = s->encoder->Forward(ctx, s->batch);
    EXPECT_TRUE(again.ok());
    const std::vector<double> y = Download(*s->ops, again->embeddings);
    double l = 0;
    for (size_t i = 0; i < y.size(); ++i) l += y[i] * r[i];
    return l;
  };
  constexpr float h = 1e-3f;
  int failures = 0, checked = 0;
  for (const auto& [name, p] : ParametersByName(*s->encoder)) {
    const std::vector<double> grad = Download(*s->ops, p->grad());
    for (int64_t i = 0; i < p->numel(); ++i) {
      float& e = p->master().data<float>()[i];
      const float saved = e;
      e = saved + h;
      const double plus = objective();
      e = saved - h;
      const double minus = objective();
      e = saved;
      const double numeric = (plus - minus) / (2.0 * h);
      ++checked;
      if (std::abs(grad[i] - numeric) > 2e-3 + 2e-3 * std::abs(numeric) && ++failures <= 5) {
        ADD_FAILURE() << name << "[" << i << "]: analytic " << grad[i] << ", numeric " << numeric;
      }
    }
  }
  EXPECT_EQ(failures, 0) << "of " << checked;
  EXPECT_GT(checked, 300);
}

INSTANTIATE_TEST_SUITE_P(Inputs, ModalityEncoderGradTest,
                         ::testing::Values(EncoderInput::kImages, EncoderInput::kAudio),
                         [](const auto& info) {
                           return info.param == EncoderInput::kImages ? "Vision" : "Audio";
                         });

// Pipeline stages chained by hand (each stage's output rows the next one's input; later stages
// get the samples' sizes, not the input) give the whole encoder's embeddings and parameter
// gradients, bitwise; every parameter on one stage under its whole-model name; layers that do not
// split over the stages are refused.
TEST_P(ModalityEncoderGradTest, PipelineStagesEqualTheWholeEncoder) {
  auto s = MakeSetup(GetParam());
  ASSERT_NE(s, nullptr);
  ModalityEncoderConfig config = s->config;
  config.transformer.num_layers = 4;
  BuildContext build{
      .ops = s->ops.get(), .config = &config.transformer, .seed = 4, .prefix = "vision"};
  auto whole = ModalityEncoder::Create(build, config);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const StepContext ctx{.ops = s->ops.get(), .dropout_seed = 3};
  auto whole_out = (*whole)->Forward(ctx, s->batch);
  ASSERT_TRUE(whole_out.ok()) << whole_out.status();
  std::mt19937 random(9);
  const Tensor dy = Upload(*s->ops, RandomFloats(whole_out->embeddings.numel(), random),
                           whole_out->embeddings.shape(), DType::kF32);
  ASSERT_TRUE((*whole)->Backward(ctx, std::move(whole_out->saved), dy).ok());
  const auto whole_params = ParametersByName(**whole);
  for (const int count : {2, 4}) {
    SCOPED_TRACE(::testing::Message() << count << " stages");
    std::vector<std::unique_ptr<ModalityEncoder>> stages;
    for (int i = 0; i < count; ++i) {
      auto stage = ModalityEncoder::Create(build, config, {.index = i, .count = count});
      ASSERT_TRUE(stage.ok()) << stage.status();
      stages.push_back(*std::move(stage));
    }
    std::vector<std::unique_ptr<SavedActivations>> saved(count);
    EncoderBatch batch = s->batch;
    EncoderOutput out;
    for (int i = 0; i < count; ++i) {
      if (i == 1) {  // Later stages: the sizes, not the input.
        batch.images = GetParam() == EncoderInput::kImages ? s->batch.input.size(0) : 0;
        batch.input = Tensor();
      }
      auto o = stages[i]->Forward(ctx, batch);
      ASSERT_TRUE(o.ok()) << o.status();
      saved[i] = std::move(o->saved);
      batch.hidden = o->hidden;
      out = *std::move(o);
    }
    EXPECT_EQ(Download(*s->ops, out.embeddings), Download(*s->ops, whole_out->embeddings));
    EXPECT_EQ(out.tokens, whole_out->tokens);
    Tensor grad = dy;
    for (int i = count; i-- > 0;) {
      auto g = stages[i]->Backward(ctx, std::move(saved[i]), grad);
      ASSERT_TRUE(g.ok()) << g.status();
      EXPECT_EQ(g->defined(), i > 0);
      grad = *std::move(g);
    }
    size_t held = 0;
    for (int i = 0; i < count; ++i) {
      for (const auto& [name, p] : ParametersByName(*stages[i])) {
        ++held;
        ASSERT_TRUE(whole_params.contains(name)) << name;
        EXPECT_EQ(Download(*s->ops, p->master()),
                  Download(*s->ops, whole_params.at(name)->master()))
            << name;
        EXPECT_EQ(Download(*s->ops, p->grad()), Download(*s->ops, whole_params.at(name)->grad()))
            << name;
      }
    }
    EXPECT_EQ(held, whole_params.size());
    EXPECT_TRUE(ParametersByName(*stages[0]).contains("vision.embeddings.input_projection.weight"));
    EXPECT_FALSE(ParametersByName(*stages[0]).contains("vision.projector.linear_fc1.weight"));
  }
  const auto uneven = ModalityEncoder::Create(build, config, {.index = 0, .count = 3});
  EXPECT_EQ(uneven.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(uneven.status().message().find("must split evenly"), std::string::npos);
}

TEST(ModalityEncoderTest, RejectsBadInputs) {
  auto s = MakeSetup(EncoderInput::kAudio);
  auto v = MakeSetup(EncoderInput::kImages);
  ASSERT_NE(s, nullptr);
  ASSERT_NE(v, nullptr);
  const StepContext ctx{.ops = s->ops.get()};
  EncoderBatch bad = s->batch;  // Destroyed before the setups that own its memory.
  bad.frames = {8, 3, 3};       // Not multiples of frames_per_token.
  EXPECT_EQ(s->encoder->Forward(ctx, bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.frames = {10, 4};  // Over max_frames.
  EXPECT_EQ(s->encoder->Forward(ctx, bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.frames = {8, 4};  // 12 of 14 rows.
  EXPECT_EQ(s->encoder->Forward(ctx, bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = v->batch;
  bad.input = Upload(*v->ops, std::vector<float>(2 * 3 * 4 * 2), {2, 3, 4, 2}, DType::kF32);
  EXPECT_EQ(v->encoder->Forward(ctx, bad).status().code(), absl::StatusCode::kInvalidArgument);
  ModalityEncoderConfig config = Config(EncoderInput::kImages);
  config.image_size = 5;
  EXPECT_EQ(ValidateModalityEncoderConfig(config).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mimo
