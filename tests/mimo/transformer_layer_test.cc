// Tests of mimo/transformer_layer.h on the CPU ops: the forward against a float64 composition of
// the kernels' references, the backward against central differences of the forward (input and
// every parameter), gradient accumulation, hidden dropout, the MLP builder interface, bad input.
#include "mimo/transformer_layer.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "mimo/dense_mlp.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::Download;
using testing::ParametersByName;
using testing::RandomFloats;
using testing::RelL2;
using testing::Upload;

// Language-model style: RMSNorm, SwiGLU, RoPE, causal, grouped-query attention with a head width
// (kv_channels) unrelated to hidden / heads, no biases.
TransformerConfig LanguageConfig() {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = 8;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.kv_channels = 4;
  c.ffn_hidden_size = 6;
  c.norm = NormKind::kRmsNorm;
  c.activation = MlpActivation::kSwiglu;
  c.add_bias_linear = false;
  c.causal = true;
  c.rotary = true;
  c.init_std = 0.5f;  // Large enough that every path carries gradient.
  c.dtype = DType::kF32;
  return c;
}

// Encoder style: LayerNorm, exact GELU, biases, bidirectional, no RoPE.
TransformerConfig EncoderConfig() {
  TransformerConfig c = LanguageConfig();
  c.num_attention_heads = 2;
  c.num_query_groups = 0;
  c.kv_channels = 0;
  c.ffn_hidden_size = 10;
  c.norm = NormKind::kLayerNorm;
  c.activation = MlpActivation::kGelu;
  c.add_bias_linear = true;
  c.causal = false;
  c.rotary = false;
  return c;
}

// Tanh GELU (fused into fc1), biases on qkv only, partial RoPE, multi-query attention.
TransformerConfig GeluTanhConfig() {
  TransformerConfig c = LanguageConfig();
  c.num_attention_heads = 2;
  c.num_query_groups = 1;
  c.activation = MlpActivation::kGeluTanh;
  c.add_qkv_bias = true;
  c.rotary_dim = 2;
  return c;
}

const std::vector<int32_t> kLengths = {3, 1, 5};  // 9 tokens, three sequences.

absl::StatusOr<std::unique_ptr<TransformerLayer>> NewLayer(
    kernels::Ops& ops, const TransformerConfig& c, const MlpBuilder& mlp = DenseMlpBuilder(),
    int layer_number = 1) {
  BuildContext ctx{.ops = &ops,
                   .config = &c,
                   .seed = 42,
                   .prefix = absl::StrCat("decoder.layers.", layer_number),
                   .layer_number = layer_number};
  return TransformerLayer::Create(ctx, mlp);
}

struct NamedConfig {
  const char* name;
  TransformerConfig config;
};

class TransformerLayerCpuTest : public ::testing::TestWithParam<NamedConfig> {
 protected:
  void SetUp() override {
    ops_ = kernels::NewCpuOps();
    auto seqs = PackedSequences::Create(*ops_, kLengths);
    ASSERT_TRUE(seqs.ok()) << seqs.status();
    seqs_ = std::make_unique<PackedSequences>(*std::move(seqs));
    ctx_ = {.ops = ops_.get(), .sequences = seqs_.get(), .dropout_seed = 77};
    auto layer = NewLayer(*ops_, config());
    ASSERT_TRUE(layer.ok()) << layer.status();
    layer_ = *std::move(layer);
    std::mt19937 random(11);
    x_ = RandomFloats(tokens() * hidden(), random);
    r_ = RandomFloats(tokens() * hidden(), random);
  }
  const TransformerConfig& config() const { return GetParam().config; }
  int64_t tokens() const { return seqs_->tokens(); }
  int64_t hidden() const { return config().hidden_size; }

  // sum(y * r) for the forward of x_ (through `x`, whose host memory tests perturb).
  double Loss(const Tensor& x) {
    auto out = layer_->Forward(ctx_, x);
    EXPECT_TRUE(out.ok()) << out.status();
    const std::vector<double> y = Download(*ops_, out->y);
    double l = 0;
    for (size_t i = 0; i < y.size(); ++i) l += y[i] * r_[i];
    return l;
  }

  std::unique_ptr<kernels::Ops> ops_;
  std::unique_ptr<PackedSequences> seqs_;
  StepContext ctx_;
  std::unique_ptr<TransformerLayer> layer_;
  std::vector<float> x_, r_;
};

