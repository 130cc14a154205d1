// Tests of mimo/moe_layer.h on the CPU ops: the forward against a float64 per-token mixture of
// experts, the backward (with the load-balancing and z losses) against central differences for
// the input and every parameter, the losses reported, the layer inside a TransformerLayer, bad
// configs.
#include "mimo/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "mimo/transformer_layer.h"
#include "tests/kernels/moe_capacity_reference.h"
#include "tests/kernels/moe_router_reference.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::RouterScore;
using kernels::Tensor;
using testing::Download;
using testing::ParametersByName;
using testing::RandomFloats;
using testing::RelL2;
using testing::Upload;

TransformerConfig Config(MlpActivation activation) {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = 8;
  c.num_attention_heads = 2;
  c.ffn_hidden_size = 6;
  c.activation = activation;
  c.add_bias_linear = false;
  c.init_std = 0.5f;
  c.dtype = DType::kF32;
  return c;
}

struct MoeCase {
  const char* name;
  TransformerConfig config;
  MoeConfig moe;
};

void PrintTo(const MoeCase& c, std::ostream* os) { *os << c.name; }

MoeCase Softmax() {
  MoeConfig m;
  m.router = {.experts = 4, .top_k = 2};
  m.aux_loss_coeff = 0.1f;
  m.per_sequence_aux_loss = true;
  m.z_loss_coeff = 0.01f;
  m.shared_expert_ffn_hidden_size = 4;
  m.align = 4;
  return {"SoftmaxSharedSeqAux", Config(MlpActivation::kSwiglu), m};
}

MoeCase SigmoidGrouped() {
  MoeConfig m;
  m.router = {.experts = 8,
              .top_k = 2,
              .score = RouterScore::kSigmoid,
              .scaling_factor = 2.0f,
              .num_groups = 4,
              .group_top_k = 2};
  m.aux_loss_coeff = 0.05f;
  m.expert_ffn_hidden_size = 5;
  m.align = 1;
  return {"SigmoidGroupLimitedGelu", Config(MlpActivation::kGelu), m};
}

MoeCase Capacity() {
  MoeConfig m;
  m.router = {.experts = 4, .top_k = 2};
  m.aux_loss_coeff = 0.1f;
  // Capacity max(4, ceil(9 * 2 / 4 * 0.5)) = 4 of 18 pairs over 4 experts: some are dropped.
  m.capacity_factor = 0.5;
  m.drop_policy = kernels::TokenDropPolicy::kProbs;
  m.align = 2;
  return {"SoftmaxCapacityDropsByWeight", Config(MlpActivation::kSwiglu), m};
}

// The same with grouped GEMMs over device offsets and no host synchronization.
MoeCase GraphSafe(MoeCase c, const char* name) {
  c.name = name;
  c.moe.graph_safe = true;
  return c;
}

const std::vector<int32_t> kLengths = {3, 1, 5};

class MoeLayerCpuTest : public ::testing::TestWithParam<MoeCase> {
 protected:
  void SetUp() override {
    ops_ = kernels::NewCpuOps();
    auto seqs = PackedSequences::Create(*ops_, kLengths);
    ASSERT_TRUE(seqs.ok());
    seqs_ = std::make_unique<PackedSequences>(*std::move(seqs));
    config_ = GetParam().config;
    BuildContext build{
        .ops = ops_.get(), .config = &config_, .seed = 5, .prefix = "mlp", .layer_number = 1};
    auto layer = MoeLayer::Create(build, GetParam().moe);
    ASSERT_TRUE(layer.ok()) << layer.status();
    layer_ = *std::move(layer);
    // Inputs whose routing choices all sit farther from a tie than the difference step (seed 21
    // had one within 1e-3, where the objective jumps).
    std::mt19937 random(25);
    x_ = RandomFloats(9 * 8, random);
    r_ = RandomFloats(9 * 8, random);
  }
  StepContext Context(std::vector<AuxLossRecord>* records,
                      std::vector<RoutingRecord>* routing = nullptr) {
    return {.ops = ops_.get(),
            .sequences = seqs_.get(),
            .loss_scale = 0.5f,
            .aux_losses = records,
            .routing = routing};
  }
  std::vector<int32_t> Ints(const Tensor& t) {
    std::vector<int32_t> v(t.numel());
    EXPECT_TRUE(ops_->CopyToHost(v.data(), t.data(), 4 * v.size()).ok());
    return v;
  }
  // sum(y * r) + loss_scale * (aux + z).
  double Objective(const Tensor& x) {
    std::vector<AuxLossRecord> records;
    auto out = layer_->Forward(Context(&records), x);
    EXPECT_TRUE(out.ok()) << out.status();
    const std::vector<double> y = Download(*ops_, out->y);
    double l = 0;
    for (size_t i = 0; i < y.size(); ++i) l += y[i] * r_[i];
    const std::vector<double> losses = Download(*ops_, records.at(0).losses);
    return l + 0.5 * (losses[0] + losses[1]);
  }

