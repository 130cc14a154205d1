// Expert parallelism of mimo/moe_layer.h on CPU workers (ranks as threads, Gloo over loopback):
// with the experts spread over ep ranks, and their width over expt_tp ranks, the ranks holding
// different numbers of tokens (0, 1, 63, 64, 65, thousands), every rank's output, input
// gradient, router gradient and auxiliary losses equal those of an ep=1 layer run on that rank's
// tokens, and each rank's expert gradients equal its slice of the ep=1 gradients summed over all
// ranks' tokens.
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "gtest/gtest.h"
#include "mimo/moe_layer.h"
#include "mimo/transformer_layer.h"
#include "tests/comm/run_ranks.h"
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

constexpr int64_t kHidden = 8;

TransformerConfig Config() {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = kHidden;
  c.num_attention_heads = 2;
  c.ffn_hidden_size = 6;
  c.activation = MlpActivation::kSwiglu;
  c.add_bias_linear = false;
  c.init_std = 0.5f;
  c.dtype = DType::kF32;
  return c;
}

MoeConfig Moe(int64_t experts) {
  MoeConfig m;
  m.router = {.experts = experts, .top_k = 2};
  m.aux_loss_coeff = 0.1f;
  m.z_loss_coeff = 0.01f;
  m.shared_expert_ffn_hidden_size = 4;
  m.align = 4;
  return m;
}

// What one rank's forward and backward produced.
struct RankResult {
  std::vector<double> y, dx, losses;
  std::map<std::string, std::vector<double>> master, grad;
};

// Forward + backward of `layer` on (tokens, kHidden) inputs x with output gradient r.
RankResult RunLayer(kernels::Ops& ops, MoeLayer& layer, const std::vector<float>& x,
                    const std::vector<float>& r) {
  const int64_t t = static_cast<int64_t>(x.size()) / kHidden;
  std::vector<AuxLossRecord> records;
  const StepContext ctx{.ops = &ops, .loss_scale = 0.5f, .aux_losses = &records};
  RankResult out;
  auto forward = layer.Forward(ctx, Upload(ops, x, {t, kHidden}, DType::kF32));
  EXPECT_TRUE(forward.ok()) << forward.status();
  if (!forward.ok()) return out;
  out.y = Download(ops, forward->y);
  out.losses = Download(ops, records.at(0).losses);
  auto dx =
      layer.Backward(ctx, std::move(forward->saved), Upload(ops, r, {t, kHidden}, DType::kF32));
  EXPECT_TRUE(dx.ok()) << dx.status();
  if (!dx.ok()) return out;
  out.dx = Download(ops, *dx);
  for (const auto& [name, p] : ParametersByName(layer)) {
    out.master[name] = Download(ops, p->master());
    out.grad[name] = Download(ops, p->grad());
  }
  return out;
}

std::unique_ptr<MoeLayer> NewLayer(kernels::Ops& ops, const TransformerConfig& config,
                                   const MoeConfig& moe, ModelGroups groups,
                                   const ExpertsBuilder& experts = SequentialExpertsBuilder()) {
  BuildContext build{.ops = &ops,
                     .config = &config,
                     .seed = 17,
                     .prefix = "mlp",
                     .layer_number = 0,
                     .groups = groups};
  auto layer = MoeLayer::Create(build, moe, experts);
  EXPECT_TRUE(layer.ok()) << layer.status();
  return layer.ok() ? *std::move(layer) : nullptr;
}

// Values within `bound` relative (1e-6: the same sums in the same order, up to the expert GEMMs'
// row grouping and the experts' weight gradients summed over ranks); an empty `want` matches an
// empty `got`.
void ExpectClose(const std::vector<double>& got, const std::vector<double>& want,
                 const std::string& what, double bound = 1e-6) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if (want.empty()) return;
  EXPECT_LT(RelL2(got, want), bound) << what;
}

struct EpCase {
  std::vector<int64_t> tokens;  // Per rank; rank = etp index + etp * ep index.
  int64_t experts;
  int etp = 1;
  double capacity_factor = 0;  // Token dropping, decided on each rank's own tokens.
  bool grouped = false;        // Experts as grouped GEMMs (the reference: per-expert GEMMs).
  // Of the experts' weight gradients: the EP run sums every rank's rows in one f32 product, the
  // reference each rank's product apart, then their sum.
  double grad_bound = 1e-6;
};

