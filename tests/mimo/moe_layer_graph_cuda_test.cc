// A graph-safe MoE layer's forward and backward captured in one CUDA graph and replayed on new
// inputs: outputs, input gradients, auxiliary losses, parameter gradients and the expert load
// equal the eager layer's on the same inputs. Also the graph-safe layer on the GPU against the
// per-expert-GEMM layer on the GPU (within bf16 tolerance). Skips without a GPU.
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/cuda_graph.h"
#include "kernels/cuda_ops.h"
#include "kernels/device_info.h"
#include "mimo/moe_layer.h"
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

struct GraphCase {
  const char* name;
  MoeConfig moe;
  int64_t ffn;
  std::vector<int32_t> lengths;
};

void PrintTo(const GraphCase& c, std::ostream* os) { *os << c.name; }

GraphCase Mixtral() {
  MoeConfig m;
  m.router = {.experts = 8, .top_k = 2};
  m.aux_loss_coeff = 0.01f;
  m.z_loss_coeff = 0.001f;
  m.shared_expert_ffn_hidden_size = 128;
  m.graph_safe = true;
  return {"MixtralShared", m, 256, {300, 37, 700}};
}

GraphCase FineGrainedCapacity() {
  MoeConfig m;
  m.router = {.experts = 64,
              .top_k = 6,
              .score = RouterScore::kSigmoid,
              .scaling_factor = 2.5f,
              .num_groups = 8,
              .group_top_k = 3};
  m.aux_loss_coeff = 0.01f;
  m.per_sequence_aux_loss = true;
  m.expert_bias = true;
  m.capacity_factor = 1.25;
  m.graph_safe = true;
  return {"FineGrainedSigmoidCapacity", m, 64, {511, 0, 290}};
}

TransformerConfig Config(DType dtype, int64_t ffn) {
  TransformerConfig c;
  c.num_layers = 4;
  c.hidden_size = 256;
  c.num_attention_heads = 4;
  c.ffn_hidden_size = ffn;
  c.add_bias_linear = false;
  c.init_std = 0.0625f;
  c.dtype = dtype;
  return c;
}

// What one forward + backward leaves behind.
struct StepResult {
  std::vector<double> y, dx, losses;
  std::vector<int64_t> load;
  std::map<std::string, std::vector<double>> grads;
};

class MoeLayerGraphCudaTest : public ::testing::TestWithParam<std::tuple<GraphCase, DType>> {
 protected:
  void SetUp() override {
    const kernels::CudaDevices devices = kernels::ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }
};

TEST_P(MoeLayerGraphCudaTest, ReplaysLikeTheEagerLayer) {
  const auto& [k, dtype] = GetParam();
  const TransformerConfig config = Config(dtype, k.ffn);
  auto ops_or = kernels::NewCudaOps();
  ASSERT_TRUE(ops_or.ok()) << ops_or.status();
  kernels::Ops& ops = **ops_or;
  BuildContext build{.ops = &ops, .config = &config, .seed = 9, .prefix = "mlp"};
  auto layer_or = MoeLayer::Create(build, k.moe);
  ASSERT_TRUE(layer_or.ok()) << layer_or.status();
  MoeLayer& layer = **layer_or;
  auto seqs = PackedSequences::Create(ops, k.lengths);
  ASSERT_TRUE(seqs.ok()) << seqs.status();
  const int64_t t = seqs->tokens(), c = config.hidden_size;
  // Three input sets, all on the device before the capture: nothing is allocated after it.
  std::mt19937 random(123);
  std::vector<Tensor> xs, dys;
  for (int i = 0; i < 3; ++i) {
    xs.push_back(Upload(ops, RandomFloats(t * c, random), {t, c}, dtype));
    dys.push_back(Upload(ops, RandomFloats(t * c, random), {t, c}, dtype));
  }
  const Tensor x = Upload(ops, std::vector<float>(t * c), {t, c}, dtype);
  const Tensor dy = Upload(ops, std::vector<float>(t * c), {t, c}, dtype);
  std::vector<AuxLossRecord> records;
  Tensor y, dx;
  // The step the graph captures: forward and backward on the buffers x and dy.
  auto step = [&]() -> absl::Status {
    records.clear();
    const StepContext ctx{
        .ops = &ops, .sequences = &*seqs, .loss_scale = 0.5f, .aux_losses = &records};
    MIMO_ASSIGN_OR_RETURN(BlockOutput out, layer.Forward(ctx, x));
    y = out.y;
    MIMO_ASSIGN_OR_RETURN(dx, layer.Backward(ctx, std::move(out.saved), dy));
    return absl::OkStatus();
  };
  auto load_inputs = [&](int i) {
    ASSERT_TRUE(ops.Copy(x.data(), xs[i].data(), x.nbytes()).ok());
    ASSERT_TRUE(ops.Copy(dy.data(), dys[i].data(), dy.nbytes()).ok());
    for (const auto& [name, p] : ParametersByName(layer)) {
      ASSERT_TRUE(ops.SetZero(p->grad().data(), p->grad().nbytes()).ok());
    }
    ASSERT_TRUE(layer.TakeExpertLoad(ops).ok());  // Counting from zero.
  };
  auto results = [&]() {
    StepResult r{.y = Download(ops, y), .dx = Download(ops, dx)};
    r.losses = Download(ops, records.at(0).losses);
    r.load = *layer.TakeExpertLoad(ops);
    for (const auto& [name, p] : ParametersByName(layer)) r.grads[name] = Download(ops, p->grad());
    return r;
  };
  // Eager: set 0 warms up (GEMM plans, the allocator's pool), sets 1 and 2 are the reference.
  std::vector<StepResult> eager(3);
  for (int i = 0; i < 3; ++i) {
    load_inputs(i);
    ASSERT_TRUE(step().ok()) << step();
    eager[i] = results();
  }
  load_inputs(0);
  auto graph = kernels::CudaGraph::Capture(ops, step);
  ASSERT_TRUE(graph.ok()) << graph.status();
  std::cout << k.name << " " << kernels::DTypeName(dtype) << ": " << graph->nodes()
            << " graph nodes\n";
  for (int i = 1; i < 3; ++i) {
    SCOPED_TRACE(absl::StrCat("input set ", i));
    load_inputs(i);
    ASSERT_TRUE(graph->Replay(ops.stream()).ok());
    ASSERT_TRUE(ops.Synchronize().ok());
    const StepResult got = results();
    // Same kernels in the same order: equal up to the order of floating-point atomics.
    EXPECT_LT(RelL2(got.y, eager[i].y), 1e-6);
    EXPECT_LT(RelL2(got.dx, eager[i].dx), 1e-6);
    EXPECT_LT(RelL2(got.losses, eager[i].losses), 1e-6);
    EXPECT_EQ(got.load, eager[i].load);
    for (const auto& [name, g] : eager[i].grads) {
      EXPECT_LT(RelL2(got.grads.at(name), g), 1e-6) << name;
    }
    EXPECT_GT(RelL2(got.y, eager[i == 1 ? 2 : 1].y), 0.1) << "the replay saw new inputs";
  }
}

