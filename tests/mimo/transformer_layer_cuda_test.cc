// The transformer layer on the CUDA ops (bf16 and fp32) against the same layer on the CPU ops
// (fp32, itself checked against float64 and central differences): same seed, so the same initial
// weights; same input, output gradient and dropout masks.
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda_ops.h"
#include "kernels/device_info.h"
#include "mimo/dense_mlp.h"
#include "mimo/transformer_layer.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::Download;
using testing::ParametersByName;
using testing::RandomFloats;
using testing::RelL2Check;
using testing::Upload;

struct LayerCase {
  const char* name;
  TransformerConfig config;  // dtype is set per run.
  std::vector<int32_t> lengths;
};

void PrintTo(const LayerCase& c, std::ostream* os) { *os << c.name; }

LayerCase Small() {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = 8;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.kv_channels = 8;  // The CUDA attention takes head widths that are multiples of 8.
  c.ffn_hidden_size = 8;
  c.add_bias_linear = false;
  c.init_std = 0.5f;
  return {"Small", c, {3, 1, 5}};
}

// Language-model shapes the tensor-core kernels take: head width 64, GQA, three sequences.
LayerCase Language() {
  TransformerConfig c;
  c.num_layers = 4;
  c.hidden_size = 256;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.ffn_hidden_size = 512;
  c.add_bias_linear = false;
  c.hidden_dropout = 0.1f;
  c.init_std = 0.0625f;  // 1 / sqrt(hidden): every branch moves the output.
  return {"Language", c, {100, 37, 200}};
}

// ViT-style: LayerNorm, exact GELU, biases, bidirectional, no RoPE.
LayerCase Encoder() {
  TransformerConfig c = Language().config;
  c.norm = NormKind::kLayerNorm;
  c.activation = MlpActivation::kGelu;
  c.add_bias_linear = true;
  c.causal = false;
  c.rotary = false;
  c.hidden_dropout = 0.0f;
  return {"Encoder", c, {65, 65, 17}};
}

struct LayerRun {
  std::vector<double> y, dx;
  std::map<std::string, std::vector<double>> grads;
};

LayerRun RunLayer(kernels::Ops& ops, const TransformerConfig& config,
                  const std::vector<int32_t>& lengths, const std::vector<float>& x,
                  const std::vector<float>& dy) {
  LayerRun run;
  BuildContext build{
      .ops = &ops, .config = &config, .seed = 7, .prefix = "layer", .layer_number = 1};
  auto layer = TransformerLayer::Create(build, DenseMlpBuilder());
  EXPECT_TRUE(layer.ok()) << layer.status();
  if (!layer.ok()) return run;
  auto seqs = PackedSequences::Create(ops, lengths);
  EXPECT_TRUE(seqs.ok()) << seqs.status();
  if (!seqs.ok()) return run;
  StepContext ctx{.ops = &ops, .sequences = &*seqs, .dropout_seed = 99, .dropout_offset = 4096};
  const int64_t t = seqs->tokens(), c = config.hidden_size;
  auto out = (*layer)->Forward(ctx, Upload(ops, x, {t, c}, config.dtype));
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return run;
  run.y = Download(ops, out->y);
  auto dx = (*layer)->Backward(ctx, std::move(out->saved), Upload(ops, dy, {t, c}, config.dtype));
  EXPECT_TRUE(dx.ok()) << dx.status();
  if (!dx.ok()) return run;
  run.dx = Download(ops, *dx);
  for (const auto& [name, p] : ParametersByName(**layer))
    run.grads[name] = Download(ops, p->grad());
  EXPECT_TRUE(ops.Synchronize().ok());
  return run;
}

class TransformerLayerCudaTest : public ::testing::TestWithParam<std::tuple<LayerCase, DType>> {
 protected:
  void SetUp() override {
    const kernels::CudaDevices devices = kernels::ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }
};

TEST_P(TransformerLayerCudaTest, MatchesTheCpuLayer) {
  const auto& [layer_case, dtype] = GetParam();
  TransformerConfig cpu_config = layer_case.config;
  cpu_config.dtype = DType::kF32;
  TransformerConfig gpu_config = layer_case.config;
  gpu_config.dtype = dtype;
  int64_t tokens = 0;
  for (int32_t n : layer_case.lengths) tokens += n;
  std::mt19937 random(2024);
  std::vector<float> x = RandomFloats(tokens * cpu_config.hidden_size, random);
  std::vector<float> dy = RandomFloats(tokens * cpu_config.hidden_size, random);
  if (dtype == DType::kBF16) {  // Both sides start from the same (bf16) input values.
    for (float& v : x) v = BFloat16ToFloat(FloatToBFloat16(v));
    for (float& v : dy) v = BFloat16ToFloat(FloatToBFloat16(v));
  }
  auto cpu = kernels::NewCpuOps();
  auto gpu = kernels::NewCudaOps();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const LayerRun want = RunLayer(*cpu, cpu_config, layer_case.lengths, x, dy);
  const LayerRun got = RunLayer(**gpu, gpu_config, layer_case.lengths, x, dy);
  ASSERT_FALSE(got.y.empty());
  // Stated bounds (relative L2 against the fp32 CPU layer): fp32 1e-5; bf16 2e-2 (bf16
  // weights and activations through ~12 ops, each within 1e-2 of float64 alone).
  RelL2Check check(dtype == DType::kF32 ? 1e-5 : 2e-2);
  check(got.y, want.y, "y");
  check(got.dx, want.dx, "dx");
  for (const auto& [name, grad] : want.grads) check(got.grads.at(name), grad, name);
  std::cout << layer_case.name << " " << kernels::DTypeName(dtype) << ": " << check.Worst() << "\n";
}

INSTANTIATE_TEST_SUITE_P(Cases, TransformerLayerCudaTest,
                         ::testing::Combine(::testing::Values(Small(), Language(), Encoder()),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         [](const auto& info) {
                           return absl::StrCat(std::get<0>(info.param).name, "_",
                                               kernels::DTypeName(std::get<1>(info.param)));
                         });

}  // namespace
}  // namespace mimo