  std::unique_ptr<kernels::Ops> ops_;
  std::unique_ptr<PackedSequences> seqs_;
  TransformerConfig config_;
  std::unique_ptr<MoeLayer> layer_;
  std::vector<float> x_, r_;
};

TEST_P(MoeLayerCpuTest, ForwardMatchesFloat64MixtureOfExperts) {
  const MoeConfig& moe = GetParam().moe;
  std::map<std::string, std::vector<double>> w;
  for (const auto& [name, p] : ParametersByName(*layer_)) w[name] = Download(*ops_, p->master());
  const int64_t t = 9, c = 8, e = moe.router.experts, k = moe.router.top_k;
  const int64_t f = moe.expert_ffn_hidden_size != 0 ? moe.expert_ffn_hidden_size : 6;
  const bool swiglu = config_.activation == MlpActivation::kSwiglu;
  const int64_t f1 = swiglu ? 2 * f : f;
  const std::vector<double> x(x_.begin(), x_.end());
  const std::vector<double> logits =
      kernels::testing::GemmFloat64(x, false, w["mlp.router.weight"], true, t, e, c);
  const kernels::testing::RouterReference route =
      kernels::testing::RouterFloat64(moe.router, logits, {}, t);
  std::vector<int32_t> kept = route.indices;
  if (moe.capacity_factor > 0.0) {
    kept = kernels::testing::CapacityDropReference(
        moe.drop_policy, route.indices, std::vector<float>(route.probs.begin(), route.probs.end()),
        kernels::MoeExpertCapacity(t, k, e, moe.capacity_factor));
    EXPECT_NE(kept, route.indices) << "nothing dropped";
  }
  std::vector<double> want(t * c, 0.0);
  for (int64_t i = 0; i < t; ++i) {
    const std::vector<double> xi(x.begin() + i * c, x.begin() + (i + 1) * c);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t ex = kept[i * k + j];
      if (ex < 0) continue;
      const std::vector<double>& w1 = w["mlp.experts.linear_fc1.weight"];
      const std::vector<double>& w2 = w["mlp.experts.linear_fc2.weight"];
      std::vector<double> h = kernels::testing::GemmFloat64(
          xi, false, std::vector<double>(w1.begin() + ex * f1 * c, w1.begin() + (ex + 1) * f1 * c),
          true, 1, f1, c);
      const std::vector<double> a = swiglu ? kernels::testing::SwigluFloat64(h, {}, 1, f).y
                                           : kernels::testing::GeluFloat64(h);
      const std::vector<double> o = kernels::testing::GemmFloat64(
          a, false, std::vector<double>(w2.begin() + ex * c * f, w2.begin() + (ex + 1) * c * f),
          true, 1, c, f);
      for (int64_t q = 0; q < c; ++q) want[i * c + q] += route.probs[i * k + j] * o[q];
    }
  }
  if (moe.shared_expert_ffn_hidden_size > 0) {
    const int64_t fs = moe.shared_expert_ffn_hidden_size;
    const std::vector<double> h = kernels::testing::GemmFloat64(
        x, false, w["mlp.shared_experts.linear_fc1.weight"], true, t, 2 * fs, c);
    const std::vector<double> a = kernels::testing::SwigluFloat64(h, {}, t, fs).y;
    const std::vector<double> o = kernels::testing::GemmFloat64(
        a, false, w["mlp.shared_experts.linear_fc2.weight"], true, t, c, fs);
    for (int64_t i = 0; i < t * c; ++i) want[i] += o[i];
  }
  // The routing kept for a reference comparison: the choices, and the pairs kept under a
  // capacity.
  std::vector<RoutingRecord> routing;
  auto out = layer_->Forward(Context(nullptr, &routing), Upload(*ops_, x_, {t, c}, DType::kF32));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LT(RelL2(Download(*ops_, out->y), want), 1e-5);
  ASSERT_EQ(routing.size(), 1u);
  EXPECT_EQ(routing[0].layer_number, 1);
  EXPECT_EQ(routing[0].indices.shape(), (kernels::Shape{t, k}));
  EXPECT_EQ(Ints(routing[0].indices), route.indices);
  EXPECT_EQ(Ints(routing[0].dispatched), kept);
}

