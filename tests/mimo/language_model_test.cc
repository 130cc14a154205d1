// Tests of mimo/language_model.h on the CPU ops: Megatron's parameter names; the forward (token
// embeddings, modality rows over their placeholders, dense decoder, final norm, chunked output
// layer and cross-entropy on labelled tokens only) against float64; the backward of the loss
// (plus the MoE auxiliary losses) against central differences for the modality embeddings and
// every parameter, dense and MoE; bad batches; pipeline stages chained by hand equal the whole
// model.
#include "mimo/language_model.h"

#include <cmath>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/kernels/rmsnorm_reference.h"
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

constexpr int64_t kVocab = 11, kHidden = 8;
const std::vector<int32_t> kLengths = {3, 1, 5};
const std::vector<int32_t> kTokens = {4, 10, 10, 2, 7, 10, 0, 3, 9};  // 10: the placeholder.
const std::vector<int32_t> kLabels = {-1, -1, 2, -1, -1, -1, 3, 9, 5};
const std::vector<int32_t> kPositions = {1, 5, 2};  // Where the 3 modality rows go.

LanguageModelConfig Config(bool moe) {
  LanguageModelConfig c;
  c.transformer.num_layers = 2;
  c.transformer.hidden_size = kHidden;
  c.transformer.num_attention_heads = 2;
  c.transformer.num_query_groups = 1;
  c.transformer.ffn_hidden_size = 6;
  c.transformer.add_bias_linear = false;
  c.transformer.init_std = 0.5f;
  c.transformer.dtype = DType::kF32;
  c.vocab_size = kVocab;
  c.vocab_chunk = 4;  // Chunks of 4, 4 and 3.
  if (moe) {
    MoeConfig m;
    m.router = {.experts = 4, .top_k = 2};
    m.aux_loss_coeff = 0.1f;
    m.z_loss_coeff = 0.01f;
    m.align = 2;
    c.moe = m;
  }
  return c;
}

class LanguageModelTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    ops_ = kernels::NewCpuOps();
    auto seqs = PackedSequences::Create(*ops_, kLengths);
    ASSERT_TRUE(seqs.ok());
    seqs_ = std::make_unique<PackedSequences>(*std::move(seqs));
    config_ = Config(GetParam());
    BuildContext build{
        .ops = ops_.get(), .config = &config_.transformer, .seed = 3, .prefix = "lm"};
    auto model = LanguageModel::Create(build, config_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    std::mt19937 random(11);
    embeddings_ = Upload(*ops_, RandomFloats(3 * kHidden, random), {3, kHidden}, DType::kF32);
    batch_ = {.tokens = UploadInts(*ops_, kTokens),
              .labels = UploadInts(*ops_, kLabels),
              .embeddings = embeddings_,
              .embedding_positions = kPositions};
  }
  StepContext Context(std::vector<AuxLossRecord>* records) {
    return {.ops = ops_.get(), .sequences = seqs_.get(), .loss_scale = 0.5f, .aux_losses = records};
  }
  // 0.5 * (loss_sum + the auxiliary losses).
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

  // Every parameter's and the modality embeddings' gradient against central differences of
  // Objective().
  void ExpectBackwardMatchesCentralDifferences();

  std::unique_ptr<kernels::Ops> ops_;
  std::unique_ptr<PackedSequences> seqs_;
  LanguageModelConfig config_;
  std::unique_ptr<LanguageModel> model_;
  Tensor embeddings_;
  LanguageModelBatch batch_;
};

TEST_P(LanguageModelTest, HasMegatronsParameterNames) {
  std::vector<std::string> names;
  for (const auto& [name, p] : ParametersByName(*model_)) names.push_back(name);
  const std::string mlp = GetParam() ? "mlp.experts.linear_fc1.weight" : "mlp.linear_fc1.weight";
  for (const std::string& want :
       {std::string("lm.embedding.word_embeddings.weight"), std::string("lm.output_layer.weight"),
        std::string("lm.decoder.final_layernorm.weight"),
        std::string("lm.decoder.layers.0.self_attention.linear_qkv.weight"),
        "lm.decoder.layers.1." + mlp}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  }
  EXPECT_EQ(model_->moe_layers().size(), GetParam() ? 2u : 0u);
}

