// The MoE layer on the CUDA ops against the same layer on the CPU ops (itself checked against
// float64 and central differences), in fp32 and bf16 on both sides: same seed, inputs and
// output gradient; y, dx, every parameter gradient and the auxiliary losses. The CUDA layer runs
// twice: adding to zeroed gradients, and writing stale ones (Parameter::ResetGrad over NaN: the
// experts' weight gradients written whole, as on a step's first micro-batch).
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda_ops.h"
#include "kernels/device_info.h"
#include "mimo/moe_layer.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::RouterScore;
using testing::Download;
using testing::ParametersByName;
using testing::RandomFloats;
using testing::RelL2Check;
using testing::Upload;

struct MoeCudaCase {
  const char* name;
  TransformerConfig config;
  MoeConfig moe;
  std::vector<int32_t> lengths;
};

void PrintTo(const MoeCudaCase& c, std::ostream* os) { *os << c.name; }

TransformerConfig Base() {
  TransformerConfig c;
  c.num_layers = 4;
  c.hidden_size = 256;
  c.num_attention_heads = 4;
  c.ffn_hidden_size = 128;
  c.add_bias_linear = false;
  c.init_std = 0.0625f;
  return c;
}

MoeCudaCase Mixtral() {
  MoeConfig m;
  m.router = {.experts = 8, .top_k = 2};
  m.aux_loss_coeff = 0.01f;
  m.z_loss_coeff = 0.001f;
  m.shared_expert_ffn_hidden_size = 128;
  return {"MixtralShared", Base(), m, {100, 37, 200}};
}

MoeCudaCase FineGrained() {
  MoeConfig m;
  m.router = {.experts = 64,
              .top_k = 6,
              .score = RouterScore::kSigmoid,
              .scaling_factor = 2.5f,
              .num_groups = 8,
              .group_top_k = 3};
  m.aux_loss_coeff = 0.01f;
  m.per_sequence_aux_loss = true;
  m.expert_ffn_hidden_size = 32;
  return {"FineGrainedSigmoidGrouped", Base(), m, {300, 0, 211}};
}

MoeCudaCase MixtralCapacity() {
  MoeCudaCase c = Mixtral();
  c.name = "MixtralCapacityDropsByPosition";
  c.moe.shared_expert_ffn_hidden_size = 0;
  c.moe.capacity_factor = 0.75;
  c.moe.drop_policy = kernels::TokenDropPolicy::kPosition;
  return c;
}

struct MoeRun {
  std::vector<double> y, dx, losses;
  std::map<std::string, std::vector<double>> grads;
};

MoeRun RunMoe(kernels::Ops& ops, const TransformerConfig& config, const MoeConfig& moe,
              const std::vector<int32_t>& lengths, const std::vector<float>& x,
              const std::vector<float>& dy, bool stale_grads = false) {
  MoeRun run;
  BuildContext build{.ops = &ops, .config = &config, .seed = 9, .prefix = "mlp", .layer_number = 2};
  auto layer = MoeLayer::Create(build, moe);
  EXPECT_TRUE(layer.ok()) << layer.status();
  if (!layer.ok()) return run;
  if (stale_grads) {
    for (const auto& [name, p] : ParametersByName(**layer)) {
      const std::vector<float> nan(p->numel(), std::numeric_limits<float>::quiet_NaN());
      EXPECT_TRUE(ops.CopyFromHost(p->grad().data(), nan.data(), p->grad().nbytes()).ok());
      EXPECT_TRUE(p->ResetGrad(ops).ok()) << name;
    }
  }
  auto seqs = PackedSequences::Create(ops, lengths);
  EXPECT_TRUE(seqs.ok()) << seqs.status();
  if (!seqs.ok()) return run;
  std::vector<AuxLossRecord> records;
  StepContext ctx{.ops = &ops, .sequences = &*seqs, .loss_scale = 0.25f, .aux_losses = &records};
  const int64_t t = seqs->tokens(), c = config.hidden_size;
  auto out = (*layer)->Forward(ctx, Upload(ops, x, {t, c}, config.dtype));
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return run;
  run.y = Download(ops, out->y);
  run.losses = Download(ops, records.at(0).losses);
  auto dx = (*layer)->Backward(ctx, std::move(out->saved), Upload(ops, dy, {t, c}, config.dtype));
  EXPECT_TRUE(dx.ok()) << dx.status();
  if (!dx.ok()) return run;
  run.dx = Download(ops, *dx);
  for (const auto& [name, p] : ParametersByName(**layer))
    run.grads[name] = Download(ops, p->grad());
  return run;
}

class MoeLayerCudaTest : public ::testing::TestWithParam<std::tuple<MoeCudaCase, DType>> {
 protected:
  void SetUp() override {
    const kernels::CudaDevices devices = kernels::ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }
};

TEST_P(MoeLayerCudaTest, MatchesTheCpuLayer) {
  const auto& [k, dtype] = GetParam();
  TransformerConfig config = k.config;
  config.dtype = dtype;
  int64_t tokens = 0;
  for (int32_t n : k.lengths) tokens += n;
  std::mt19937 random(77);
  const std::vector<float> x = RandomFloats(tokens * config.hidden_size, random);
  const std::vector<float> dy = RandomFloats(tokens * config.hidden_size, random);
  auto cpu = kernels::NewCpuOps();
  auto gpu = kernels::NewCudaOps();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const MoeRun want = RunMoe(*cpu, config, k.moe, k.lengths, x, dy);
  // Same dtype on both sides: fp32 within 1e-5; bf16 within 2e-2 (intermediates rounded to
  // bf16 from fp32 values that differ in the last bits).
  const double bound = dtype == DType::kF32 ? 1e-5 : 2e-2;
  for (const bool stale : {false, true}) {
    SCOPED_TRACE(stale ? "stale gradients written" : "zeroed gradients added to");
    const MoeRun got = RunMoe(**gpu, config, k.moe, k.lengths, x, dy, stale);
    ASSERT_FALSE(got.dx.empty());
    RelL2Check check(bound);
    check(got.y, want.y, "y");
    check(got.dx, want.dx, "dx");
    check(got.losses, want.losses, "losses");
    for (const auto& [name, grad] : want.grads) check(got.grads.at(name), grad, name);
    std::cout << k.name << " " << kernels::DTypeName(dtype) << (stale ? " (stale)" : "") << ": "
              << check.Worst() << "\n";
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeLayerCudaTest,
                         ::testing::Combine(::testing::Values(Mixtral(), FineGrained(),
                                                              MixtralCapacity()),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         [](const auto& info) {
                           return absl::StrCat(std::get<0>(info.param).name, "_",
                                               kernels::DTypeName(std::get<1>(info.param)));
                         });

}  // namespace
}  // namespace mimo