TEST_P(MoeLayerCpuTest, BackwardWithAuxLossesMatchesCentralDifferences) {
  Tensor x = Upload(*ops_, x_, {9, 8}, DType::kF32);
  std::vector<AuxLossRecord> records;
  auto out = layer_->Forward(Context(&records), x);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].layer_number, 1);
  const std::vector<double> losses = Download(*ops_, records[0].losses);
  EXPECT_GT(losses[0], 0.0);
  EXPECT_EQ(losses[1] > 0.0, GetParam().moe.z_loss_coeff > 0.0f);
  auto dx = layer_->Backward(Context(nullptr), std::move(out->saved),
                             Upload(*ops_, r_, {9, 8}, DType::kF32));
  ASSERT_TRUE(dx.ok()) << dx.status();
  const std::vector<double> analytic_dx = Download(*ops_, *dx);
  // A small step: larger ones flip a near-tied routing choice (the objective jumps there).
  constexpr float h = 1e-3f;
  int failures = 0, checked = 0;
  auto check = [&](float* element, double analytic, const std::string& what) {
    const float saved = *element;
    *element = saved + h;
    const double plus = Objective(x);
    *element = saved - h;
    const double minus = Objective(x);
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
    const std::vector<double> grad = Download(*ops_, p->grad());
    for (int64_t i = 0; i < p->numel(); ++i) {
      check(p->master().data<float>() + i, grad[i], absl::StrCat(name, "[", i, "]"));
    }
  }
  EXPECT_EQ(failures, 0) << "of " << checked;
}