// moe_layer_freq 2: MoE MLPs in layers 0 and 2 of 3, dense in layer 1.
TEST(LanguageModelLayoutTest, InterleavesMoeAndDenseLayers) {
  auto ops = kernels::NewCpuOps();
  LanguageModelConfig config = Config(true);
  config.transformer.num_layers = 3;
  config.moe_layer_freq = 2;
  BuildContext build{.ops = ops.get(), .config = &config.transformer, .prefix = "lm"};
  auto model = LanguageModel::Create(build, config);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->moe_layers().size(), 2u);
  const auto names = ParametersByName(**model);
  EXPECT_TRUE(names.contains("lm.decoder.layers.0.mlp.router.weight"));
  EXPECT_TRUE(names.contains("lm.decoder.layers.1.mlp.linear_fc1.weight"));
  EXPECT_TRUE(names.contains("lm.decoder.layers.2.mlp.router.weight"));
  config.moe_layer_freq = 0;
  EXPECT_EQ(LanguageModel::Create(build, config).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Pipeline stages chained by hand (each stage's output rows the next one's input, the output
// gradients back the other way) give the whole model's loss, auxiliary losses, modality
// gradient and parameter gradients, bitwise; each stage holds its part of the parameters, with
// the whole model's names and initial values.
TEST_P(LanguageModelTest, PipelineStagesEqualTheWholeModel) {
  LanguageModelConfig config = config_;
  config.transformer.num_layers = 4;
  BuildContext build{.ops = ops_.get(), .config = &config.transformer, .seed = 3, .prefix = "lm"};
  auto whole = LanguageModel::Create(build, config);
  ASSERT_TRUE(whole.ok()) << whole.status();
  std::vector<AuxLossRecord> whole_aux;
  auto whole_out = (*whole)->Forward(Context(&whole_aux), batch_);
  ASSERT_TRUE(whole_out.ok()) << whole_out.status();
  const std::vector<double> whole_loss = Download(*ops_, whole_out->token_loss);
  auto whole_demb = (*whole)->Backward(Context(nullptr), std::move(whole_out->saved), 0.25f);
  ASSERT_TRUE(whole_demb.ok()) << whole_demb.status();
  const auto whole_params = ParametersByName(**whole);
  for (const int count : {2, 4}) {
    SCOPED_TRACE(::testing::Message() << count << " stages");
    std::vector<std::unique_ptr<LanguageModel>> stages;
    for (int i = 0; i < count; ++i) {
      auto stage = LanguageModel::Create(build, config, {.index = i, .count = count});
      ASSERT_TRUE(stage.ok()) << stage.status();
      stages.push_back(*std::move(stage));
    }
    std::vector<AuxLossRecord> aux;
    std::vector<std::unique_ptr<SavedActivations>> saved(count);
    LanguageModelBatch batch = batch_;
    LanguageModelOutput out;
    for (int i = 0; i < count; ++i) {
      auto o = stages[i]->Forward(Context(&aux), batch);
      ASSERT_TRUE(o.ok()) << o.status();
      saved[i] = std::move(o->saved);
      batch.hidden = o->hidden;
      out = *std::move(o);
    }
    EXPECT_EQ(Download(*ops_, out.token_loss), whole_loss);
    ASSERT_EQ(aux.size(), whole_aux.size());
    for (size_t i = 0; i < aux.size(); ++i) {
      EXPECT_EQ(Download(*ops_, aux[i].losses), Download(*ops_, whole_aux[i].losses)) << i;
    }
    Tensor grad;
    for (int i = count; i-- > 0;) {
      auto g = stages[i]->Backward(Context(nullptr), std::move(saved[i]), 0.25f, grad);
      ASSERT_TRUE(g.ok()) << g.status();
      grad = *std::move(g);
    }
    EXPECT_EQ(Download(*ops_, grad), Download(*ops_, *whole_demb));
    size_t held = 0;
    for (int i = 0; i < count; ++i) {
      for (const auto& [name, p] : ParametersByName(*stages[i])) {
        ++held;
        ASSERT_TRUE(whole_params.contains(name)) << name;
        EXPECT_EQ(Download(*ops_, p->master()), Download(*ops_, whole_params.at(name)->master()))
            << name;
        EXPECT_EQ(Download(*ops_, p->grad()), Download(*ops_, whole_params.at(name)->grad()))
            << name;
      }
    }
    EXPECT_EQ(held, whole_params.size());  // Every parameter on exactly one stage.
    EXPECT_TRUE(ParametersByName(*stages[0]).contains("lm.embedding.word_embeddings.weight"));
    EXPECT_TRUE(ParametersByName(*stages[count - 1]).contains("lm.output_layer.weight"));
  }
  // Layers that do not split over the stages; a stage outside the count.
  EXPECT_EQ(LanguageModel::Create(build, config, {.index = 0, .count = 3}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LanguageModel::Create(build, config, {.index = 2, .count = 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(LanguageModelTest, BackwardMatchesCentralDifferences) {
  ExpectBackwardMatchesCentralDifferences();
}

// Shared word embeddings: one parameter, no output layer of its own, its gradient the sum of
// both uses' (checked by central differences); pipeline stages' two copies' gradients add up to
// it.
TEST_P(LanguageModelTest, SharedWordEmbeddings) {
  config_.share_embeddings_and_output_weights = true;
  BuildContext build{.ops = ops_.get(), .config = &config_.transformer, .seed = 3, .prefix = "lm"};
  auto model = LanguageModel::Create(build, config_);
  ASSERT_TRUE(model.ok()) << model.status();
  model_ = *std::move(model);
  const auto params = ParametersByName(*model_);
  EXPECT_FALSE(params.contains("lm.output_layer.weight"));
  ASSERT_TRUE(params.contains("lm.embedding.word_embeddings.weight"));
  EXPECT_EQ(model_->shared_embeddings_copy(), nullptr);  // One stage: nothing to share.
  ExpectBackwardMatchesCentralDifferences();
  const std::vector<double> whole =
      Download(*ops_, params.at("lm.embedding.word_embeddings.weight")->grad());
  // Two stages: each holds a copy named as the one parameter (same initial values).
  std::vector<std::unique_ptr<LanguageModel>> stages;
  for (int i = 0; i < 2; ++i) {
    auto stage = LanguageModel::Create(build, config_, {.index = i, .count = 2});
    ASSERT_TRUE(stage.ok()) << stage.status();
    ASSERT_NE((*stage)->shared_embeddings_copy(), nullptr);
    EXPECT_EQ(Download(*ops_, (*stage)->shared_embeddings_copy()->master()),
              Download(*ops_, params.at("lm.embedding.word_embeddings.weight")->master()));
    stages.push_back(*std::move(stage));
  }
  auto first = stages[0]->Forward(Context(nullptr), batch_);
  ASSERT_TRUE(first.ok()) << first.status();
  LanguageModelBatch batch = batch_;
  batch.hidden = first->hidden;
  auto last = stages[1]->Forward(Context(nullptr), batch);
  ASSERT_TRUE(last.ok()) << last.status();
  auto dhidden = stages[1]->Backward(Context(nullptr), std::move(last->saved), 0.5f);
  ASSERT_TRUE(dhidden.ok()) << dhidden.status();
  ASSERT_TRUE(stages[0]->Backward(Context(nullptr), std::move(first->saved), 0.5f, *dhidden).ok());
  std::vector<double> sum = Download(*ops_, stages[0]->shared_embeddings_copy()->grad());
  const std::vector<double> other = Download(*ops_, stages[1]->shared_embeddings_copy()->grad());
  double err = 0, norm = 0;
  for (size_t i = 0; i < sum.size(); ++i) {
    err += (sum[i] + other[i] - whole[i]) * (sum[i] + other[i] - whole[i]);
    norm += whole[i] * whole[i];
  }
  EXPECT_LT(std::sqrt(err / norm), 1e-6);
}

void LanguageModelTest::ExpectBackwardMatchesCentralDifferences() {
  std::vector<AuxLossRecord> records;
  auto out = model_->Forward(Context(&records), batch_);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(records.size(), GetParam() ? 2u : 0u);
  auto dembeddings = model_->Backward(Context(nullptr), std::move(out->saved), 0.5f);
  ASSERT_TRUE(dembeddings.ok()) << dembeddings.status();
  const std::vector<double> analytic = Download(*ops_, *dembeddings);
  constexpr float h = 1e-3f;
  int failures = 0, checked = 0;
  auto check = [&](float* element, double want, const std::string& what) {
    const float saved = *element;
    *element = saved + h;
    const double plus = Objective();
    *element = saved - h;
    const double minus = Objective();
    *element = saved;
    const double numeric = (plus - minus) / (2.0 * h);
    ++checked;
    if (std::abs(want - numeric) > 3e-3 + 3e-3 * std::abs(numeric) && ++failures <= 5) {
      ADD_FAILURE() << what << ": analytic " << want << ", numeric " << numeric;
    }
  };
  for (int64_t i = 0; i < embeddings_.numel(); ++i) {
    check(embeddings_.data<float>() + i, analytic[i], absl::StrCat("dembeddings[", i, "]"));
  }
  for (const auto& [name, p] : ParametersByName(*model_)) {
    const std::vector<double> grad = Download(*ops_, p->grad());
    for (int64_t i = 0; i < p->numel(); ++i) {
      check(p->master().data<float>() + i, grad[i], absl::StrCat(name, "[", i, "]"));
    }
  }
  EXPECT_EQ(failures, 0) << "of " << checked;
}

TEST_P(LanguageModelTest, RejectsBadBatches) {
  LanguageModelBatch bad = batch_;
  bad.embedding_positions = {1, 5, 5};
  EXPECT_EQ(model_->Forward(Context(nullptr), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad.embedding_positions = {1, 5, 9};
  EXPECT_EQ(model_->Forward(Context(nullptr), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = batch_;
  bad.embedding_positions = {1, 5};  // Three rows.
  EXPECT_EQ(model_->Forward(Context(nullptr), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = batch_;
  bad.labels = UploadInts(*ops_, {1, 2});
  EXPECT_EQ(model_->Forward(Context(nullptr), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model_->Forward({.ops = ops_.get()}, batch_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Mlp, LanguageModelTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Moe" : "Dense"; });

// The dense model's forward against float64: embeddings and splices, the layers
// (TransformerLayerFloat64), the final RMSNorm, logits and the labelled tokens' cross-entropy.
TEST(LanguageModelFloat64Test, ForwardMatchesFloat64) {
  auto ops = kernels::NewCpuOps();
  const LanguageModelConfig config = Config(false);
  BuildContext build{.ops = ops.get(), .config = &config.transformer, .seed = 3, .prefix = "lm"};
  auto model = LanguageModel::Create(build, config);
  ASSERT_TRUE(model.ok()) << model.status();
  auto seqs = PackedSequences::Create(*ops, kLengths);
  ASSERT_TRUE(seqs.ok());
  std::mt19937 random(11);
  const std::vector<float> e = RandomFloats(3 * kHidden, random);
  const LanguageModelBatch batch{.tokens = UploadInts(*ops, kTokens),
                                 .labels = UploadInts(*ops, kLabels),
                                 .embeddings = Upload(*ops, e, {3, kHidden}, DType::kF32),
                                 .embedding_positions = kPositions};
  auto out = (*model)->Forward({.ops = ops.get(), .sequences = &*seqs}, batch);
  ASSERT_TRUE(out.ok()) << out.status();
  std::map<std::string, std::vector<double>> w;
  for (const auto& [name, p] : ParametersByName(**model)) w[name] = Download(*ops, p->master());
  const int64_t t = 9, c = kHidden;
  std::vector<double> x(t * c);
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t j = 0; j < c; ++j)
      x[r * c + j] = w["lm.embedding.word_embeddings.weight"][kTokens[r] * c + j];
  }
  for (size_t m = 0; m < kPositions.size(); ++m) {
    for (int64_t j = 0; j < c; ++j) x[kPositions[m] * c + j] = e[m * c + j];
  }
  for (int i = 0; i < 2; ++i) {
    x = testing::TransformerLayerFloat64(config.transformer, absl::StrCat("lm.decoder.layers.", i),
                                         w, x, kLengths);
  }
  x = kernels::testing::RmsNormFloat64(x, w["lm.decoder.final_layernorm.weight"], {}, t, c,
                                       config.transformer.norm_epsilon)
          .y;
  const std::vector<double> logits =
      kernels::testing::GemmFloat64(x, false, w["lm.output_layer.weight"], true, t, kVocab, c);
  std::vector<double> want(t, 0.0);
  double want_sum = 0;
  for (int64_t r = 0; r < t; ++r) {
    if (kLabels[r] < 0) continue;
    double most = -INFINITY, sum = 0;
    for (int64_t v = 0; v < kVocab; ++v) most = std::max(most, logits[r * kVocab + v]);
    for (int64_t v = 0; v < kVocab; ++v) sum += std::exp(logits[r * kVocab + v] - most);
    want[r] = std::log(sum) + most - logits[r * kVocab + kLabels[r]];
    want_sum += want[r];
  }
  const std::vector<double> got = Download(*ops, out->token_loss);
  for (int64_t r = 0; r < t; ++r) EXPECT_NEAR(got[r], want[r], 1e-5 * (1 + want[r])) << r;
  EXPECT_NEAR(Download(*ops, out->loss_sum)[0], want_sum, 1e-5 * (1 + want_sum));
}

}  // namespace
}  // namespace mimo
