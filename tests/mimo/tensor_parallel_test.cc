// Tensor + sequence parallelism over two Gloo ranks against one rank on the same rows: DenseMlp
// (SwiGLU without biases, GELU with them), whole TransformerLayers (RMSNorm, SwiGLU, RoPE,
// causal grouped-query attention over packed sequences, hidden dropout; LayerNorm, GELU, linear
// biases, bidirectional attention) and a language model (vocabulary-parallel embedding, output
// layer and cross-entropy, modality rows spliced in). Each member's parameters are its slices of
// the one-rank parameters (same initial values), its output and input gradient are its block of the
// one-rank rows, each sharded gradient is its slice of the one-rank gradient, and each replicated
// parameter (norms, row-parallel biases) gets the whole one-rank gradient on both members, fp32.
// An MoE layer under tp is sequence parallel: the router's gradient is whole on both members,
// the routed experts' gradients (members' rows only, summed later over expt_dp) and the auxiliary
// losses add up over the members to the one-rank values.
// Modality encoders: their layers split, the rest whole on both members.
// What cannot split is refused with a message that names it.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "common/status_macros.h"
#include "mimo/dense_mlp.h"
#include "mimo/language_model.h"
#include "mimo/modality_encoder.h"
#include "mimo/moe_layer.h"
#include "mimo/packed_sequences.h"
#include "mimo/transformer_layer.h"
#include "tests/comm/run_ranks.h"
#include "tests/mimo/model_test_util.h"
#include "tests/mimo/parallel_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using testing::BlockFactory;
using testing::EncoderResult;
using testing::Host;
using testing::LmResult;
using testing::Param;
using testing::Perturb;
using testing::RandomFloats;
using testing::RelativeError;
using testing::Result;
using testing::Rows;
using testing::Run;
using testing::RunEncoder;
using testing::RunLm;
using testing::SliceOf;
using testing::Upload;

using testing::kHidden;

// A routed expert's parameter: each tp member's gradient holds its rows' part.
bool IsRoutedExpert(const std::string& name) {
  return name.find(".mlp.experts.") != std::string::npos;
}

// Runs `factory`'s block on one rank and over tp = 2, and compares as the file comment says.
void ExpectSplitEqualsOneRank(const TransformerConfig& config, const BlockFactory& factory,
                              const std::vector<int32_t>& lengths) {
  int64_t tokens = 0;
  for (int32_t n : lengths) tokens += n;
  std::mt19937 random(4);
  const std::vector<float> x = RandomFloats(tokens * kHidden, random);
  const std::vector<float> dy = RandomFloats(tokens * kHidden, random);
  auto one = kernels::NewCpuOps();
  const Result want = Run(*one, config, {}, factory, {.lengths = lengths}, x, dy, tokens);
  ASSERT_FALSE(want.params.empty());
  std::vector<Result> got(2);
  const int64_t half = tokens / 2;
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    got[rank] =
        Run(*ops, config, ModelGroupsOf(**groups), factory, {.lengths = lengths},
            Rows(x, kHidden, rank * half, half), Rows(dy, kHidden, rank * half, half), half);
  });
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE(::testing::Message() << "member " << r);
    ASSERT_EQ(got[r].params.size(), want.params.size());
    EXPECT_LT(RelativeError(got[r].y, Rows(want.y, kHidden, r * half, half)), 1e-6) << "y";
    EXPECT_LT(RelativeError(got[r].dx, Rows(want.dx, kHidden, r * half, half)), 1e-6) << "dx";
    for (const auto& [name, p] : got[r].params) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(want.params.contains(name));
      const Param& whole = want.params.at(name);
      EXPECT_EQ(p.weight, SliceOf(whole.weight, p.spec));
      if (IsRoutedExpert(name)) {
        std::vector<float> sum = p.grad;
        const std::vector<float>& other = got[1 - r].params.at(name).grad;
        for (size_t i = 0; i < sum.size() && i < other.size(); ++i) sum[i] += other[i];
        EXPECT_LT(RelativeError(sum, whole.grad), 1e-6);
        continue;
      }
      EXPECT_LT(RelativeError(p.grad, SliceOf(whole.grad, p.spec)), 1e-6);
      if (p.spec.shards.empty()) {
        // Replicated: bitwise the same gradient on both members (the optimizer keeps them equal).
        EXPECT_EQ(p.grad, got[1 - r].params.at(name).grad);
      }
    }
  }
  // The auxiliary losses: the members' shares add up to the one-rank losses.
  ASSERT_EQ(got[0].aux.size(), want.aux.size());
  ASSERT_EQ(got[1].aux.size(), want.aux.size());
  for (size_t i = 0; i < want.aux.size(); ++i) {
    EXPECT_NEAR(got[0].aux[i] + got[1].aux[i], want.aux[i], 1e-6 * std::abs(want.aux[i])) << i;
    EXPECT_GT(want.aux[i], 0.0f) << i;
  }
  // Something was split: attention and MLP weights are sharded.
  int sharded = 0;
  for (const auto& [name, p] : got[0].params) sharded += p.spec.shards.empty() ? 0 : 1;
  EXPECT_GE(sharded, 2);
}