INSTANTIATE_TEST_SUITE_P(Configs, MoeLayerCpuTest,
                         ::testing::Values(Softmax(), SigmoidGrouped(), Capacity(),
                                           GraphSafe(Softmax(), "GraphSafeSoftmax"),
                                           GraphSafe(SigmoidGrouped(), "GraphSafeSigmoidGelu"),
                                           GraphSafe(Capacity(), "GraphSafeCapacity")),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(MoeLayerTest, IsTheMlpOfATransformerLayer) {
  auto ops = kernels::NewCpuOps();
  TransformerConfig c = Config(MlpActivation::kSwiglu);
  BuildContext build{.ops = ops.get(), .config = &c, .seed = 3, .prefix = "decoder.layers.0"};
  auto layer = TransformerLayer::Create(build, MoeMlpBuilder(Softmax().moe));
  ASSERT_TRUE(layer.ok()) << layer.status();
  std::vector<std::string> names;
  for (const auto& [name, p] : ParametersByName(**layer)) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "decoder.layers.0.input_layernorm.weight",
                       "decoder.layers.0.mlp.experts.linear_fc1.weight",
                       "decoder.layers.0.mlp.experts.linear_fc2.weight",
                       "decoder.layers.0.mlp.router.weight",
                       "decoder.layers.0.mlp.shared_experts.linear_fc1.weight",
                       "decoder.layers.0.mlp.shared_experts.linear_fc2.weight",
                       "decoder.layers.0.pre_mlp_layernorm.weight",
                       "decoder.layers.0.self_attention.linear_proj.weight",
                       "decoder.layers.0.self_attention.linear_qkv.weight",
                   }));
  auto seqs = PackedSequences::Create(*ops, kLengths);
  ASSERT_TRUE(seqs.ok());
  std::mt19937 random(8);
  const std::vector<float> r = RandomFloats(9 * 8, random);
  Tensor x = Upload(*ops, RandomFloats(9 * 8, random), {9, 8}, DType::kF32);
  std::vector<AuxLossRecord> records;
  StepContext ctx{.ops = ops.get(), .sequences = &*seqs, .aux_losses = &records};
  // sum(y * r) + the layer's auxiliary losses (loss_scale 1).
  auto objective = [&]() {
    records.clear();
    auto out = (*layer)->Forward(ctx, x);
    EXPECT_TRUE(out.ok());
    const std::vector<double> y = Download(*ops, out->y);
    double l = 0;
    for (size_t i = 0; i < y.size(); ++i) l += y[i] * r[i];
    for (double v : Download(*ops, records.at(0).losses)) l += v;
    return l;
  };
  auto out = (*layer)->Forward(ctx, x);
  ASSERT_TRUE(out.ok()) << out.status();
  auto dx = (*layer)->Backward(ctx, std::move(out->saved), Upload(*ops, r, {9, 8}, DType::kF32));
  ASSERT_TRUE(dx.ok()) << dx.status();
  const std::vector<double> analytic = Download(*ops, *dx);
  constexpr float h = 1e-3f;
  int failures = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    float& e = x.data<float>()[i];
    const float saved = e;
    e = saved + h;
    const double plus = objective();
    e = saved - h;
    const double minus = objective();
    e = saved;
    const double numeric = (plus - minus) / (2 * h);
    if (std::abs(analytic[i] - numeric) > 3e-3 + 3e-3 * std::abs(numeric) && ++failures <= 5) {
      ADD_FAILURE() << "dx[" << i << "]: analytic " << analytic[i] << ", numeric " << numeric;
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(MoeLayerTest, CountsExpertLoadAndMovesTheExpertBiasTowardsBalance) {
  auto ops = kernels::NewCpuOps();
  TransformerConfig c = Config(MlpActivation::kSwiglu);
  MoeConfig m = Softmax().moe;
  m.per_sequence_aux_loss = false;
  m.expert_bias = true;
  m.expert_bias_update_rate = 10.0f;  // Far above any score gap: the bias decides.
  BuildContext build{.ops = ops.get(), .config = &c, .seed = 5, .prefix = "mlp"};
  auto layer = MoeLayer::Create(build, m);
  ASSERT_TRUE(layer.ok()) << layer.status();
  std::mt19937 random(4);
  const std::vector<float> xv = RandomFloats(9 * 8, random);
  const Tensor x = Upload(*ops, xv, {9, 8}, DType::kF32);
  const StepContext ctx{.ops = ops.get()};
  // Two micro-batches: the load is twice the float64 router's counts (no bias yet).
  for (int i = 0; i < 2; ++i) ASSERT_TRUE((*layer)->Forward(ctx, x).ok());
  const std::vector<double> w =
      Download(*ops, ParametersByName(**layer)["mlp.router.weight"]->master());
  const std::vector<double> logits = kernels::testing::GemmFloat64(
      std::vector<double>(xv.begin(), xv.end()), false, w, true, 9, 4, 8);
  const std::vector<int32_t> counts =
      kernels::testing::RouterFloat64(m.router, logits, {}, 9).counts;
  auto load = (*layer)->TakeExpertLoad(*ops);
  ASSERT_TRUE(load.ok()) << load.status();
  for (int e = 0; e < 4; ++e) EXPECT_EQ((*load)[e], 2 * counts[e]) << e;
  EXPECT_EQ(*(*layer)->TakeExpertLoad(*ops), std::vector<int64_t>(4, 0));  // Counting anew.
  // Evaluation forwards count nothing.
  ASSERT_TRUE((*layer)->Forward({.ops = ops.get(), .training = false}, x).ok());
  EXPECT_EQ(*(*layer)->TakeExpertLoad(*ops), std::vector<int64_t>(4, 0));
  // Mean load 2: experts above it are pushed down, those below up, those at it stay.
  ASSERT_TRUE((*layer)->UpdateExpertBias(*ops, std::vector<int64_t>{6, 0, 2, 0}).ok());
  EXPECT_EQ(Download(*ops, (*layer)->expert_bias()), (std::vector<double>{-10, 10, 0, 10}));
  // The bias now decides the top-2 of every token: experts 1 and 3.
  ASSERT_TRUE((*layer)->Forward(ctx, x).ok());
  EXPECT_EQ(*(*layer)->TakeExpertLoad(*ops), (std::vector<int64_t>{0, 9, 0, 9}));
  EXPECT_EQ((*layer)->UpdateExpertBias(*ops, std::vector<int64_t>{1, 2, 3}).code(),
            absl::StatusCode::kInvalidArgument);
  // Without expert_bias there is nothing to update.
  auto plain = MoeLayer::Create(build, Softmax().moe);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->UpdateExpertBias(*ops, std::vector<int64_t>{1, 2, 3, 4}).code(),
            absl::StatusCode::kFailedPrecondition);
}

