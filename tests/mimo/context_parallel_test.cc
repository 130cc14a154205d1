// Context parallelism over Gloo ranks against one rank on the same sequences: the ring attention
// alone (cp 2 and 3, causal and bidirectional, grouped-query), transformer layers (RoPE at the
// whole sequences' positions, dropout with the one-rank masks, MoE layers with both auxiliary
// losses), tp 2 x cp 2, the language model with modality rows, and modality encoders (all-to-all
// attention over whole sequences: cp 2, cp 4, tp 2 x cp 2, dropout, padded rows). Each member's
// outputs and input gradients equal the one-rank rows of the tokens it holds (an encoder's: all
// the embeddings), its parameters' gradients
// summed over the cp members (as the dp x cp gradient reduction sums them) the one-rank ones,
// and the auxiliary losses' shares add up to the one-rank losses (relative L2 error < 1e-5); in
// bf16 the ring attention within 4 x the one-rank bf16 error of fp32 attention + 2e-3.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "common/bfloat16.h"
#include "common/status_macros.h"
#include "mimo/context_attention.h"
#include "mimo/dense_mlp.h"
#include "mimo/language_model.h"
#include "mimo/modality_encoder.h"
#include "mimo/moe_layer.h"
#include "mimo/transformer_layer.h"
#include "parallel/context_split.h"
#include "tests/comm/run_ranks.h"
#include "tests/mimo/model_test_util.h"
#include "tests/mimo/parallel_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using testing::BlockFactory;
using testing::EncoderResult;
using testing::Gather;
using testing::Host;
using testing::kHidden;
using testing::LmResult;
using testing::Param;
using testing::RandomFloats;
using testing::RelativeError;
using testing::Result;
using testing::Run;
using testing::RunEncoder;
using testing::RunLm;
using testing::SliceOf;
using testing::TokensOf;
using testing::Upload;

constexpr double kBound = 1e-5;

// tp x cp ranks, tp fastest (Megatron's order): rank = t + tp * c.
struct Split {
  int tp = 1;
  int cp = 2;
  int ranks() const { return tp * cp; }
  int tp_rank(int rank) const { return rank % tp; }
  int cp_rank(int rank) const { return rank / tp; }
};

std::vector<comm::GroupSpec> GroupsOf(const Split& s, int rank) {
  std::vector<comm::GroupSpec> specs;
  const int t = s.tp_rank(rank), c = s.cp_rank(rank);
  comm::GroupSpec tp{.kind = "tp"}, cp{.kind = "cp"}, tp_cp{.kind = "tp_cp"};
  for (int i = 0; i < s.tp; ++i) tp.members.push_back(c * s.tp + i);
  for (int j = 0; j < s.cp; ++j) cp.members.push_back(t + s.tp * j);
  for (int r = 0; r < s.ranks(); ++r) tp_cp.members.push_back(r);
  if (s.tp > 1) specs.push_back(tp);
  specs.push_back(cp);
  specs.push_back(tp_cp);
  return specs;
}

// Runs body(rank, groups) on every rank of `s` over Gloo.
template <typename Body>
void OnRanks(const Split& s, Body body) {
  comm::InMemoryStore store;
  comm::RunRanks(s.ranks(), [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        GroupsOf(s, rank), store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    body(rank, **groups);
  });
}

// Rows [member * n, (member + 1) * n) of a (rows, width) matrix: a tp member's block.
template <typename T>
std::vector<T> RowBlock(const std::vector<T>& m, int64_t width, int member, int members) {
  const int64_t n = static_cast<int64_t>(m.size()) / width / members;
  return {m.begin() + member * n * width, m.begin() + (member + 1) * n * width};
}