TEST_P(TransformerLayerCpuTest, ForwardMatchesFloat64Composition) {
  std::map<std::string, std::vector<double>> weights;
  for (const auto& [name, p] : ParametersByName(*layer_)) {
    weights[name] = Download(*ops_, p->master());
  }
  const std::vector<double> x64(x_.begin(), x_.end());
  const std::vector<double> want =
      testing::TransformerLayerFloat64(config(), "decoder.layers.1", weights, x64, kLengths);
  auto out = layer_->Forward(ctx_, Upload(*ops_, x_, {tokens(), hidden()}, DType::kF32));
  ASSERT_TRUE(out.ok()) << out.status();
  // fp32 end to end: within 1e-5 of float64 (relative L2).
  EXPECT_LT(RelL2(Download(*ops_, out->y), want), 1e-5);
}

TEST_P(TransformerLayerCpuTest, BackwardMatchesCentralDifferences) {
  Tensor x = Upload(*ops_, x_, {tokens(), hidden()}, DType::kF32);
  auto out = layer_->Forward(ctx_, x);
  ASSERT_TRUE(out.ok()) << out.status();
  auto dx = layer_->Backward(ctx_, std::move(out->saved),
                             Upload(*ops_, r_, {tokens(), hidden()}, DType::kF32));
  ASSERT_TRUE(dx.ok()) << dx.status();
  const std::vector<double> analytic_dx = Download(*ops_, *dx);

  // Central differences in fp32 with step h: tolerance 3e-3 absolute + 3e-3 relative.
  constexpr float h = 1e-2f;
  int failures = 0, checked = 0;
  auto check = [&](float* element, double analytic, const std::string& what) {
    const float saved = *element;
    *element = saved + h;
    const double plus = Loss(x);
    *element = saved - h;
    const double minus = Loss(x);
    *element = saved;
    const double numeric = (plus - minus) / (2.0 * h);
    ++checked;
    if (std::abs(analytic - numeric) > 3e-3 + 3e-3 * std::abs(numeric) && ++failures <= 5) {
      ADD_FAILURE() << what << ": analytic " << analytic << ", numeric " << numeric;
    }
  };
  for (int64_t i = 0; i < x.numel(); ++i) {
    check(x.data<float>() + i, analytic_dx[i], absl::StrCat("dx[", i, "]"));
  }
  for (const auto& [name, p] : ParametersByName(*layer_)) {
    // fp32 on the CPU: the weight the ops read is the master.
    ASSERT_EQ(p->weight().data(), p->master().data());
    const std::vector<double> grad = Download(*ops_, p->grad());
    for (int64_t i = 0; i < p->numel(); ++i) {
      check(p->master().data<float>() + i, grad[i], absl::StrCat(name, "[", i, "]"));
    }
  }
  EXPECT_EQ(failures, 0) << "of " << checked << " elements";
  EXPECT_GT(checked, 300);
}