std::string CaseName(const EpCase& c) {
  return absl::StrCat("Ep", c.tokens.size() / c.etp, "Etp", c.etp, "E", c.experts, "Tokens",
                      absl::StrJoin(c.tokens, "_"), c.capacity_factor > 0 ? "Capacity" : "",
                      c.grouped ? "Grouped" : "");
}

// Rank (t, e)'s slice of a full expert tensor: experts [e * el, (e + 1) * el), and of their
// width F part t of etp (fc1 (E, 2F, C): in both the gate and the up rows; fc2 (E, C, F): the
// columns).
std::vector<double> ExpertSlice(const std::vector<double>& full, bool fc1, int64_t el, int e, int t,
                                int etp, int64_t f) {
  const int64_t fl = f / etp;
  std::vector<double> out;
  for (int64_t x = e * el; x < (e + 1) * el; ++x) {
    if (fc1) {
      for (int b = 0; b < 2; ++b) {
        for (int64_t w = 0; w < fl; ++w) {
          const int64_t row = x * 2 * f + b * f + t * fl + w;
          out.insert(out.end(), full.begin() + row * kHidden, full.begin() + (row + 1) * kHidden);
        }
      }
    } else {
      for (int64_t c = 0; c < kHidden; ++c) {
        const int64_t at = (x * kHidden + c) * f + t * fl;
        out.insert(out.end(), full.begin() + at, full.begin() + at + fl);
      }
    }
  }
  return out;
}

