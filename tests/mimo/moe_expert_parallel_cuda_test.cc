// Expert parallelism of mimo/moe_layer.h on GPUs: two ranks (threads), one GPU each, NCCL over
// an EP group (all-to-all) or an expt_tp group (all-gather, reduce-scatter), ranks holding
// different numbers of tokens (0, 1, 63, 64, 65, thousands). Each rank's output, input gradient,
// router gradient and auxiliary losses against an ep=1 layer on the CPU ops over that rank's
// tokens; each rank's expert gradients against the CPU experts' gradients summed over both ranks'
// tokens (the rank's half of the experts, or of every expert's width). fp32 within 1e-5, bf16
// within 2e-2.
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "gtest/gtest.h"
#include "kernels/cuda_ops.h"
#include "mimo/moe_layer.h"
#include "tests/comm/run_ranks.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using testing::Download;
using testing::ParametersByName;
using testing::RandomFloats;
using testing::RelL2;
using testing::Upload;

constexpr int64_t kHidden = 256;

TransformerConfig Config(DType dtype) {
  TransformerConfig c;
  c.num_layers = 4;
  c.hidden_size = kHidden;
  c.num_attention_heads = 4;
  c.ffn_hidden_size = 128;
  c.add_bias_linear = false;
  c.init_std = 0.0625f;
  c.dtype = dtype;
  return c;
}

MoeConfig Moe() {
  MoeConfig m;
  m.router = {.experts = 8, .top_k = 2};
  m.aux_loss_coeff = 0.01f;
  m.z_loss_coeff = 0.001f;
  m.shared_expert_ffn_hidden_size = 64;
  return m;
}

struct RankResult {
  std::vector<double> y, dx, losses;
  std::map<std::string, std::vector<double>> grad;
};

RankResult RunLayer(kernels::Ops& ops, const TransformerConfig& config, ModelGroups groups,
                    const std::vector<float>& x, const std::vector<float>& r) {
  RankResult out;
  BuildContext build{.ops = &ops, .config = &config, .seed = 4, .prefix = "mlp", .groups = groups};
  auto layer = MoeLayer::Create(build, Moe());
  EXPECT_TRUE(layer.ok()) << layer.status();
  if (!layer.ok()) return out;
  const int64_t t = static_cast<int64_t>(x.size()) / kHidden;
  std::vector<AuxLossRecord> records;
  const StepContext ctx{.ops = &ops, .loss_scale = 0.25f, .aux_losses = &records};
  auto forward = (*layer)->Forward(ctx, Upload(ops, x, {t, kHidden}, config.dtype));
  EXPECT_TRUE(forward.ok()) << forward.status();
  if (!forward.ok()) return out;
  out.y = Download(ops, forward->y);
  out.losses = Download(ops, records.at(0).losses);
  auto dx = (*layer)->Backward(ctx, std::move(forward->saved),
                               Upload(ops, r, {t, kHidden}, config.dtype));
  EXPECT_TRUE(dx.ok()) << dx.status();
  if (!dx.ok()) return out;
  out.dx = Download(ops, *dx);
  for (const auto& [name, p] : ParametersByName(**layer)) out.grad[name] = Download(ops, p->grad());
  return out;
}

// Rank r's half of a full expert tensor's rows (ep) or of every expert's width (expt_tp):
// fc1 (E, 2F, C) in both its gate and up rows, fc2 (E, C, F) in its columns.
std::vector<double> Half(const std::vector<double>& full, bool fc1, bool width, int r) {
  const int64_t e = Moe().router.experts, f = Config(DType::kF32).ffn_hidden_size;
  if (!width) {
    const size_t half = full.size() / 2;
    return std::vector<double>(full.begin() + r * half, full.begin() + (r + 1) * half);
  }
  std::vector<double> out;
  const int64_t fl = f / 2;
  for (int64_t x = 0; x < e; ++x) {
    if (fc1) {
      for (int b = 0; b < 2; ++b) {
        const int64_t row = x * 2 * f + b * f + r * fl;
        out.insert(out.end(), full.begin() + row * kHidden, full.begin() + (row + fl) * kHidden);
      }
    } else {
      for (int64_t c = 0; c < kHidden; ++c) {
        const int64_t at = (x * kHidden + c) * f + r * fl;
        out.insert(out.end(), full.begin() + at, full.begin() + at + fl);
      }
    }
  }
  return out;
}

void ExpectClose(const std::vector<double>& got, const std::vector<double>& want, double bound,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if (!want.empty()) {
    EXPECT_LT(RelL2(got, want), bound) << what;
  }
}

class MoeExpertParallelCudaTest
    : public ::testing::TestWithParam<std::tuple<std::vector<int64_t>, DType, const char*>> {
 protected:
  void SetUp() override {
    const std::string missing = kernels::testing::MissingCudaDevices(2);
    if (!missing.empty()) GTEST_SKIP() << missing;
  }
};

TEST_P(MoeExpertParallelCudaTest, EqualsTheSingleRankLayer) {
  const auto& [tokens, dtype, kind] = GetParam();
  const bool width = std::string(kind) == "expt_tp";
  const TransformerConfig config = Config(dtype);
  const double bound = dtype == DType::kF32 ? 1e-5 : 2e-2;
  std::mt19937 random(12);
  std::vector<std::vector<float>> xs, rs;
  for (int64_t t : tokens) {
    xs.push_back(RandomFloats(t * kHidden, random));
    rs.push_back(RandomFloats(t * kHidden, random));
  }
  std::vector<RankResult> want(2), got(2);
  for (int r = 0; r < 2; ++r) {
    auto cpu = kernels::NewCpuOps();
    want[r] = RunLayer(*cpu, config, {}, xs[r], rs[r]);
  }
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateNccl(
        {{.kind = kind, .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .cuda_device = rank});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto gpu = kernels::NewCudaOps({.device = rank});
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    got[rank] = RunLayer(**gpu, config, ModelGroupsOf(**groups), xs[rank], rs[rank]);
  });
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE(absl::StrCat("rank ", r, " with ", tokens[r], " tokens"));
    ExpectClose(got[r].y, want[r].y, bound, "y");
    ExpectClose(got[r].dx, want[r].dx, bound, "dx");
    ExpectClose(got[r].losses, want[r].losses, bound, "aux losses");
    ExpectClose(got[r].grad["mlp.router.weight"], want[r].grad["mlp.router.weight"], bound,
                "router grad");
    for (const bool fc1 : {true, false}) {
      const std::string name =
          fc1 ? "mlp.experts.linear_fc1.weight" : "mlp.experts.linear_fc2.weight";
      std::vector<double> sum = Half(want[0].grad[name], fc1, width, r);
      const std::vector<double> more = Half(want[1].grad[name], fc1, width, r);
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += more[i];
      ExpectClose(got[r].grad[name], sum, bound, name + " grad");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(TokenCounts, MoeExpertParallelCudaTest,
                         ::testing::Combine(::testing::Values(std::vector<int64_t>{0, 65},
                                                              std::vector<int64_t>{1, 64},
                                                              std::vector<int64_t>{63, 3000}),
                                            ::testing::Values(DType::kF32, DType::kBF16),
                                            ::testing::Values("ep", "expt_tp")),
                         [](const auto& info) {
                           const std::vector<int64_t>& tokens = std::get<0>(info.param);
                           return absl::StrCat(std::get<2>(info.param), "_Tokens", tokens[0], "_",
                                               tokens[1], "_",
                                               kernels::DTypeName(std::get<1>(info.param)));
                         });

}  // namespace
}  // namespace mimo