TransformerConfig Config() {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = kHidden;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.ffn_hidden_size = 24;
  c.add_bias_linear = false;
  c.dtype = kernels::DType::kF32;
  return c;
}

BlockFactory Mlp() {
  return [](const BuildContext& b) -> absl::StatusOr<std::unique_ptr<Block>> {
    return DenseMlpBuilder().Build(b);
  };
}

BlockFactory Layer() {
  return [](const BuildContext& b) -> absl::StatusOr<std::unique_ptr<Block>> {
    BuildContext layer_build = b;
    layer_build.layer_number = 1;
    MIMO_ASSIGN_OR_RETURN(auto layer, TransformerLayer::Create(layer_build, DenseMlpBuilder()));
    return std::unique_ptr<Block>(std::move(layer));
  };
}

BlockFactory MoeTransformerLayer(MoeConfig moe,
                                 std::shared_ptr<const ExpertsBuilder> experts = nullptr) {
  return [moe, experts](const BuildContext& b) -> absl::StatusOr<std::unique_ptr<Block>> {
    BuildContext layer_build = b;
    layer_build.layer_number = 1;
    MIMO_ASSIGN_OR_RETURN(auto layer,
                          TransformerLayer::Create(layer_build, MoeMlpBuilder(moe, experts)));
    return std::unique_ptr<Block>(std::move(layer));
  };
}

TEST(TensorParallelTest, SwigluMlp) { ExpectSplitEqualsOneRank(Config(), Mlp(), {10}); }

TEST(TensorParallelTest, GeluMlpWithBiases) {
  TransformerConfig c = Config();
  c.activation = MlpActivation::kGelu;
  c.add_bias_linear = true;
  ExpectSplitEqualsOneRank(c, Mlp(), {10});
}

TEST(TensorParallelTest, CausalGroupedQueryLayerWithRopeAndDropout) {
  TransformerConfig c = Config();
  c.hidden_dropout = 0.2f;
  ExpectSplitEqualsOneRank(c, Layer(), {3, 7, 2});  // Sequences across the members' row blocks.
}

TEST(TensorParallelTest, BidirectionalLayerNormGeluLayerWithBiases) {
  TransformerConfig c = Config();
  c.norm = NormKind::kLayerNorm;
  c.activation = MlpActivation::kGelu;
  c.add_bias_linear = true;
  c.causal = false;
  c.rotary = false;
  c.num_query_groups = 4;
  ExpectSplitEqualsOneRank(c, Layer(), {5, 9});
}