// Padding rows (sequence parallelism fills the micro-batch up to equal row blocks) are routed but
// dispatched nowhere and stay out of the statistics: with 4 padding rows after 9 real ones, the
// load, the auxiliary losses and the real rows' outputs, input gradients and parameter gradients
// equal those of the 9 rows alone; the padding rows' input gradient is zero for a zero output
// gradient.
class MoePaddingTest : public ::testing::TestWithParam<double> {};

TEST_P(MoePaddingTest, PaddingRowsStayOutOfTheStatistics) {
  TransformerConfig c = Config(MlpActivation::kSwiglu);
  MoeConfig m = Softmax().moe;
  m.per_sequence_aux_loss = false;
  m.aux_loss_coeff = 0.05f;
  m.z_loss_coeff = 0.01f;
  m.capacity_factor = GetParam();
  std::mt19937 random(6);
  const std::vector<float> xv = RandomFloats(13 * 8, random);
  std::vector<float> dyv = RandomFloats(13 * 8, random);
  std::fill(dyv.begin() + 9 * 8, dyv.end(), 0.0f);
  struct Out {
    std::vector<double> y, dx, losses, router_grad;
    std::vector<int64_t> load;
  };
  auto run = [&](int64_t rows, int64_t padding) {
    Out o;
    auto ops = kernels::NewCpuOps();
    BuildContext build{.ops = ops.get(), .config = &c, .seed = 5, .prefix = "mlp"};
    auto layer = MoeLayer::Create(build, m);
    EXPECT_TRUE(layer.ok()) << layer.status();
    if (!layer.ok()) return o;
    std::vector<AuxLossRecord> aux;
    const StepContext ctx{.ops = ops.get(), .aux_losses = &aux, .padding_rows = padding};
    const std::vector<float> x(xv.begin(), xv.begin() + rows * 8);
    const std::vector<float> dy(dyv.begin(), dyv.begin() + rows * 8);
    auto out = (*layer)->Forward(ctx, Upload(*ops, x, {rows, 8}, DType::kF32));
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return o;
    o.y = Download(*ops, out->y);
    o.losses = Download(*ops, aux.at(0).losses);
    auto dx =
        (*layer)->Backward(ctx, std::move(out->saved), Upload(*ops, dy, {rows, 8}, DType::kF32));
    EXPECT_TRUE(dx.ok()) << dx.status();
    if (!dx.ok()) return o;
    o.dx = Download(*ops, *dx);
    o.router_grad = Download(*ops, ParametersByName(**layer)["mlp.router.weight"]->grad());
    o.load = *(*layer)->TakeExpertLoad(*ops);
    return o;
  };
  const Out alone = run(9, 0), padded = run(13, 4);
  EXPECT_EQ(padded.load, alone.load);
  EXPECT_EQ(padded.losses, alone.losses);
  EXPECT_EQ(std::vector<double>(padded.y.begin(), padded.y.begin() + 9 * 8), alone.y);
  EXPECT_EQ(std::vector<double>(padded.dx.begin(), padded.dx.begin() + 9 * 8), alone.dx);
  EXPECT_EQ(std::vector<double>(padded.dx.begin() + 9 * 8, padded.dx.end()),
            std::vector<double>(4 * 8, 0.0));
  EXPECT_EQ(padded.router_grad, alone.router_grad);
  // More padding than rows is refused.
  auto ops = kernels::NewCpuOps();
  BuildContext build{.ops = ops.get(), .config = &c, .seed = 5, .prefix = "mlp"};
  auto layer = MoeLayer::Create(build, m);
  ASSERT_TRUE(layer.ok());
  const StepContext bad{.ops = ops.get(), .padding_rows = 14};
  EXPECT_EQ((*layer)->Forward(bad, Upload(*ops, xv, {13, 8}, DType::kF32)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // And so is any padding in the graph-safe mode (its indices would come from the host).
  MoeConfig safe = m;
  safe.graph_safe = true;
  auto graph_safe = MoeLayer::Create(build, safe);
  ASSERT_TRUE(graph_safe.ok()) << graph_safe.status();
  const StepContext one{.ops = ops.get(), .padding_rows = 1};
  const auto refused = (*graph_safe)->Forward(one, Upload(*ops, xv, {13, 8}, DType::kF32));
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("graph_safe with padding rows (1 of 13;"),
            absl::string_view::npos)
      << refused.status();
}

// Dropless, and with a capacity of the real rows (5 pairs an expert: some of the 18 real pairs
// dropped) that the padding rows' pairs take no room of.
INSTANTIATE_TEST_SUITE_P(Capacity, MoePaddingTest, ::testing::Values(0.0, 1.0));

// Grouped GEMMs (the graph-safe layer's default experts) and per-expert GEMMs compute the same
// products in the same order on the CPU: equal outputs and gradients, same parameters.
TEST(MoeLayerTest, GroupedExpertsEqualSequentialExperts) {
  auto ops = kernels::NewCpuOps();
  TransformerConfig c = Config(MlpActivation::kSwiglu);
  MoeConfig m = Softmax().moe;
  m.per_sequence_aux_loss = false;
  BuildContext build{.ops = ops.get(), .config = &c, .seed = 5, .prefix = "mlp"};
  std::mt19937 random(6);
  const std::vector<float> x = RandomFloats(9 * 8, random), r = RandomFloats(9 * 8, random);
  std::vector<std::map<std::string, std::vector<double>>> results;
  for (const bool grouped : {false, true}) {
    m.graph_safe = grouped;
    const GroupedExpertsBuilder grouped_experts;
    const SequentialExpertsBuilder sequential_experts;
    auto layer = MoeLayer::Create(
        build, m,
        grouped ? static_cast<const ExpertsBuilder&>(grouped_experts) : sequential_experts);
    ASSERT_TRUE(layer.ok()) << layer.status();
    const StepContext ctx{.ops = ops.get()};
    auto out = (*layer)->Forward(ctx, Upload(*ops, x, {9, 8}, DType::kF32));
    ASSERT_TRUE(out.ok()) << out.status();
    std::map<std::string, std::vector<double>> got;
    got["y"] = Download(*ops, out->y);
    auto dx = (*layer)->Backward(ctx, std::move(out->saved), Upload(*ops, r, {9, 8}, DType::kF32));
    ASSERT_TRUE(dx.ok()) << dx.status();
    got["dx"] = Download(*ops, *dx);
    for (const auto& [name, p] : ParametersByName(**layer)) {
      got[name] = Download(*ops, p->master());
      got[name + ".grad"] = Download(*ops, p->grad());
    }
    results.push_back(std::move(got));
  }
  EXPECT_EQ(results[0], results[1]);
}

// After ResetGrad (a step's first micro-batch) the experts' weight gradients are stale: the
// backward writes them whole -- over an earlier step's values, zero for experts without rows --
// and the next backward adds to them. The same gradients as backwards into zeroed ones, with
// per-expert and with grouped GEMMs.
TEST(MoeLayerTest, WritesStaleExpertGradientsWholeThenAddsToThem) {
  auto ops = kernels::NewCpuOps();
  TransformerConfig c = Config(MlpActivation::kSwiglu);
  MoeConfig m;
  m.router = {.experts = 8, .top_k = 2};
  m.align = 1;
  BuildContext build{.ops = ops.get(), .config = &c, .seed = 5, .prefix = "mlp"};
  std::mt19937 random(3);
  // 2 tokens, 4 pairs: at least 4 of the 8 experts get no rows.
  const std::vector<float> x = RandomFloats(2 * 8, random), r = RandomFloats(2 * 8, random);
  for (const bool grouped : {false, true}) {
    SCOPED_TRACE(grouped ? "grouped" : "sequential");
    m.graph_safe = grouped;
    auto layer = MoeLayer::Create(build, m);
    ASSERT_TRUE(layer.ok()) << layer.status();
    const StepContext ctx{.ops = ops.get()};
    auto step = [&] {
      auto out = (*layer)->Forward(ctx, Upload(*ops, x, {2, 8}, DType::kF32));
      ASSERT_TRUE(out.ok()) << out.status();
      auto dx =
          (*layer)->Backward(ctx, std::move(out->saved), Upload(*ops, r, {2, 8}, DType::kF32));
      ASSERT_TRUE(dx.ok()) << dx.status();
    };
    auto grads = [&] {
      std::map<std::string, std::vector<double>> got;
      for (const auto& [name, p] : ParametersByName(**layer)) got[name] = Download(*ops, p->grad());
      return got;
    };
    step();  // Into the zeroed gradients of a new layer.
    const std::map<std::string, std::vector<double>> once = grads();
    const std::vector<double>& fc1 = once.at("mlp.experts.linear_fc1.weight");
    const size_t per_expert = fc1.size() / 8;
    int empty = 0;
    for (size_t e = 0; e < 8; ++e) {
      empty += std::all_of(fc1.begin() + e * per_expert, fc1.begin() + (e + 1) * per_expert,
                           [](double v) { return v == 0.0; });
    }
    EXPECT_GE(empty, 4);
    for (const auto& [name, p] : ParametersByName(**layer)) {
      std::fill_n(p->grad().data<float>(), p->numel(), 7.0f);  // An earlier step's.
      ASSERT_TRUE(p->ResetGrad(*ops).ok());
      EXPECT_EQ(p->grad_stale(), name.find(".experts.") != std::string::npos) << name;
    }
    step();
    EXPECT_EQ(grads(), once);
    for (const auto& [name, p] : ParametersByName(**layer)) EXPECT_FALSE(p->grad_stale()) << name;
    step();
    std::map<std::string, std::vector<double>> twice = once;
    for (auto& [name, v] : twice) {
      for (double& g : v) g *= 2;
    }
    EXPECT_EQ(grads(), twice);
  }
}

// A layer built for a multi-token-prediction block marks its auxiliary losses as such.
TEST(MoeLayerTest, MarksTheAuxLossesOfMtpLayers) {
  auto ops = kernels::NewCpuOps();
  TransformerConfig c = Config(MlpActivation::kSwiglu);
  std::mt19937 random(2);
  const Tensor x = Upload(*ops, RandomFloats(9 * 8, random), {9, 8}, DType::kF32);
  for (const bool mtp : {false, true}) {
    BuildContext build{
        .ops = ops.get(), .config = &c, .prefix = "mlp", .layer_number = 4, .mtp_layer = mtp};
    MoeConfig m = Softmax().moe;
    m.per_sequence_aux_loss = false;
    auto layer = MoeLayer::Create(build, m);
    ASSERT_TRUE(layer.ok()) << layer.status();
    std::vector<AuxLossRecord> records;
    ASSERT_TRUE((*layer)->Forward({.ops = ops.get(), .aux_losses = &records}, x).ok());
    ASSERT_EQ(records.size(), 1u);
    EXPECT_EQ(records[0].layer_number, 4);
    EXPECT_EQ(records[0].mtp, mtp);
  }
}

TEST(MoeLayerTest, PerSequenceAuxLossRefusesAForwardWithoutItsSequences) {
  auto ops = kernels::NewCpuOps();
  TransformerConfig c = Config(MlpActivation::kSwiglu);
  BuildContext build{.ops = ops.get(), .config = &c, .prefix = "mlp"};
  auto layer = MoeLayer::Create(build, Softmax().moe);  // per_sequence_aux_loss.
  ASSERT_TRUE(layer.ok()) << layer.status();
  std::mt19937 random(3);
  const Tensor x = Upload(*ops, RandomFloats(9 * 8, random), {9, 8}, DType::kF32);
  std::vector<AuxLossRecord> records;
  const auto none = (*layer)->Forward({.ops = ops.get(), .aux_losses = &records}, x);
  ASSERT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("over its 9 rows (StepContext::sequences), got none"),
            absl::string_view::npos)
      << none.status();
  auto eight = PackedSequences::Create(*ops, std::vector<int32_t>{3, 5});  // 8 of the 9 rows.
  ASSERT_TRUE(eight.ok());
  const auto short_by_one =
      (*layer)->Forward({.ops = ops.get(), .sequences = &*eight, .aux_losses = &records}, x);
  ASSERT_EQ(short_by_one.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_by_one.status().message().find("got 8 tokens"), absl::string_view::npos)
      << short_by_one.status();
  EXPECT_TRUE(records.empty());
  auto nine = PackedSequences::Create(*ops, std::vector<int32_t>{4, 5});
  ASSERT_TRUE(nine.ok());
  EXPECT_TRUE(
      (*layer)->Forward({.ops = ops.get(), .sequences = &*nine, .aux_losses = &records}, x).ok());
  EXPECT_EQ(records.size(), 1u);
}

