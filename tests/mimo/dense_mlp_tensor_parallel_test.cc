// DenseMlp with tensor + sequence parallelism over two Gloo ranks against the one-rank layer on
// the same rows: each member's weights are its slices of the one-rank weights (fc1: its part of
// the gate and of the up rows; fc2: its columns), its output and input gradient are its block of
// the one-rank rows, and its weight gradients are its slices of the one-rank gradients; SwiGLU and
// GELU, fp32. Widths that do not split, linear biases and whole layers (attention does not split
// yet) are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "mimo/dense_mlp.h"
#include "mimo/transformer_layer.h"
#include "tests/comm/run_ranks.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using testing::RandomFloats;
using testing::Upload;

constexpr int64_t kTokens = 10, kHidden = 16, kFfn = 24;

TransformerConfig Config(MlpActivation activation) {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = kHidden;
  c.num_attention_heads = 2;
  c.ffn_hidden_size = kFfn;
  c.activation = activation;
  c.add_bias_linear = false;
  c.dtype = kernels::DType::kF32;
  return c;
}

std::vector<float> Host(kernels::Ops& ops, const kernels::Tensor& t) {
  std::vector<float> v(t.numel());
  EXPECT_TRUE(ops.CopyToHost(v.data(), t.data(), 4 * v.size()).ok());
  return v;
}

// Rows [r0, r0 + n) of a row-major (rows, cols) matrix.
std::vector<float> Rows(const std::vector<float>& m, int64_t cols, int64_t r0, int64_t n) {
  return {m.begin() + r0 * cols, m.begin() + (r0 + n) * cols};
}

// Columns [c0, c0 + n) of a row-major (rows, cols) matrix.
std::vector<float> Cols(const std::vector<float>& m, int64_t cols, int64_t c0, int64_t n) {
  std::vector<float> out;
  for (size_t r = 0; r < m.size() / cols; ++r) {
    out.insert(out.end(), m.begin() + r * cols + c0, m.begin() + r * cols + c0 + n);
  }
  return out;
}

void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double err = 0, norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  EXPECT_LT(std::sqrt(err / norm), 1e-6) << what;
}

struct Result {
  std::vector<float> y, dx, w1, w2, dw1, dw2;
};

Result RunMlp(kernels::Ops& ops, const TransformerConfig& config, ModelGroups groups,
              const std::vector<float>& x, const std::vector<float>& dy, int64_t rows) {
  Result r;
  BuildContext build{.ops = &ops, .config = &config, .seed = 5, .prefix = "mlp", .groups = groups};
  auto mlp = DenseMlp::Create(build);
  EXPECT_TRUE(mlp.ok()) << mlp.status();
  if (!mlp.ok()) return r;
  const StepContext ctx{.ops = &ops};
  auto out = (*mlp)->Forward(ctx, Upload(ops, x, {rows, kHidden}, config.dtype));
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return r;
  r.y = Host(ops, out->y);
  auto dx =
      (*mlp)->Backward(ctx, std::move(out->saved), Upload(ops, dy, {rows, kHidden}, config.dtype));
  EXPECT_TRUE(dx.ok()) << dx.status();
  if (!dx.ok()) return r;
  r.dx = Host(ops, *dx);
  std::vector<Parameter*> params;
  (*mlp)->AppendParameters(params);
  r.w1 = Host(ops, params[0]->weight());
  r.w2 = Host(ops, params[1]->weight());
  r.dw1 = Host(ops, params[0]->grad());
  r.dw2 = Host(ops, params[1]->grad());
  return r;
}

class DenseMlpTensorParallelTest : public ::testing::TestWithParam<MlpActivation> {};

TEST_P(DenseMlpTensorParallelTest, EachMemberComputesItsSliceOfTheOneRankLayer) {
  const TransformerConfig config = Config(GetParam());
  const bool swiglu = GetParam() == MlpActivation::kSwiglu;
  std::mt19937 random(4);
  const std::vector<float> x = RandomFloats(kTokens * kHidden, random);
  const std::vector<float> dy = RandomFloats(kTokens * kHidden, random);
  auto one = kernels::NewCpuOps();
  const Result want = RunMlp(*one, config, {}, x, dy, kTokens);
  std::vector<Result> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    const int64_t half = kTokens / 2;
    got[rank] = RunMlp(*ops, config, ModelGroupsOf(**groups), Rows(x, kHidden, rank * half, half),
                       Rows(dy, kHidden, rank * half, half), half);
  });
  const int64_t part = kFfn / 2, half = kTokens / 2;
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE(::testing::Message() << "member " << r);
    // fc1's rows: part r of the gate block (and of the up block with SwiGLU).
    std::vector<float> w1 = Rows(want.w1, kHidden, r * part, part);
    std::vector<float> dw1 = Rows(want.dw1, kHidden, r * part, part);
    if (swiglu) {
      const std::vector<float> up = Rows(want.w1, kHidden, kFfn + r * part, part);
      const std::vector<float> dup = Rows(want.dw1, kHidden, kFfn + r * part, part);
      w1.insert(w1.end(), up.begin(), up.end());
      dw1.insert(dw1.end(), dup.begin(), dup.end());
    }
    EXPECT_EQ(got[r].w1, w1);
    EXPECT_EQ(got[r].w2, Cols(want.w2, kFfn, r * part, part));
    ExpectNear(got[r].y, Rows(want.y, kHidden, r * half, half), "y");
    ExpectNear(got[r].dx, Rows(want.dx, kHidden, r * half, half), "dx");
    ExpectNear(got[r].dw1, dw1, "fc1 weight gradient");
    ExpectNear(got[r].dw2, Cols(want.dw2, kFfn, r * part, part), "fc2 weight gradient");
  }
}

INSTANTIATE_TEST_SUITE_P(Activations, DenseMlpTensorParallelTest,
                         ::testing::Values(MlpActivation::kSwiglu, MlpActivation::kGelu),
                         [](const auto& info) {
                           return info.param == MlpActivation::kSwiglu ? "Swiglu" : "Gelu";
                         });

TEST(DenseMlpTensorParallelTest, RefusesWhatItCannotSplit) {
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    TransformerConfig config = Config(MlpActivation::kSwiglu);
    BuildContext build{
        .ops = ops.get(), .config = &config, .prefix = "mlp", .groups = ModelGroupsOf(**groups)};
    EXPECT_EQ(DenseMlp::Create(build, 7).status().code(), absl::StatusCode::kInvalidArgument);
    config.add_bias_linear = true;
    const auto biased = DenseMlp::Create(build);
    EXPECT_EQ(biased.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(biased.status().message().find("not supported yet"), std::string::npos)
        << biased.status();
    // A whole layer: attention does not split yet.
    config.add_bias_linear = false;
    const auto layer = TransformerLayer::Create(build, DenseMlpBuilder());
    EXPECT_EQ(layer.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(layer.status().message().find("tp > 1) is not supported yet"), std::string::npos)
        << layer.status();
  });
}

}  // namespace
}  // namespace mimo