// Megatron's rule: an MoE layer under tp is sequence parallel. Each member routes its rows;
// shared experts tensor parallel beside the routed ones; both auxiliary losses.
TEST(TensorParallelTest, SequenceParallelMoeLayer) {
  const MoeConfig moe{.router = {.experts = 4, .top_k = 2},
                      .aux_loss_coeff = 0.01f,
                      .z_loss_coeff = 0.001f,
                      .shared_expert_ffn_hidden_size = 8};
  ExpectSplitEqualsOneRank(Config(), MoeTransformerLayer(moe), {3, 7, 2});
}

TEST(TensorParallelTest, SequenceParallelSigmoidMoeLayerWithGroupedExperts) {
  TransformerConfig c = Config();
  c.activation = MlpActivation::kGelu;
  c.add_bias_linear = true;
  const MoeConfig moe{.router = {.experts = 6, .top_k = 3, .score = kernels::RouterScore::kSigmoid},
                      .aux_loss_coeff = 0.02f,
                      .z_loss_coeff = 0.002f,
                      .expert_ffn_hidden_size = 10};
  ExpectSplitEqualsOneRank(c, MoeTransformerLayer(moe, std::make_shared<GroupedExpertsBuilder>()),
                           {14});
}

// The language model: vocabulary-parallel embedding and output layer around tensor + sequence
// parallel layers, modality rows spliced over placeholders, packed sequences, unlabelled tokens.
TEST(TensorParallelTest, VocabularyParallelLanguageModel) {
  LanguageModelConfig config{.transformer = Config(), .vocab_size = 32, .vocab_chunk = 5};
  const std::vector<int32_t> lengths = {5, 9, 2};  // 16 tokens: 8 rows a member.
  std::mt19937 random(11);
  std::vector<int32_t> tokens(16), labels(16);
  for (int i = 0; i < 16; ++i) {
    tokens[i] = static_cast<int32_t>(random() % 32);
    labels[i] = i % 5 == 1 ? -1 : static_cast<int32_t>(random() % 32);
  }
  const std::vector<int32_t> positions = {1, 2, 9};  // Placeholders of both members' rows.
  const std::vector<float> embeddings = RandomFloats(3 * kHidden, random);
  auto one = kernels::NewCpuOps();
  const LmResult want =
      RunLm(*one, config, {}, {.lengths = lengths}, tokens, labels, embeddings, positions);
  ASSERT_FALSE(want.params.empty());
  std::vector<LmResult> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    // Member 1's modality rows are not read: it gets other values.
    const std::vector<float> mine =
        rank == 0 ? embeddings : std::vector<float>(embeddings.size(), 99.0f);
    got[rank] = RunLm(*ops, config, ModelGroupsOf(**groups), {.lengths = lengths}, tokens, labels,
                      mine, positions);
  });
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE(::testing::Message() << "member " << r);
    EXPECT_LT(RelativeError(got[r].token_loss, want.token_loss), 1e-6);
    EXPECT_LT(RelativeError(got[r].loss_sum, want.loss_sum), 1e-6);
    EXPECT_LT(RelativeError(got[r].dembeddings, want.dembeddings), 1e-6);
    ASSERT_EQ(got[r].params.size(), want.params.size());
    for (const auto& [name, p] : got[r].params) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(want.params.contains(name));
      EXPECT_EQ(p.weight, SliceOf(want.params.at(name).weight, p.spec));
      EXPECT_LT(RelativeError(p.grad, SliceOf(want.params.at(name).grad, p.spec)), 1e-6);
    }
    EXPECT_FALSE(got[r].params.at("lm.embedding.word_embeddings.weight").spec.shards.empty());
    EXPECT_FALSE(got[r].params.at("lm.output_layer.weight").spec.shards.empty());
  }
}