TEST(MoeLayerTest, RejectsBadConfigs) {
  auto ops = kernels::NewCpuOps();
  TransformerConfig c = Config(MlpActivation::kSwiglu);
  BuildContext build{.ops = ops.get(), .config = &c, .prefix = "mlp"};
  MoeConfig m = Softmax().moe;
  m.router.top_k = 5;  // Of 4 experts.
  EXPECT_EQ(MoeLayer::Create(build, m).status().code(), absl::StatusCode::kInvalidArgument);
  m = Softmax().moe;
  m.aux_loss_coeff = -1;
  EXPECT_EQ(MoeLayer::Create(build, m).status().code(), absl::StatusCode::kInvalidArgument);
  m = Softmax().moe;
  m.expert_bias = true;
  m.expert_bias_update_rate = 0;
  EXPECT_EQ(MoeLayer::Create(build, m).status().code(), absl::StatusCode::kInvalidArgument);
  m = Softmax().moe;
  m.capacity_factor = -1;
  EXPECT_EQ(MoeLayer::Create(build, m).status().code(), absl::StatusCode::kInvalidArgument);
  m = Softmax().moe;
  m.graph_safe = true;  // With experts that read their offsets on the host.
  const auto unsafe = MoeLayer::Create(build, m, SequentialExpertsBuilder());
  ASSERT_EQ(unsafe.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unsafe.status().message().find("GroupedExpertsBuilder"), absl::string_view::npos);
  m = Softmax().moe;
  m.align = 0;
  const auto bad = MoeLayer::Create(build, m);
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("align"), absl::string_view::npos);
}