void ExpectContextSplitEqualsOneRank(const TransformerConfig& config, const BlockFactory& factory,
                                     const std::vector<int32_t>& lengths, Split split) {
  int64_t tokens = 0;
  for (int32_t n : lengths) tokens += n;
  std::mt19937 random(std::random_device{}());
  const std::vector<float> x = RandomFloats(tokens * kHidden, random);
  const std::vector<float> dy = RandomFloats(tokens * kHidden, random);
  auto one = kernels::NewCpuOps();
  const Result want = Run(*one, config, {}, factory, {.lengths = lengths}, x, dy, tokens);
  ASSERT_FALSE(want.params.empty());
  std::vector<Result> got(split.ranks());
  OnRanks(split, [&](int rank, const comm::ProcessGroups& groups) {
    const int t = split.tp_rank(rank), c = split.cp_rank(rank);
    const std::vector<int64_t> mine = TokensOf(lengths, split.cp, c);
    auto ops = kernels::NewCpuOps();
    got[rank] = Run(*ops, config, ModelGroupsOf(groups), factory,
                    {.lengths = lengths, .context_size = split.cp, .context_rank = c},
                    RowBlock(Gather(x, kHidden, mine), kHidden, t, split.tp),
                    RowBlock(Gather(dy, kHidden, mine), kHidden, t, split.tp),
                    static_cast<int64_t>(mine.size()) / split.tp);
  });
  std::vector<float> aux(want.aux.size(), 0.0f);
  for (int rank = 0; rank < split.ranks(); ++rank) {
    SCOPED_TRACE(::testing::Message() << "rank " << rank);
    const int t = split.tp_rank(rank), c = split.cp_rank(rank);
    const std::vector<int64_t> mine = TokensOf(lengths, split.cp, c);
    EXPECT_LT(
        RelativeError(got[rank].y, RowBlock(Gather(want.y, kHidden, mine), kHidden, t, split.tp)),
        kBound)
        << "y";
    EXPECT_LT(
        RelativeError(got[rank].dx, RowBlock(Gather(want.dx, kHidden, mine), kHidden, t, split.tp)),
        kBound)
        << "dx";
    ASSERT_EQ(got[rank].params.size(), want.params.size());
    ASSERT_EQ(got[rank].aux.size(), want.aux.size());
    for (size_t i = 0; i < aux.size(); ++i) aux[i] += got[rank].aux[i];
    if (c != 0) continue;
    for (const auto& [name, p] : got[rank].params) {
      SCOPED_TRACE(name);
      const testing::Param& whole = want.params.at(name);
      EXPECT_EQ(p.weight, SliceOf(whole.weight, p.spec));
      // Over this tp member's cp peers; the routed experts (whole on every rank, each tp
      // member's rows reaching its own copy) over every rank.
      const bool routed = name.find(".mlp.experts.") != std::string::npos;
      std::vector<float> sum(p.grad.size(), 0.0f);
      for (int other = 0; other < split.ranks(); ++other) {
        if (!routed && split.tp_rank(other) != t) continue;
        const std::vector<float>& g = got[other].params.at(name).grad;
        for (size_t i = 0; i < sum.size(); ++i) sum[i] += g[i];
      }
      EXPECT_LT(RelativeError(sum, SliceOf(whole.grad, p.spec)), kBound);
    }
  }
  for (size_t i = 0; i < want.aux.size(); ++i) {
    EXPECT_NEAR(aux[i], want.aux[i], 1e-5 * std::abs(want.aux[i])) << i;
    EXPECT_GT(want.aux[i], 0.0f) << i;
  }
}

TransformerConfig Config() {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = kHidden;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.ffn_hidden_size = 24;
  c.add_bias_linear = false;
  c.dtype = DType::kF32;
  return c;
}

BlockFactory Layer(std::optional<MoeConfig> moe = std::nullopt) {
  return [moe](const BuildContext& b) -> absl::StatusOr<std::unique_ptr<Block>> {
    BuildContext layer_build = b;
    layer_build.layer_number = 1;
    std::unique_ptr<TransformerLayer> layer;
    if (moe.has_value()) {
      MIMO_ASSIGN_OR_RETURN(layer, TransformerLayer::Create(layer_build, MoeMlpBuilder(*moe)));
    } else {
      MIMO_ASSIGN_OR_RETURN(layer, TransformerLayer::Create(layer_build, DenseMlpBuilder()));
    }
    return std::unique_ptr<Block>(std::move(layer));
  };
}

