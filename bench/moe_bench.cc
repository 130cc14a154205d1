// Times the MoE layer (router, dispatch, experts, combine; forward and backward) on the CUDA ops
// for the shapes bench/torch_moe.py times in PyTorch.
//
//   moe_bench [--list] [--filter SUBSTRING] [--iters K]
//
// --list prints the cases (one JSON object per line: name, tokens, hidden, ffn, experts, top_k)
// for the PyTorch side. Otherwise each case runs 2 warm-up steps and K timed ones (wall clock
// from the first launch to the stream drained: the layer's host synchronizations count, as they
// would in training); one JSON line per case with the median milliseconds of a forward+backward
// and the expert TFLOP/s: 3 (forward + backward) x 2 x tokens x top_k x 3 x hidden x ffn.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/bfloat16.h"
#include "kernels/cuda_ops.h"
#include "mimo/moe_layer.h"

namespace mimo {
namespace {

struct MoeCase {
  std::string name;
  int64_t tokens, hidden, ffn, experts, top_k;
};

// The shapes of the MoE issue's targets.
std::vector<MoeCase> Cases() {
  return {{"mixtral", 8192, 4096, 14336, 8, 2},
          {"fine_grained", 16384, 2048, 1408, 64, 6},
          {"qwen3_30b_a3b", 32768, 2048, 768, 128, 8}};
}

void Check(const absl::Status& status, const std::string& what) {
  if (!status.ok()) {
    std::fprintf(stderr, "moe_bench: %s: %s\n", what.c_str(), status.ToString().c_str());
    std::exit(1);
  }
}

// `n` bf16 values uniform in [-1, 1) on the ops' device.
kernels::Tensor RandomBF16(kernels::Ops& ops, const kernels::Shape& shape, uint32_t seed) {
  auto t = kernels::Tensor::Empty(shape, kernels::DType::kBF16, ops.allocator(), ops.stream());
  Check(t.status(), "allocating an input");
  std::mt19937 random(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<uint16_t> host(t->numel());
  for (uint16_t& v : host) v = FloatToBFloat16(dist(random));
  Check(ops.CopyFromHost(t->data(), host.data(), t->nbytes()), "uploading an input");
  return *t;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Run(const MoeCase& c, int iters) {
  auto ops = kernels::NewCudaOps();
  Check(ops.status(), "NewCudaOps");
  TransformerConfig config;
  config.num_layers = 1;
  config.hidden_size = c.hidden;
  config.num_attention_heads = 16;
  config.ffn_hidden_size = c.ffn;
  config.add_bias_linear = false;
  config.dtype = kernels::DType::kBF16;
  Check(ValidateTransformerConfig(config), "config");
  MoeConfig moe;
  moe.router = {.experts = c.experts, .top_k = c.top_k};
  BuildContext build{.ops = ops->get(), .config = &config, .seed = 1, .prefix = "mlp"};
  auto layer = MoeLayer::Create(build, moe);
  Check(layer.status(), "MoeLayer::Create");
  const kernels::Tensor x = RandomBF16(**ops, {c.tokens, c.hidden}, 1);
  const kernels::Tensor dy = RandomBF16(**ops, {c.tokens, c.hidden}, 2);
  const StepContext ctx{.ops = ops->get()};
  auto step = [&]() {
    auto out = (*layer)->Forward(ctx, x);
    Check(out.status(), "Forward");
    Check((*layer)->Backward(ctx, std::move(out->saved), dy).status(), "Backward");
    Check((*ops)->Synchronize(), "Synchronize");
  };
  for (int i = 0; i < 2; ++i) step();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    const auto start = std::chrono::steady_clock::now();
    step();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  const double median = Median(ms);
  const double flops = 3.0 * 2.0 * c.tokens * c.top_k * 3.0 * c.hidden * c.ffn;
  std::printf("{\"name\": \"%s\", \"ms\": %.3f, \"expert_tflops\": %.1f}\n", c.name.c_str(), median,
              flops / (median * 1e-3) / 1e12);
  std::fflush(stdout);
}

}  // namespace
}  // namespace mimo

int main(int argc, char** argv) {
  CLI::App app{"Times the MoE layer's forward and backward on the CUDA ops"};
  bool list = false;
  std::string filter;
  int iters = 5;
  app.add_flag("--list", list, "Print the cases as JSON lines and exit");
  app.add_option("--filter", filter, "Only cases whose name contains this");
  app.add_option("--iters", iters, "Timed steps per case")->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);
  for (const mimo::MoeCase& c : mimo::Cases()) {
    if (c.name.find(filter) == std::string::npos) continue;
    if (list) {
      std::printf(
          "{\"name\": \"%s\", \"tokens\": %lld, \"hidden\": %lld, \"ffn\": %lld, \"experts\": "
          "%lld, \"top_k\": %lld}\n",
          c.name.c_str(), static_cast<long long>(c.tokens), static_cast<long long>(c.hidden),
          static_cast<long long>(c.ffn), static_cast<long long>(c.experts),
          static_cast<long long>(c.top_k));
      continue;
    }
    mimo::Run(c, iters);
  }
  return 0;
}