// Each rank of `p`'s etp x ep layout gives what an ep=1 layer gives on its tokens.
void ExpectEqualsTheSingleRankLayer(const EpCase& p) {
  const int world = static_cast<int>(p.tokens.size()), etp = p.etp, ep = world / etp;
  const TransformerConfig config = Config();
  MoeConfig moe = Moe(p.experts);
  moe.capacity_factor = p.capacity_factor;
  std::mt19937 random(31);
  std::vector<std::vector<float>> xs, rs;
  for (int64_t t : p.tokens) {
    xs.push_back(RandomFloats(t * kHidden, random));
    rs.push_back(RandomFloats(t * kHidden, random));
  }
  // The reference: one ep=1 layer per rank's tokens.
  std::vector<RankResult> want(world);
  for (int r = 0; r < world; ++r) {
    auto ops = kernels::NewCpuOps();
    std::unique_ptr<MoeLayer> layer = NewLayer(*ops, config, moe, {});
    ASSERT_NE(layer, nullptr);
    want[r] = RunLayer(*ops, *layer, xs[r], rs[r]);
  }
  // The same over etp x ep ranks (expt_tp fastest, as the expert view orders them).
  std::vector<RankResult> got(world);
  comm::InMemoryStore store;
  comm::RunRanks(world, [&](int rank) {
    std::vector<comm::GroupSpec> specs(1, {.kind = "ep"});
    for (int e = 0; e < ep; ++e) specs[0].members.push_back(rank % etp + etp * e);
    if (etp > 1) {
      specs.push_back({.kind = "expt_tp"});
      for (int t = 0; t < etp; ++t) specs[1].members.push_back(rank / etp * etp + t);
    }
    auto groups = comm::ProcessGroups::CreateGloo(
        specs, store, {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    std::unique_ptr<MoeLayer> layer =
        p.grouped ? NewLayer(*ops, config, moe, ModelGroupsOf(**groups), GroupedExpertsBuilder())
                  : NewLayer(*ops, config, moe, ModelGroupsOf(**groups));
    ASSERT_NE(layer, nullptr);
    got[rank] = RunLayer(*ops, *layer, xs[rank], rs[rank]);
  });
  const int64_t el = p.experts / ep, f = Config().ffn_hidden_size;
  for (int r = 0; r < world; ++r) {
    const int t = r % etp, e = r / etp;
    SCOPED_TRACE(absl::StrCat("rank ", r, " with ", p.tokens[r], " tokens"));
    ExpectClose(got[r].y, want[r].y, "y");
    ExpectClose(got[r].dx, want[r].dx, "dx");
    ExpectClose(got[r].losses, want[r].losses, "aux losses");
    for (const std::string name : {"mlp.router.weight", "mlp.shared_experts.linear_fc1.weight",
                                   "mlp.shared_experts.linear_fc2.weight"}) {
      EXPECT_EQ(got[r].master[name], want[r].master[name]) << name;
      ExpectClose(got[r].grad[name], want[r].grad[name], name + " grad");
    }
    // This rank's experts: their slice of the full tensors, and their gradients summed over the
    // tokens of every rank.
    for (const bool fc1 : {true, false}) {
      const std::string name =
          fc1 ? "mlp.experts.linear_fc1.weight" : "mlp.experts.linear_fc2.weight";
      auto slice = [&](const std::vector<double>& full) {
        return ExpertSlice(full, fc1, el, e, t, etp, f);
      };
      EXPECT_EQ(got[r].master[name], slice(want[r].master[name])) << name;
      std::vector<double> sum = slice(want[0].grad[name]);
      for (int q = 1; q < world; ++q) {
        const std::vector<double> more = slice(want[q].grad[name]);
        for (size_t i = 0; i < sum.size(); ++i) sum[i] += more[i];
      }
      ExpectClose(got[r].grad[name], sum, name + " grad", p.grad_bound);
    }
  }
}

class MoeExpertParallelTest : public ::testing::TestWithParam<EpCase> {};

TEST_P(MoeExpertParallelTest, EqualsTheSingleRankLayer) {
  ExpectEqualsTheSingleRankLayer(GetParam());
}

// Random layouts (ep 2 or 4, etp 1 or 2, 4 or 8 experts: 1 or 2 a rank) with random token counts
// per rank (0 to 300), dropless or dropping, per-expert or grouped GEMMs.
TEST(MoeExpertParallelRandomTest, RandomLayoutsEqualTheSingleRankLayer) {
  const unsigned seed = std::random_device{}();
  std::mt19937 random(seed);
  auto pick = [&](int n) { return static_cast<int>(random() % static_cast<unsigned>(n)); };
  for (int i = 0; i < 8; ++i) {
    EpCase c;
    c.etp = 1 + pick(2);
    const int ep = 2 << pick(2);
    c.experts = ep * (1 + pick(2));
    if (c.experts < 4) c.experts = 4;  // top_k 2 of at least 4 experts, as the fixed cases.
    for (int r = 0; r < ep * c.etp; ++r) c.tokens.push_back(pick(4) == 0 ? pick(2) : pick(301));
    c.capacity_factor = pick(3) == 0 ? 0.5 * (1 + pick(3)) : 0.0;
    c.grouped = pick(2) == 1;
    // Up to 8 ranks of 300 tokens: f32 sums of up to 2400 rows in another order (1.05e-6 seen).
    c.grad_bound = 1e-5;
    SCOPED_TRACE(absl::StrCat("seed ", seed, ": ", CaseName(c)));
    ExpectEqualsTheSingleRankLayer(c);
    if (::testing::Test::HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(
    TokenCounts, MoeExpertParallelTest,
    ::testing::Values(EpCase{{63, 64}, 4}, EpCase{{0, 1}, 4}, EpCase{{65, 2500}, 4},
                      EpCase{{0, 0}, 4}, EpCase{{64, 0, 1, 65}, 4}, EpCase{{40, 3, 70}, 6},
                      EpCase{{5, 70}, 4, 2}, EpCase{{0, 64, 65, 1}, 4, 2},
                      EpCase{{63, 1500, 0, 7}, 4, 2}, EpCase{{63, 1500}, 4, 1, 0.5},
                      EpCase{{0, 64, 65, 1}, 4, 2, 0.75}, EpCase{{65, 2500}, 4, 1, 0, true},
                      EpCase{{63, 1500, 0, 7}, 4, 2, 0, true}, EpCase{{5, 70}, 4, 2, 0, true}),
    [](const auto& info) { return CaseName(info.param); });

// The groups reach the MoE layer through a TransformerLayer's MLP builder: with ep=2 each rank's
// layer output and input gradient (packed sequences of different lengths per rank) equal the
// ep=1 layer's on that rank's tokens.
TEST(MoeExpertParallelTest, TransformerLayerWithAnExpertParallelMlp) {
  const TransformerConfig config = Config();
  const MoeMlpBuilder mlp(Moe(4));
  const std::vector<std::vector<int32_t>> lengths = {{5, 0, 30}, {1}};
  std::mt19937 random(3);
  std::vector<std::vector<float>> xs, rs;
  for (const auto& l : lengths) {
    int64_t t = 0;
    for (int32_t n : l) t += n;
    xs.push_back(RandomFloats(t * kHidden, random));
    rs.push_back(RandomFloats(t * kHidden, random));
  }
  // y and dx of a layer built with `groups` on rank r's tokens.
  auto run = [&](int r, ModelGroups groups) {
    auto ops = kernels::NewCpuOps();
    BuildContext build{.ops = ops.get(),
                       .config = &config,
                       .seed = 8,
                       .prefix = "decoder.layers.0",
                       .groups = groups};
    auto layer = TransformerLayer::Create(build, mlp);
    EXPECT_TRUE(layer.ok()) << layer.status();
    auto seqs = PackedSequences::Create(*ops, lengths[r]);
    EXPECT_TRUE(seqs.ok()) << seqs.status();
    std::vector<std::vector<double>> out;
    if (!layer.ok() || !seqs.ok()) return out;
    const StepContext ctx{.ops = ops.get(), .sequences = &*seqs};
    const int64_t t = seqs->tokens();
    auto forward = (*layer)->Forward(ctx, Upload(*ops, xs[r], {t, kHidden}, DType::kF32));
    EXPECT_TRUE(forward.ok()) << forward.status();
    if (!forward.ok()) return out;
    out.push_back(Download(*ops, forward->y));
    auto dx = (*layer)->Backward(ctx, std::move(forward->saved),
                                 Upload(*ops, rs[r], {t, kHidden}, DType::kF32));
    EXPECT_TRUE(dx.ok()) << dx.status();
    if (dx.ok()) out.push_back(Download(*ops, *dx));
    return out;
  };
  std::vector<std::vector<std::vector<double>>> want(2), got(2);
  for (int r = 0; r < 2; ++r) want[r] = run(r, {});
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "ep", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    got[rank] = run(rank, ModelGroupsOf(**groups));
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(got[r].size(), 2u);
    ASSERT_EQ(want[r].size(), 2u);
    ExpectClose(got[r][0], want[r][0], absl::StrCat("rank ", r, " y"));
    ExpectClose(got[r][1], want[r][1], absl::StrCat("rank ", r, " dx"));
  }
}

TEST(MoeExpertParallelTest, RejectsExpertsOrWidthsThatDoNotSplitEvenly) {
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "ep", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    const TransformerConfig config = Config();
    BuildContext build{
        .ops = ops.get(), .config = &config, .prefix = "mlp", .groups = ModelGroupsOf(**groups)};
    const auto layer = MoeLayer::Create(build, Moe(3));
    ASSERT_EQ(layer.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(layer.status().message().find("3 experts do not split evenly over 2"),
              absl::string_view::npos)
        << layer.status();
    // Width 5 over 2 expert tensor-parallel ranks (the group standing in for expt_tp here).
    MoeConfig wide = Moe(4);
    wide.expert_ffn_hidden_size = 5;
    build.groups = {.expt_tp = (*groups)->Get("ep")};
    const auto odd = MoeLayer::Create(build, wide);
    ASSERT_EQ(odd.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(odd.status().message().find("expert width 5 does not split evenly over 2"),
              absl::string_view::npos)
        << odd.status();
    // No CUDA-graph-safe mode over EP or expt_tp: their row counts travel through the host.
    MoeConfig safe = Moe(4);
    safe.graph_safe = true;
    for (const ModelGroups g :
         {ModelGroupsOf(**groups), ModelGroups{.expt_tp = (*groups)->Get("ep")}}) {
      build.groups = g;
      const auto unsafe = MoeLayer::Create(build, safe);
      ASSERT_EQ(unsafe.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(unsafe.status().message().find("graph_safe needs ep and expt_tp of 1"),
                absl::string_view::npos)
          << unsafe.status();
    }
  });
}

}  // namespace
}  // namespace mimo