// The ring attention alone: q, k, v of the whole sequences, each member's rows, against the
// attention op over the whole sequences; the backward's dq, dk, dv too.
void ExpectRingAttentionEqualsOneRank(const std::vector<int32_t>& lengths, int cp, bool causal) {
  SCOPED_TRACE(::testing::Message() << "cp " << cp << (causal ? " causal" : " bidirectional"));
  const int64_t heads = 4, groups = 2, d = 8, hd = heads * d, gd = groups * d;
  int64_t t = 0;
  for (int32_t n : lengths) t += n;
  std::mt19937 random(std::random_device{}());
  const std::vector<float> q = RandomFloats(t * hd, random), k = RandomFloats(t * gd, random),
                           v = RandomFloats(t * gd, random), dout = RandomFloats(t * hd, random);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  auto one = kernels::NewCpuOps();
  std::vector<int32_t> cu = {0};
  for (int32_t n : lengths) cu.push_back(cu.back() + n);
  std::vector<float> out(t * hd), lse(heads * t), dq(t * hd), dk(t * gd), dv(t * gd);
  const kernels::AttentionParams fwd{.q = q.data(),
                                     .k = k.data(),
                                     .v = v.data(),
                                     .out = out.data(),
                                     .lse = lse.data(),
                                     .cu_seqlens = cu.data(),
                                     .num_seqs = static_cast<int64_t>(lengths.size()),
                                     .total_tokens = t,
                                     .heads = heads,
                                     .kv_heads = groups,
                                     .head_dim = d,
                                     .scale = scale,
                                     .causal = causal};
  ASSERT_TRUE(kernels::AttentionCpu(fwd).ok());
  ASSERT_TRUE(kernels::AttentionBackwardCpu({.dout = dout.data(),
                                             .q = q.data(),
                                             .k = k.data(),
                                             .v = v.data(),
                                             .out = out.data(),
                                             .lse = lse.data(),
                                             .dq = dq.data(),
                                             .dk = dk.data(),
                                             .dv = dv.data(),
                                             .cu_seqlens = cu.data(),
                                             .num_seqs = fwd.num_seqs,
                                             .total_tokens = t,
                                             .heads = heads,
                                             .kv_heads = groups,
                                             .head_dim = d,
                                             .scale = scale,
                                             .causal = causal})
                  .ok());
  const Split split{.tp = 1, .cp = cp};
  OnRanks(split, [&](int rank, const comm::ProcessGroups& pg) {
    const std::vector<int64_t> mine = TokensOf(lengths, cp, rank);
    const int64_t rows = static_cast<int64_t>(mine.size());
    auto ops = kernels::NewCpuOps();
    auto seqs = PackedSequences::CreateSplit(*ops, lengths, cp, rank);
    ASSERT_TRUE(seqs.ok()) << seqs.status();
    const StepContext ctx{.ops = ops.get(), .sequences = &*seqs};
    const ContextAttentionShape shape{
        .heads = heads, .kv_heads = groups, .head_dim = d, .scale = scale, .causal = causal};
    const kernels::Tensor tq = Upload(*ops, Gather(q, hd, mine), {rows, hd}, DType::kF32);
    const kernels::Tensor tk = Upload(*ops, Gather(k, gd, mine), {rows, gd}, DType::kF32);
    const kernels::Tensor tv = Upload(*ops, Gather(v, gd, mine), {rows, gd}, DType::kF32);
    kernels::Tensor o;
    ContextAttentionLse l;
    ASSERT_TRUE(ContextAttentionForward(ctx, *pg.Get("cp"), shape, tq, tk, tv, o, l).ok());
    EXPECT_LT(RelativeError(Host(*ops, o), Gather(out, hd, mine)), kBound) << "rank " << rank;
    const kernels::Tensor gq = Upload(*ops, std::vector<float>(rows * hd), {rows, hd}, DType::kF32);
    const kernels::Tensor gk = Upload(*ops, std::vector<float>(rows * gd), {rows, gd}, DType::kF32);
    const kernels::Tensor gv = Upload(*ops, std::vector<float>(rows * gd), {rows, gd}, DType::kF32);
    ASSERT_TRUE(
        ContextAttentionBackward(ctx, *pg.Get("cp"), shape,
                                 Upload(*ops, Gather(dout, hd, mine), {rows, hd}, DType::kF32), tq,
                                 tk, tv, o, l, gq, gk, gv)
            .ok());
    EXPECT_LT(RelativeError(Host(*ops, gq), Gather(dq, hd, mine)), kBound) << "dq rank " << rank;
    EXPECT_LT(RelativeError(Host(*ops, gk), Gather(dk, gd, mine)), kBound) << "dk rank " << rank;
    EXPECT_LT(RelativeError(Host(*ops, gv), Gather(dv, gd, mine)), kBound) << "dv rank " << rank;
  });
}