// Routed experts (of a builder of the user's) that return one row too few from their forward or
// their backward.
class ShortExperts final : public Experts {
 public:
  explicit ShortExperts(bool short_forward) : short_forward_(short_forward) {}
  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const Tensor& x,
                                      const ExpertRowOffsets&) override {
    MIMO_ASSIGN_OR_RETURN(Tensor y, Rows(ctx, x, short_forward_));
    return BlockOutput{std::move(y), std::make_unique<SavedActivations>()};
  }
  absl::StatusOr<Tensor> Backward(const StepContext& ctx, std::unique_ptr<SavedActivations>,
                                  const Tensor& dh) override {
    return Rows(ctx, dh, !short_forward_);
  }
  void AppendParameters(std::vector<Parameter*>&) const override {}
  bool needs_host_offsets() const override { return false; }

 private:
  // Zeros shaped like `like`, one row fewer when `short_rows`.
  static absl::StatusOr<Tensor> Rows(const StepContext& ctx, const Tensor& like, bool short_rows) {
    MIMO_ASSIGN_OR_RETURN(
        Tensor out,
        NewTensor(ctx, {like.size(0) - (short_rows ? 1 : 0), like.size(1)}, like.dtype()));
    MIMO_RETURN_IF_ERROR(ctx.ops->SetZero(out.data(), out.nbytes()));
    return out;
  }
  const bool short_forward_;
};