TEST_P(TransformerLayerCpuTest, BackwardAddsToGradients) {
  const Tensor x = Upload(*ops_, x_, {tokens(), hidden()}, DType::kF32);
  const Tensor dy = Upload(*ops_, r_, {tokens(), hidden()}, DType::kF32);
  std::map<std::string, std::vector<double>> once;
  for (int pass = 0; pass < 2; ++pass) {
    auto out = layer_->Forward(ctx_, x);
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_TRUE(layer_->Backward(ctx_, std::move(out->saved), dy).ok());
    if (pass == 0) {
      for (const auto& [name, p] : ParametersByName(*layer_)) {
        once[name] = Download(*ops_, p->grad());
      }
    }
  }
  for (const auto& [name, p] : ParametersByName(*layer_)) {
    std::vector<double> twice = once[name];
    for (double& g : twice) g *= 2;
    EXPECT_EQ(Download(*ops_, p->grad()), twice) << name;
    ASSERT_TRUE(p->ZeroGrad(*ops_).ok());
    for (double g : Download(*ops_, p->grad())) ASSERT_EQ(g, 0.0) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, TransformerLayerCpuTest,
                         ::testing::Values(NamedConfig{"Language", LanguageConfig()},
                                           NamedConfig{"Encoder", EncoderConfig()},
                                           NamedConfig{"GeluTanh", GeluTanhConfig()}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(TransformerLayerTest, ParametersHaveMegatronNamesAndShapes) {
  auto ops = kernels::NewCpuOps();
  const TransformerConfig c = LanguageConfig();
  auto layer = NewLayer(*ops, c);
  ASSERT_TRUE(layer.ok()) << layer.status();
  std::vector<Parameter*> params;
  (*layer)->AppendParameters(params);
  std::vector<std::string> got;
  for (const Parameter* p : params) {
    got.push_back(absl::StrCat(p->name(), " ", kernels::ShapeToString(p->spec().shape),
                               p->spec().weight_decay ? " decay" : ""));
  }
  EXPECT_EQ(got, (std::vector<std::string>{
                     "decoder.layers.1.input_layernorm.weight [8]",
                     "decoder.layers.1.self_attention.linear_qkv.weight [32, 8] decay",
                     "decoder.layers.1.self_attention.linear_proj.weight [8, 16] decay",
                     "decoder.layers.1.pre_mlp_layernorm.weight [8]",
                     "decoder.layers.1.mlp.linear_fc1.weight [12, 8] decay",
                     "decoder.layers.1.mlp.linear_fc2.weight [8, 6] decay",
                 }));
  // Output projections start with std init_std / sqrt(2 * num_layers); the values are the
  // name's InitialValues.
  const ParameterSpec& proj = params[2]->spec();
  EXPECT_FLOAT_EQ(proj.std, 0.5f / 2.0f);
  const std::vector<double> values = Download(*ops, params[2]->master());
  const std::vector<float> want = InitialValues(proj, 42);
  EXPECT_EQ(values, std::vector<double>(want.begin(), want.end()));
}

TEST(TransformerLayerTest, HiddenDropoutIsSeededAndItsBackwardUsesTheSameMask) {
  auto ops = kernels::NewCpuOps();
  TransformerConfig c = LanguageConfig();
  c.hidden_dropout = 0.3f;
  auto layer = NewLayer(*ops, c);
  ASSERT_TRUE(layer.ok()) << layer.status();
  auto seqs = PackedSequences::Create(*ops, kLengths);
  ASSERT_TRUE(seqs.ok());
  std::mt19937 random(3);
  const std::vector<float> xv = RandomFloats(seqs->tokens() * 8, random);
  const std::vector<float> rv = RandomFloats(seqs->tokens() * 8, random);
  Tensor x = Upload(*ops, xv, {seqs->tokens(), 8}, DType::kF32);
  StepContext ctx{.ops = ops.get(), .sequences = &*seqs, .dropout_seed = 5, .dropout_offset = 0};
  auto forward = [&](const StepContext& s) {
    auto out = (*layer)->Forward(s, x);
    EXPECT_TRUE(out.ok()) << out.status();
    return out;
  };
  const std::vector<double> y0 = Download(*ops, forward(ctx)->y);
  EXPECT_EQ(Download(*ops, forward(ctx)->y), y0);  // Same stream position: same mask.
  StepContext next = ctx;
  next.dropout_offset = 1000;
  EXPECT_NE(Download(*ops, forward(next)->y), y0);
  next = ctx;
  next.dropout_seed = 6;
  EXPECT_NE(Download(*ops, forward(next)->y), y0);

  // The gradient of the input (masks included) agrees with central differences.
  auto out = forward(ctx);
  auto dx = (*layer)->Backward(ctx, std::move(out->saved),
                               Upload(*ops, rv, {seqs->tokens(), 8}, DType::kF32));
  ASSERT_TRUE(dx.ok()) << dx.status();
  const std::vector<double> analytic = Download(*ops, *dx);
  auto loss = [&]() {
    const std::vector<double> y = Download(*ops, forward(ctx)->y);
    double l = 0;
    for (size_t i = 0; i < y.size(); ++i) l += y[i] * rv[i];
    return l;
  };
  constexpr float h = 1e-2f;
  for (int64_t i = 0; i < x.numel(); ++i) {
    float& e = x.data<float>()[i];
    const float saved = e;
    e = saved + h;
    const double plus = loss();
    e = saved - h;
    const double minus = loss();
    e = saved;
    const double numeric = (plus - minus) / (2 * h);
    EXPECT_NEAR(analytic[i], numeric, 3e-3 + 3e-3 * std::abs(numeric)) << "dx[" << i << "]";
  }
}

// An MLP that is not the dense one: y = 0, so the layer reduces to h = x + attention(norm1(x)).
class ZeroMlp final : public Block {
 public:
  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const Tensor& x) override {
    auto y = NewTensor(ctx, x.shape(), x.dtype());
    if (!y.ok()) return y.status();
    if (auto s = ctx.ops->SetZero(y->data(), y->nbytes()); !s.ok()) return s;
    return BlockOutput{*std::move(y), std::make_unique<SavedActivations>()};
  }
  absl::StatusOr<Tensor> Backward(const StepContext& ctx, std::unique_ptr<SavedActivations>,
                                  const Tensor& dy) override {
    auto dx = NewTensor(ctx, dy.shape(), dy.dtype());
    if (!dx.ok()) return dx.status();
    if (auto s = ctx.ops->SetZero(dx->data(), dx->nbytes()); !s.ok()) return s;
    return dx;
  }
  void AppendParameters(std::vector<Parameter*>&) const override {}
};

class ZeroMlpBuilder final : public MlpBuilder {
 public:
  absl::StatusOr<std::unique_ptr<Block>> Build(const BuildContext& ctx) const override {
    prefixes.push_back(ctx.prefix);
    if (fail) return absl::FailedPreconditionError("no experts today");
    return std::unique_ptr<Block>(new ZeroMlp());
  }
  bool fail = false;
  mutable std::vector<std::string> prefixes;
};

TEST(TransformerLayerTest, BuildsItsMlpThroughTheBuilder) {
  auto ops = kernels::NewCpuOps();
  const TransformerConfig c = LanguageConfig();
  ZeroMlpBuilder builder;
  auto layer = NewLayer(*ops, c, builder);
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_EQ(builder.prefixes, std::vector<std::string>{"decoder.layers.1.mlp"});
  std::vector<Parameter*> params;
  (*layer)->AppendParameters(params);
  EXPECT_EQ(params.size(), 4u);  // The norms and attention; the zero MLP has none.

  // y = x + attention(norm1(x)) + 0: the float64 reference with a zero fc2.
  auto seqs = PackedSequences::Create(*ops, kLengths);
  ASSERT_TRUE(seqs.ok());
  std::mt19937 random(4);
  const std::vector<float> xv = RandomFloats(seqs->tokens() * 8, random);
  std::map<std::string, std::vector<double>> weights;
  for (const auto& [name, p] : ParametersByName(**layer))
    weights[name] = Download(*ops, p->master());
  weights["decoder.layers.1.mlp.linear_fc1.weight"] = std::vector<double>(12 * 8, 0.0);
  weights["decoder.layers.1.mlp.linear_fc2.weight"] = std::vector<double>(8 * 6, 0.0);
  const std::vector<double> want = testing::TransformerLayerFloat64(
      c, "decoder.layers.1", weights, std::vector<double>(xv.begin(), xv.end()), kLengths);
  StepContext ctx{.ops = ops.get(), .sequences = &*seqs};
  auto out = (*layer)->Forward(ctx, Upload(*ops, xv, {seqs->tokens(), 8}, DType::kF32));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LT(RelL2(Download(*ops, out->y), want), 1e-5);

  builder.fail = true;
  const auto failed = NewLayer(*ops, c, builder);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(TransformerLayerTest, RejectsBadConfigsAndInputs) {
  auto ops = kernels::NewCpuOps();
  TransformerConfig c = LanguageConfig();
  c.num_query_groups = 3;
  c.hidden_dropout = 1.0f;
  const auto bad = NewLayer(*ops, c);
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("num_query_groups"), absl::string_view::npos);
  EXPECT_NE(bad.status().message().find("hidden_dropout"), absl::string_view::npos);
  c = LanguageConfig();
  c.kv_channels = 0;
  c.num_attention_heads = 3;  // 8 % 3 != 0.
  c.num_query_groups = 0;
  EXPECT_EQ(NewLayer(*ops, c).status().code(), absl::StatusCode::kInvalidArgument);
  c = LanguageConfig();
  c.kv_channels = 5;  // RoPE needs an even head width.
  EXPECT_EQ(NewLayer(*ops, c).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NewLayer(*ops, LanguageConfig(), DenseMlpBuilder(), 2).status().code(),
            absl::StatusCode::kInvalidArgument);  // Layer 2 of 2.

  auto layer = NewLayer(*ops, LanguageConfig());
  ASSERT_TRUE(layer.ok());
  auto seqs = PackedSequences::Create(*ops, kLengths);
  ASSERT_TRUE(seqs.ok());
  StepContext ctx{.ops = ops.get(), .sequences = &*seqs};
  std::mt19937 random(1);
  // Wrong width, wrong dtype, tokens that do not match the sequences.
  EXPECT_EQ((*layer)
                ->Forward(ctx, Upload(*ops, RandomFloats(9 * 7, random), {9, 7}, DType::kF32))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*layer)
                ->Forward(ctx, Upload(*ops, RandomFloats(9 * 8, random), {9, 8}, DType::kBF16))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*layer)
                ->Forward(ctx, Upload(*ops, RandomFloats(8 * 8, random), {8, 8}, DType::kF32))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // Activations saved by another kind of block.
  const Tensor x = Upload(*ops, RandomFloats(9 * 8, random), {9, 8}, DType::kF32);
  const auto wrong = (*layer)->Backward(ctx, std::make_unique<SavedActivations>(), x);
  ASSERT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("another kind of block"), absl::string_view::npos);
}

}  // namespace
}  // namespace mimo