TEST(ContextParallelTest, RingAttention) {
  for (const bool causal : {true, false}) {
    ExpectRingAttentionEqualsOneRank({8, 4, 12}, 2, causal);
    ExpectRingAttentionEqualsOneRank({6, 18, 12}, 3, causal);
    ExpectRingAttentionEqualsOneRank({8, 16}, 4, causal);
  }
}

// bf16 (as on GPUs): the ring's outputs and gradients, rounded at every merge step and every
// hop of the keys' gradients, against fp32 attention on the same bf16 inputs, within 4 x the
// one-rank bf16 attention's error + 2e-3.
TEST(ContextParallelTest, RingAttentionInBf16) {
  const std::vector<int32_t> lengths = {8, 16, 12};
  const int cp = 2;
  const int64_t heads = 4, groups = 2, d = 8, hd = heads * d, gd = groups * d, t = 36;
  std::mt19937 random(std::random_device{}());
  auto rounded = [&](int64_t n) {
    std::vector<float> v = RandomFloats(n, random);
    for (float& x : v) x = BFloat16ToFloat(FloatToBFloat16(x));
    return v;
  };
  const std::vector<float> q = rounded(t * hd), k = rounded(t * gd), v = rounded(t * gd),
                           dout = rounded(t * hd);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<int32_t> cu = {0};
  for (int32_t n : lengths) cu.push_back(cu.back() + n);
  // One rank in `dtype`: out, dq, dk, dv as floats.
  auto one_rank = [&](DType dtype) {
    auto ops = kernels::NewCpuOps();
    auto seqs = PackedSequences::Create(*ops, lengths);
    EXPECT_TRUE(seqs.ok());
    const kernels::Tensor tq = Upload(*ops, q, {t, hd}, dtype),
                          tk = Upload(*ops, k, {t, gd}, dtype),
                          tv = Upload(*ops, v, {t, gd}, dtype),
                          td = Upload(*ops, dout, {t, hd}, dtype);
    auto out = kernels::Tensor::Empty({t, hd}, dtype, ops->allocator(), nullptr);
    auto lse = kernels::Tensor::Empty({heads, t}, DType::kF32, ops->allocator(), nullptr);
    auto dq = kernels::Tensor::Empty({t, hd}, dtype, ops->allocator(), nullptr);
    auto dk = kernels::Tensor::Empty({t, gd}, dtype, ops->allocator(), nullptr);
    auto dv = kernels::Tensor::Empty({t, gd}, dtype, ops->allocator(), nullptr);
    EXPECT_TRUE(ops->Attention({.dtype = dtype,
                                .q = tq.data(),
                                .k = tk.data(),
                                .v = tv.data(),
                                .out = out->data(),
                                .lse = lse->data<float>(),
                                .cu_seqlens = cu.data(),
                                .num_seqs = 3,
                                .total_tokens = t,
                                .heads = heads,
                                .kv_heads = groups,
                                .head_dim = d,
                                .scale = scale,
                                .causal = true})
                    .ok());
    EXPECT_TRUE(ops->AttentionBackward({.dtype = dtype,
                                        .dout = td.data(),
                                        .q = tq.data(),
                                        .k = tk.data(),
                                        .v = tv.data(),
                                        .out = out->data(),
                                        .lse = lse->data<float>(),
                                        .dq = dq->data(),
                                        .dk = dk->data(),
                                        .dv = dv->data(),
                                        .cu_seqlens = cu.data(),
                                        .num_seqs = 3,
                                        .total_tokens = t,
                                        .heads = heads,
                                        .kv_heads = groups,
                                        .head_dim = d,
                                        .scale = scale,
                                        .causal = true})
                    .ok());
    std::vector<std::vector<double>> r;
    for (const kernels::Tensor* x : {&*out, &*dq, &*dk, &*dv}) {
      r.push_back(testing::Download(*ops, *x));
    }
    return r;
  };
  const auto exact = one_rank(DType::kF32), single = one_rank(DType::kBF16);
  std::vector<std::vector<double>> ring(4);  // Whole tensors, assembled from the members' rows.
  for (int i = 0; i < 4; ++i) ring[i].assign(exact[i].size(), 0.0);
  OnRanks({.cp = cp}, [&](int rank, const comm::ProcessGroups& pg) {
    const std::vector<int64_t> mine = TokensOf(lengths, cp, rank);
    const int64_t rows = static_cast<int64_t>(mine.size());
    auto ops = kernels::NewCpuOps();
    auto seqs = PackedSequences::CreateSplit(*ops, lengths, cp, rank);
    ASSERT_TRUE(seqs.ok());
    const StepContext ctx{.ops = ops.get(), .sequences = &*seqs};
    const ContextAttentionShape shape{
        .heads = heads, .kv_heads = groups, .head_dim = d, .scale = scale, .causal = true};
    const kernels::Tensor tq = Upload(*ops, Gather(q, hd, mine), {rows, hd}, DType::kBF16);
    const kernels::Tensor tk = Upload(*ops, Gather(k, gd, mine), {rows, gd}, DType::kBF16);
    const kernels::Tensor tv = Upload(*ops, Gather(v, gd, mine), {rows, gd}, DType::kBF16);
    kernels::Tensor o;
    ContextAttentionLse l;
    ASSERT_TRUE(ContextAttentionForward(ctx, *pg.Get("cp"), shape, tq, tk, tv, o, l).ok());
    const kernels::Tensor gq =
        Upload(*ops, std::vector<float>(rows * hd), {rows, hd}, DType::kBF16);
    const kernels::Tensor gk =
        Upload(*ops, std::vector<float>(rows * gd), {rows, gd}, DType::kBF16);
    const kernels::Tensor gv =
        Upload(*ops, std::vector<float>(rows * gd), {rows, gd}, DType::kBF16);
    ASSERT_TRUE(
        ContextAttentionBackward(ctx, *pg.Get("cp"), shape,
                                 Upload(*ops, Gather(dout, hd, mine), {rows, hd}, DType::kBF16), tq,
                                 tk, tv, o, l, gq, gk, gv)
            .ok());
    const kernels::Tensor* got[4] = {&o, &gq, &gk, &gv};
    for (int i = 0; i < 4; ++i) {
      const std::vector<double> values = testing::Download(*ops, *got[i]);
      const int64_t width = i < 2 ? hd : gd;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < width; ++c) ring[i][mine[r] * width + c] = values[r * width + c];
      }
    }
  });
  const char* names[4] = {"out", "dq", "dk", "dv"};
  for (int i = 0; i < 4; ++i) {
    const double one = testing::RelL2(single[i], exact[i]), got = testing::RelL2(ring[i], exact[i]);
    EXPECT_GT(one, 0.0) << names[i];  // bf16 rounding shows.
    EXPECT_LE(got, 4 * one + 2e-3) << names[i] << ": one rank " << one;
  }
}

