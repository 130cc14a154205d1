// Runs a MoE layer's routed experts alone over given row offsets, for the experts' CPU and CUDA
// tests.
#pragma once

#include <map>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mimo/experts.h"
#include "tests/mimo/model_test_util.h"

namespace mimo::testing {

// Experts with these row counts, back to back: 12 experts of 11 distinct counts (an empty one,
// one row, counts on both sides of 64 and 512), and 12 of two counts.
inline std::vector<int32_t> SkewedExpertRows() {
  return {0, 1, 63, 64, 65, 130, 200, 511, 512, 513, 700, 1100};
}
inline std::vector<int32_t> BalancedExpertRows() {
  return {320, 320, 256, 320, 320, 320, 256, 320, 320, 320, 320, 320};
}

struct ExpertsRun {
  std::map<std::string, std::vector<double>> values;  // "h", "dx", each parameter's gradient.
};

// Builds experts of `config` with `builder` on `ops` (12 local of 24, seed 3), runs a forward and
// a backward over rows of random x and dh with the given counts, and returns what they give.
inline ExpertsRun RunExperts(kernels::Ops& ops, const TransformerConfig& config,
                             const ExpertsBuilder& builder, const std::vector<int32_t>& counts) {
  ExpertsRun run;
  BuildContext build{.ops = &ops, .config = &config, .seed = 3, .prefix = "mlp.experts"};
  const int64_t el = static_cast<int64_t>(counts.size());
  auto experts = builder.Build(
      build, {.total = 2 * el, .first = el, .count = el, .ffn = config.ffn_hidden_size});
  EXPECT_TRUE(experts.ok()) << experts.status();
  if (!experts.ok()) return run;
  // Counts that are all multiples of 64 say so: grouped experts then run their forward and
  // input-gradient products as cuBLASLt row tiles on a GPU (else on the grouped kernel).
  ExpertRowOffsets offsets{.host = {0}, .row_multiple = 64};
  for (int32_t n : counts) {
    offsets.host.push_back(offsets.host.back() + n);
    if (n % 64 != 0) offsets.row_multiple = 1;
  }
  offsets.device = UploadInts(ops, offsets.host);
  const int64_t rows = offsets.host.back(), c = config.hidden_size;
  std::mt19937 random(11);
  const std::vector<float> x = RandomFloats(rows * c, random);
  const std::vector<float> dh = RandomFloats(rows * c, random);
  const StepContext ctx{.ops = &ops};
  auto out = (*experts)->Forward(ctx, Upload(ops, x, {rows, c}, config.dtype), offsets);
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return run;
  run.values["h"] = Download(ops, out->y);
  auto dx =
      (*experts)->Backward(ctx, std::move(out->saved), Upload(ops, dh, {rows, c}, config.dtype));
  EXPECT_TRUE(dx.ok()) << dx.status();
  if (!dx.ok()) return run;
  run.values["dx"] = Download(ops, *dx);
  std::vector<Parameter*> params;
  (*experts)->AppendParameters(params);
  for (Parameter* p : params) run.values[p->name() + ".grad"] = Download(ops, p->grad());
  return run;
}

// The experts' transformer settings: SwiGLU, hidden 16, each expert 24 wide.
inline TransformerConfig ExpertsConfig(kernels::DType dtype) {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.ffn_hidden_size = 24;
  c.activation = MlpActivation::kSwiglu;
  c.add_bias_linear = false;
  c.init_std = 0.25f;
  c.dtype = dtype;
  return c;
}

}  // namespace mimo::testing