// A modality encoder over tp = 2: its layers tensor + sequence parallel, the rest whole on both
// members. Images (3 x 4 patches: 12 rows, no padding) and audio clips of 3 + 2 tokens (a padding
// row): every member returns all the one-rank embeddings, its slices get the one-rank
// gradients' slices and its whole parameters the whole one-rank gradients, the same on both.
TEST(TensorParallelTest, ModalityEncoders) {
  for (const EncoderInput input : {EncoderInput::kImages, EncoderInput::kAudio}) {
    const bool images = input == EncoderInput::kImages;
    SCOPED_TRACE(images ? "images" : "audio");
    TransformerConfig layers = Config();
    layers.num_layers = 2;
    const auto [c, shape, frames, rows] = testing::SmallEncoderCase(input, layers);
    std::mt19937 random(13);
    const std::vector<float> x = RandomFloats(kernels::NumElements(shape), random);
    const std::vector<float> dy = RandomFloats(rows * 6, random);
    auto one = kernels::NewCpuOps();
    const EncoderResult want = RunEncoder(*one, c, {}, x, shape, frames, dy);
    ASSERT_EQ(want.embeddings.size(), static_cast<size_t>(rows * 6));
    std::vector<EncoderResult> got(2);
    comm::InMemoryStore store;
    comm::RunRanks(2, [&](int rank) {
      auto groups = comm::ProcessGroups::CreateGloo(
          {{.kind = "tp", .members = {0, 1}}}, store,
          {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
      ASSERT_TRUE(groups.ok()) << groups.status();
      auto ops = kernels::NewCpuOps();
      got[rank] = RunEncoder(*ops, c, ModelGroupsOf(**groups), x, shape, frames, dy);
    });
    int sharded = 0;
    for (int r = 0; r < 2; ++r) {
      SCOPED_TRACE(::testing::Message() << "member " << r);
      EXPECT_LT(RelativeError(got[r].embeddings, want.embeddings), 1e-6);
      ASSERT_EQ(got[r].params.size(), want.params.size());
      for (const auto& [name, p] : got[r].params) {
        SCOPED_TRACE(name);
        const Param& whole = want.params.at(name);
        EXPECT_EQ(p.weight, SliceOf(whole.weight, p.spec));
        EXPECT_LT(RelativeError(p.grad, SliceOf(whole.grad, p.spec)), 1e-6);
        if (p.spec.shards.empty()) {
          EXPECT_EQ(p.grad, got[1 - r].params.at(name).grad);
        } else {
          ++sharded;
        }
      }
    }
    EXPECT_GE(sharded, 8);  // 2 members x 2 layers x (qkv, proj, fc1, fc2).
  }
}

TEST(TensorParallelTest, RefusesWhatItCannotSplit) {
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    TransformerConfig config = Config();
    BuildContext build{
        .ops = ops.get(), .config = &config, .prefix = "b", .groups = ModelGroupsOf(**groups)};
    const auto odd_mlp = DenseMlp::Create(build, 7);
    EXPECT_EQ(odd_mlp.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(odd_mlp.status().message().find("divides by it, not 7"), std::string::npos)
        << odd_mlp.status();
    config.num_query_groups = 1;  // One key/value head cannot split over two members.
    const auto mqa = TransformerLayer::Create(build, DenseMlpBuilder());
    EXPECT_EQ(mqa.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(mqa.status().message().find("num_query_groups (1)"), std::string::npos)
        << mqa.status();
    // The per-sequence load-balancing loss (sequences straddle the members' rows); a
    // vocabulary that does not split.
    config.num_query_groups = 2;
    const auto moe = MoeLayer::Create(build, MoeConfig{.router = {.experts = 2, .top_k = 1},
                                                       .aux_loss_coeff = 0.01f,
                                                       .per_sequence_aux_loss = true});
    EXPECT_EQ(moe.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(moe.status().message().find("per_sequence_aux_loss with tp 2"), std::string::npos)
        << moe.status();
    const LanguageModelConfig lm{.transformer = config, .vocab_size = 33};
    const auto model = LanguageModel::Create(build, lm);
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(model.status().message().find("vocab_size 33"), std::string::npos) << model.status();
  });
}

}  // namespace
}  // namespace mimo