TEST(ContextParallelTest, CausalGroupedQueryLayerWithRopeAndDropout) {
  TransformerConfig c = Config();
  c.hidden_dropout = 0.2f;
  ExpectContextSplitEqualsOneRank(c, Layer(), {8, 12, 4}, {.cp = 2});
  ExpectContextSplitEqualsOneRank(c, Layer(), {6, 12}, {.cp = 3});
}

TEST(ContextParallelTest, BidirectionalLayerNormLayerWithBiases) {
  TransformerConfig c = Config();
  c.norm = NormKind::kLayerNorm;
  c.activation = MlpActivation::kGelu;
  c.add_bias_linear = true;
  c.causal = false;
  c.rotary = false;
  ExpectContextSplitEqualsOneRank(c, Layer(), {4, 8}, {.cp = 2});
}

TEST(ContextParallelTest, MoeLayerWithAuxiliaryLosses) {
  const MoeConfig moe{.router = {.experts = 4, .top_k = 2},
                      .aux_loss_coeff = 0.01f,
                      .z_loss_coeff = 0.001f,
                      .shared_expert_ffn_hidden_size = 8};
  ExpectContextSplitEqualsOneRank(Config(), Layer(moe), {8, 4, 12}, {.cp = 2});
}

TEST(ContextParallelTest, TensorTimesContextParallelLayer) {
  TransformerConfig c = Config();
  c.hidden_dropout = 0.1f;
  ExpectContextSplitEqualsOneRank(c, Layer(), {8, 16}, {.tp = 2, .cp = 2});
}

