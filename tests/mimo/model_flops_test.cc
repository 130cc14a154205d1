// Tests of mimo/model_flops.h: the token-wise FLOPs equal 2 x the matrix parameters a token
// passes through (counted from the built model's 2-D weights, an independent route), plus the
// attention pairs; a MoE layer counts top_k of its experts.
#include "mimo/model_flops.h"

#include <gtest/gtest.h>

#include "kernels/ops.h"

namespace mimo {
namespace {

// Elements of the model's matrices (2-D weights), leaving out `skip` (embedding tables).
template <typename Model>
double MatrixElements(const Model& model, const std::string& skip) {
  std::vector<Parameter*> params;
  model.AppendParameters(params);
  double n = 0;
  for (Parameter* p : params) {
    if (p->weight().dim() == 2 && p->name().find(skip) == std::string::npos) n += p->numel();
  }
  return n;
}

TransformerConfig Transformer(bool causal) {
  TransformerConfig t;
  t.num_layers = 3;
  t.hidden_size = 24;
  t.num_attention_heads = 4;
  t.num_query_groups = 2;
  t.ffn_hidden_size = 40;
  t.causal = causal;
  t.rotary = causal;
  t.activation = causal ? MlpActivation::kSwiglu : MlpActivation::kGelu;
  t.dtype = kernels::DType::kF32;
  return t;
}

TEST(ModelFlopsTest, DenseLanguageModelIsTwiceItsMatricesPerTokenPlusAttention) {
  auto ops = kernels::NewCpuOps();
  LanguageModelConfig c{.transformer = Transformer(true), .vocab_size = 50};
  auto model = LanguageModel::Create({.ops = ops.get(), .config = &c.transformer, .seed = 1}, c);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<int32_t> lengths = {7, 1, 12};
  const double pairs = 7 * 8 / 2 + 1 + 12 * 13 / 2;
  const double want =
      3 * (2 * MatrixElements(**model, "word_embeddings") * 20 + 3 * 4 * 24 * pairs);
  EXPECT_DOUBLE_EQ(LanguageModelTrainingFlops(c, lengths), want);
}

TEST(ModelFlopsTest, MoeLayersCountTheRouterAndTopKExperts) {
  LanguageModelConfig dense{.transformer = Transformer(true), .vocab_size = 50};
  LanguageModelConfig moe = dense;
  MoeConfig m;
  m.router = {.experts = 8, .top_k = 2};
  m.expert_ffn_hidden_size = 20;
  m.shared_expert_ffn_hidden_size = 16;
  moe.moe = m;
  moe.moe_layer_freq = 2;  // Layers 0 and 2 of 0..2 (numbered from 0, as the model does).
  const std::vector<int32_t> lengths = {10};
  const double per_token_delta = 2 * 24 * 8 + 2 * (6 * 24 * 20) + 6 * 24 * 16 - 6 * 24 * 40;
  EXPECT_DOUBLE_EQ(
      LanguageModelTrainingFlops(moe, lengths) - LanguageModelTrainingFlops(dense, lengths),
      3 * 10 * 2 * per_token_delta);
}

TEST(ModelFlopsTest, EncoderIsTwiceItsMatricesPerTokenPlusBidirectionalAttention) {
  auto ops = kernels::NewCpuOps();
  ModalityEncoderConfig c{.input = EncoderInput::kAudio,
                          .num_mel_bins = 5,
                          .frames_per_token = 2,
                          .max_frames = 16,
                          .transformer = Transformer(false),
                          .projector = {.kind = ProjectorKind::kMlp, .hidden_size = 30},
                          .output_size = 12};
  c.transformer.num_query_groups = 0;
  auto encoder =
      ModalityEncoder::Create({.ops = ops.get(), .config = &c.transformer, .seed = 1}, c);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  const std::vector<int64_t> tokens = {3, 8};
  const double want =
      3 * (2 * MatrixElements(**encoder, "position_embedding") * 11 + 3 * 4 * 24 * (9 + 64));
  EXPECT_DOUBLE_EQ(EncoderTrainingFlops(c, tokens), want);
}

}  // namespace
}  // namespace mimo