// The graph-safe layer (grouped GEMMs) and the per-expert-GEMM layer on the GPU: the same
// parameters, outputs and gradients within bf16 tolerance.
TEST_P(MoeLayerGraphCudaTest, EqualsThePerExpertGemmLayer) {
  const auto& [k, dtype] = GetParam();
  const TransformerConfig config = Config(dtype, k.ffn);
  auto ops_or = kernels::NewCudaOps();
  ASSERT_TRUE(ops_or.ok()) << ops_or.status();
  kernels::Ops& ops = **ops_or;
  auto seqs = PackedSequences::Create(ops, k.lengths);
  ASSERT_TRUE(seqs.ok()) << seqs.status();
  const int64_t t = seqs->tokens(), c = config.hidden_size;
  std::mt19937 random(5);
  const std::vector<float> xv = RandomFloats(t * c, random), dyv = RandomFloats(t * c, random);
  std::vector<StepResult> runs;
  for (const bool graph_safe : {true, false}) {
    MoeConfig moe = k.moe;
    moe.graph_safe = graph_safe;
    BuildContext build{.ops = &ops, .config = &config, .seed = 9, .prefix = "mlp"};
    auto layer = MoeLayer::Create(build, moe);
    ASSERT_TRUE(layer.ok()) << layer.status();
    std::vector<AuxLossRecord> records;
    const StepContext ctx{
        .ops = &ops, .sequences = &*seqs, .loss_scale = 0.5f, .aux_losses = &records};
    auto out = (*layer)->Forward(ctx, Upload(ops, xv, {t, c}, dtype));
    ASSERT_TRUE(out.ok()) << out.status();
    StepResult r{.y = Download(ops, out->y)};
    auto dx = (*layer)->Backward(ctx, std::move(out->saved), Upload(ops, dyv, {t, c}, dtype));
    ASSERT_TRUE(dx.ok()) << dx.status();
    r.dx = Download(ops, *dx);
    r.losses = Download(ops, records.at(0).losses);
    for (const auto& [name, p] : ParametersByName(**layer))
      r.grads[name] = Download(ops, p->grad());
    runs.push_back(std::move(r));
  }
  const double bound = dtype == DType::kF32 ? 1e-5 : 2e-2;
  EXPECT_LT(RelL2(runs[0].y, runs[1].y), bound);
  EXPECT_LT(RelL2(runs[0].dx, runs[1].dx), bound);
  EXPECT_LT(RelL2(runs[0].losses, runs[1].losses), bound);
  for (const auto& [name, g] : runs[1].grads) {
    EXPECT_LT(RelL2(runs[0].grads.at(name), g), bound) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeLayerGraphCudaTest,
                         ::testing::Combine(::testing::Values(Mixtral(), FineGrainedCapacity()),
                                            ::testing::Values(DType::kBF16, DType::kF32)),
                         [](const auto& info) {
                           return absl::StrCat(std::get<0>(info.param).name, "_",
                                               kernels::DTypeName(std::get<1>(info.param)));
                         });

}  // namespace
}  // namespace mimo