TEST(ContextParallelTest, TensorTimesContextParallelMoeLayer) {
  const MoeConfig moe{
      .router = {.experts = 4, .top_k = 2}, .aux_loss_coeff = 0.01f, .z_loss_coeff = 0.001f};
  ExpectContextSplitEqualsOneRank(Config(), Layer(moe), {8, 16}, {.tp = 2, .cp = 2});
}

// The language model over cp 2 (and tp 2 x cp 2): every member gets all the modality rows,
// placed where its tokens are (-1 elsewhere); the members' loss sums and embedding gradients
// add up to the one-rank ones, their token losses are the one-rank losses of their tokens.
void ExpectLanguageModelSplitEqualsOneRank(Split split) {
  SCOPED_TRACE(::testing::Message() << "tp " << split.tp << " cp " << split.cp);
  LanguageModelConfig config{.transformer = Config(), .vocab_size = 32, .vocab_chunk = 5};
  const std::vector<int32_t> lengths = {8, 16, 8};
  const int64_t total = 32;
  std::mt19937 random(11);
  std::vector<int32_t> tokens(total), labels(total);
  for (int i = 0; i < total; ++i) {
    tokens[i] = static_cast<int32_t>(random() % 32);
    labels[i] = i % 5 == 1 ? -1 : static_cast<int32_t>(random() % 32);
  }
  const std::vector<int32_t> positions = {1, 2, 9, 20, 30};
  const std::vector<float> embeddings = RandomFloats(5 * kHidden, random);
  auto one = kernels::NewCpuOps();
  const LmResult want =
      RunLm(*one, config, {}, {.lengths = lengths}, tokens, labels, embeddings, positions);
  ASSERT_FALSE(want.params.empty());
  std::vector<LmResult> got(split.ranks());
  OnRanks(split, [&](int rank, const comm::ProcessGroups& groups) {
    const int c = split.cp_rank(rank);
    const std::vector<int64_t> mine = TokensOf(lengths, split.cp, c);
    std::vector<int32_t> local_positions;
    for (int32_t p : positions) {
      const auto it = std::find(mine.begin(), mine.end(), p);
      local_positions.push_back(it == mine.end() ? -1 : static_cast<int32_t>(it - mine.begin()));
    }
    auto ops = kernels::NewCpuOps();
    got[rank] =
        RunLm(*ops, config, ModelGroupsOf(groups),
              {.lengths = lengths, .context_size = split.cp, .context_rank = c},
              Gather(tokens, 1, mine), Gather(labels, 1, mine), embeddings, local_positions);
  });
  for (int t = 0; t < split.tp; ++t) {
    SCOPED_TRACE(::testing::Message() << "tp member " << t);
    float loss_sum = 0;
    std::vector<float> dembeddings(want.dembeddings.size(), 0.0f);
    std::map<std::string, std::vector<float>> grads;
    for (int c = 0; c < split.cp; ++c) {
      const LmResult& r = got[t + split.tp * c];
      const std::vector<int64_t> mine = TokensOf(lengths, split.cp, c);
      EXPECT_LT(RelativeError(r.token_loss, Gather(want.token_loss, 1, mine)), kBound);
      loss_sum += r.loss_sum.at(0);
      for (size_t i = 0; i < dembeddings.size(); ++i) dembeddings[i] += r.dembeddings.at(i);
      for (const auto& [name, p] : r.params) {
        std::vector<float>& g = grads[name];
        g.resize(p.grad.size(), 0.0f);
        for (size_t i = 0; i < g.size(); ++i) g[i] += p.grad[i];
      }
    }
    EXPECT_NEAR(loss_sum, want.loss_sum.at(0), 1e-5 * std::abs(want.loss_sum.at(0)));
    EXPECT_LT(RelativeError(dembeddings, want.dembeddings), kBound);
    ASSERT_EQ(grads.size(), want.params.size());
    for (const auto& [name, grad] : grads) {
      SCOPED_TRACE(name);
      const testing::Param& p = got[t].params.at(name);
      EXPECT_LT(RelativeError(grad, SliceOf(want.params.at(name).grad, p.spec)), kBound);
    }
  }
}

