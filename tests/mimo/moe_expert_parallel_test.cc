// Expert parallelism of mimo/moe_layer.h on CPU workers (ranks as threads, Gloo over loopback):
// with the experts spread over ep ranks holding different numbers of tokens (0, 1, 63, 64, 65,
// thousands), every rank's output, input gradient, router gradient and auxiliary losses equal
// those of an ep=1 layer run on that rank's tokens, and each rank's expert gradients equal the
// sum of its experts' rows of the ep=1 gradients over all ranks' tokens.
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
                                   const MoeConfig& moe, ModelGroups groups) {
  BuildContext build{.ops = &ops,
                     .config = &config,
                     .seed = 17,
                     .prefix = "mlp",
                     .layer_number = 0,
                     .groups = groups};
  auto layer = MoeLayer::Create(build, moe);
  EXPECT_TRUE(layer.ok()) << layer.status();
  return layer.ok() ? *std::move(layer) : nullptr;
}

// Values within 1e-6 relative (the same sums in the same order, up to the expert GEMMs' row
// grouping); an empty `want` matches an empty `got`.
void ExpectClose(const std::vector<double>& got, const std::vector<double>& want,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if (want.empty()) return;
  EXPECT_LT(RelL2(got, want), 1e-6) << what;
}

struct EpCase {
  std::vector<int64_t> tokens;  // Per EP rank.
  int64_t experts;
};

std::string CaseName(const EpCase& c) {
  return absl::StrCat("Ep", c.tokens.size(), "E", c.experts, "Tokens",
                      absl::StrJoin(c.tokens, "_"));
}

class MoeExpertParallelTest : public ::testing::TestWithParam<EpCase> {};

TEST_P(MoeExpertParallelTest, EqualsTheSingleRankLayer) {
  const EpCase& p = GetParam();
  const int ep = static_cast<int>(p.tokens.size());
  const TransformerConfig config = Config();
  const MoeConfig moe = Moe(p.experts);
  std::mt19937 random(31);
  std::vector<std::vector<float>> xs, rs;
  for (int64_t t : p.tokens) {
    xs.push_back(RandomFloats(t * kHidden, random));
    rs.push_back(RandomFloats(t * kHidden, random));
  }
  // The reference: one ep=1 layer per rank's tokens.
  std::vector<RankResult> want(ep);
  for (int r = 0; r < ep; ++r) {
    auto ops = kernels::NewCpuOps();
    std::unique_ptr<MoeLayer> layer = NewLayer(*ops, config, moe, {});
    ASSERT_NE(layer, nullptr);
    want[r] = RunLayer(*ops, *layer, xs[r], rs[r]);
  }
  // The same over ep ranks.
  std::vector<RankResult> got(ep);
  comm::InMemoryStore store;
  comm::RunRanks(ep, [&](int rank) {
    std::vector<int> members(ep);
    for (int i = 0; i < ep; ++i) members[i] = i;
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "ep", .members = members}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    std::unique_ptr<MoeLayer> layer = NewLayer(*ops, config, moe, ModelGroupsOf(**groups));
    ASSERT_NE(layer, nullptr);
    got[rank] = RunLayer(*ops, *layer, xs[rank], rs[rank]);
  });
  const int64_t el = p.experts / ep;
  for (int r = 0; r < ep; ++r) {
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
    for (const std::string name :
         {"mlp.experts.linear_fc1.weight", "mlp.experts.linear_fc2.weight"}) {
      const std::vector<double>& full = want[r].master[name];
      const size_t per_expert = full.size() / p.experts;
      const size_t begin = r * el * per_expert, end = (r + 1) * el * per_expert;
      EXPECT_EQ(got[r].master[name], std::vector<double>(full.begin() + begin, full.begin() + end))
          << name;
      std::vector<double> sum(end - begin, 0.0);
      for (int q = 0; q < ep; ++q) {
        for (size_t i = begin; i < end; ++i) sum[i - begin] += want[q].grad[name][i];
      }
      ExpectClose(got[r].grad[name], sum, name + " grad");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(TokenCounts, MoeExpertParallelTest,
                         ::testing::Values(EpCase{{63, 64}, 4}, EpCase{{0, 1}, 4},
                                           EpCase{{65, 2500}, 4}, EpCase{{0, 0}, 4},
                                           EpCase{{64, 0, 1, 65}, 4}, EpCase{{40, 3, 70}, 6}),
                         [](const auto& info) { return CaseName(info.param); });

TEST(MoeExpertParallelTest, RejectsExpertsThatDoNotSplitEvenly) {
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
  });
}

}  // namespace
}  // namespace mimo