class ShortExpertsBuilder final : public ExpertsBuilder {
 public:
  explicit ShortExpertsBuilder(bool short_forward) : short_forward_(short_forward) {}
  absl::StatusOr<std::unique_ptr<Experts>> Build(const BuildContext&,
                                                 const LocalExperts&) const override {
    return std::unique_ptr<Experts>(new ShortExperts(short_forward_));
  }

 private:
  const bool short_forward_;
};

// The combine and the dispatch's backward index the experts' rows by where the dispatch put
// them: experts that return another number of rows are refused, not read or written past.
TEST(MoeLayerTest, RefusesExpertsThatReturnAnotherShape) {
  auto ops = kernels::NewCpuOps();
  TransformerConfig c = Config(MlpActivation::kSwiglu);
  BuildContext build{.ops = ops.get(), .config = &c, .seed = 5, .prefix = "mlp"};
  std::mt19937 random(8);
  const std::vector<float> x = RandomFloats(9 * 8, random);
  const StepContext ctx{.ops = ops.get()};
  MoeConfig m = Softmax().moe;
  m.per_sequence_aux_loss = false;
  for (const bool short_forward : {true, false}) {
    auto layer = MoeLayer::Create(build, m, ShortExpertsBuilder(short_forward));
    ASSERT_TRUE(layer.ok()) << layer.status();
    auto out = (*layer)->Forward(ctx, Upload(*ops, x, {9, 8}, DType::kF32));
    if (short_forward) {
      ASSERT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << out.status();
      EXPECT_NE(out.status().message().find("routed experts' output"), absl::string_view::npos)
          << out.status();
      continue;
    }
    ASSERT_TRUE(out.ok()) << out.status();
    auto dx = (*layer)->Backward(ctx, std::move(out->saved), Upload(*ops, x, {9, 8}, DType::kF32));
    ASSERT_EQ(dx.status().code(), absl::StatusCode::kInvalidArgument) << dx.status();
    EXPECT_NE(dx.status().message().find("routed experts' input gradient"), absl::string_view::npos)
        << dx.status();
  }
}

}  // namespace
}  // namespace mimo