TEST(ContextParallelTest, LanguageModel) {
  ExpectLanguageModelSplitEqualsOneRank({.cp = 2});
  ExpectLanguageModelSplitEqualsOneRank({.tp = 2, .cp = 2});
}

// A modality encoder over tp x cp members: whole sequences, rows in tp x cp equal blocks,
// all-to-all attention (each member a share of the heads), hidden dropout with the one-rank masks
// of the member's rows. Images of 3 x 4 patches (12 rows, split evenly) and audio clips of 3 + 2
// tokens (5 rows, padded to 6 or 8 for the members' equal blocks): every member
// returns all the one-rank embeddings, and each member's gradients summed over its cp group are
// its slice of the one-rank gradients (as the dp x cp reduction sums them).
void ExpectEncoderSplitEqualsOneRank(Split split) {
  SCOPED_TRACE(::testing::Message() << "tp " << split.tp << " x cp " << split.cp);
  for (const EncoderInput input : {EncoderInput::kImages, EncoderInput::kAudio}) {
    const bool images = input == EncoderInput::kImages;
    SCOPED_TRACE(images ? "images" : "audio");
    TransformerConfig layers = Config();
    layers.num_query_groups = 4;  // Whole key/value heads on tp 2 x cp 2 members.
    layers.norm = NormKind::kLayerNorm;
    layers.activation = MlpActivation::kGelu;
    layers.add_bias_linear = true;
    const auto [c, shape, frames, rows] = testing::SmallEncoderCase(input, layers);
    std::mt19937 random(29);
    const std::vector<float> x = RandomFloats(kernels::NumElements(shape), random);
    const std::vector<float> dy = RandomFloats(rows * c.output_size, random);
    auto one = kernels::NewCpuOps();
    const EncoderResult want = RunEncoder(*one, c, {}, x, shape, frames, dy);
    ASSERT_EQ(want.embeddings.size(), static_cast<size_t>(rows * c.output_size));
    std::vector<EncoderResult> got(split.ranks());
    OnRanks(split, [&](int rank, const comm::ProcessGroups& groups) {
      auto ops = kernels::NewCpuOps();
      got[rank] = RunEncoder(*ops, c, ModelGroupsOf(groups), x, shape, frames, dy);
    });
    for (int rank = 0; rank < split.ranks(); ++rank) {
      SCOPED_TRACE(::testing::Message() << "rank " << rank);
      EXPECT_LT(RelativeError(got[rank].embeddings, want.embeddings), kBound);
      ASSERT_EQ(got[rank].params.size(), want.params.size());
      if (split.cp_rank(rank) != 0) continue;
      for (const auto& [name, p] : got[rank].params) {
        SCOPED_TRACE(name);
        std::vector<float> sum(p.grad.size(), 0.0f);
        for (int c = 0; c < split.cp; ++c) {
          const std::vector<float>& g = got[rank + c * split.tp].params.at(name).grad;
          for (size_t i = 0; i < sum.size(); ++i) sum[i] += g[i];
        }
        const Param& whole = want.params.at(name);
        EXPECT_EQ(p.weight, SliceOf(whole.weight, p.spec));
        EXPECT_LT(RelativeError(sum, SliceOf(whole.grad, p.spec)), kBound);
      }
    }
  }
}

TEST(ContextParallelTest, ModalityEncoders) {
  ExpectEncoderSplitEqualsOneRank({.cp = 2});
  ExpectEncoderSplitEqualsOneRank({.cp = 4});
  ExpectEncoderSplitEqualsOneRank({.tp = 2, .cp = 2});
}

TEST(ContextParallelTest, RefusesWhatItCannotSplit) {
  // Sequences not padded to multiples of 2 cp.
  auto ops = kernels::NewCpuOps();
  const auto odd = PackedSequences::CreateSplit(*ops, std::vector<int32_t>{4, 6}, 2, 0);
  EXPECT_EQ(odd.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(odd.status().message(), ::testing::HasSubstr("multiple of 4"));
  OnRanks({.cp = 2}, [&](int rank, const comm::ProcessGroups& groups) {
    auto ops = kernels::NewCpuOps();
    TransformerConfig config = Config();
    BuildContext build{
        .ops = ops.get(), .config = &config, .prefix = "b", .groups = ModelGroupsOf(groups)};
    const auto moe = MoeLayer::Create(build, MoeConfig{.router = {.experts = 2, .top_k = 1},
                                                       .aux_loss_coeff = 0.01f,
                                                       .per_sequence_aux_loss = true});
    EXPECT_EQ(moe.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(moe.status().message(), ::testing::HasSubstr("per_sequence_aux_loss with context"));
    // A layer of a cp group fed sequences that are not split over it.
    auto layer = TransformerLayer::Create(build, DenseMlpBuilder());
    ASSERT_TRUE(layer.ok()) << layer.status();
    auto whole = PackedSequences::Create(*ops, std::vector<int32_t>{4});
    ASSERT_TRUE(whole.ok());
    const StepContext ctx{.ops = ops.get(), .sequences = &*whole};
    const auto out = (*layer)->Forward(
        ctx, Upload(*ops, std::vector<float>(4 * kHidden, 0.5f), {4, kHidden}, DType::kF32));
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(out.status().message(), ::testing::HasSubstr("split over 1 context-parallel"));
    // Whole sequences with rows that are not the members' equal blocks (all-to-all attention).
    const auto uneven = (*layer)->Forward(
        ctx, Upload(*ops, std::vector<float>(3 * kHidden, 0.5f), {3, kHidden}, DType::kF32));
    EXPECT_EQ(uneven.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(uneven.status().message(),
                ::testing::HasSubstr("2 x 3 rows for sequences of 4 tokens"));
    // An encoder whose key/value heads cannot be shared out over the cp members.
    ModalityEncoderConfig encoder{.input = EncoderInput::kImages,
                                  .image_size = 4,
                                  .patch_size = 2,
                                  .transformer = config,
                                  .projector = {.kind = ProjectorKind::kLinear},
                                  .output_size = 6};
    encoder.transformer.num_query_groups = 1;
    const auto mqa = ModalityEncoder::Create(build, encoder);
    EXPECT_EQ(mqa.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(mqa.status().message(), ::testing::HasSubstr("num_query_groups (1)"));
    (void)rank;
  });
}

}  // namespace
}  // namespace mimo
