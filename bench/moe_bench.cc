// Times the MoE layer (router, dispatch, experts, combine; forward and backward) on the CUDA ops
// for the shapes bench/torch_moe.py times in PyTorch, and two of its parts alone.
//
//   moe_bench [--list] [--filter SUBSTRING] [--iters K] [--parts] [--skew S] [--graph]
//             [--batch-streams N] [--align A]
//
// --list prints the cases (one JSON object per line: name, tokens, hidden, ffn, experts, top_k)
// for the PyTorch side. Otherwise each case runs 2 warm-up steps and K timed ones (wall clock
// from the first launch to the stream drained: the layer's host synchronizations count, as they
// would in training); one JSON line per case with the median milliseconds of a forward+backward
// and the expert TFLOP/s: 3 (forward + backward) x 2 x tokens x top_k x 3 x hidden x ffn. Each
// step is a training step of one micro-batch: the gradients reset first (Parameter::ResetGrad:
// the experts' weight gradients written, not added to an f32 gradient read back).
// --parts also times, between CUDA events (median of K; the products compared with each other
// interleaved, one of each a round), with balanced and with Zipf routing
// (expert e chosen with weight 1 / (e + 1)^1.2): the permutation (map + permute) and the
// weighted unpermute, as GB/s of the rows they must read and write; and the experts' fc1 GEMMs
// (one per expert as one batch, as the layer runs them; one per expert one after another; and as
// one grouped GEMM over device offsets, as the graph-safe layer runs them: row tiles of --align
// rows through cuBLASLt where that is 64 or more, else the grouped kernel) against one dense GEMM
// of the same FLOPs, and as one batch of products of at most 512 / 1024 / 2048 rows; and fc1's
// weight gradient per expert as one batch, added to an f32 gradient (as the layer's later
// micro-batches do), written over it (its first), and written in bf16, and as one grouped product
// (the graph-safe layer's) on each tensor-core kernel of the GPU (wgmma, mma.sync), added to the
// f32 gradient and written over it.
// After the timed steps of a case, one more runs between cudaProfilerStart/Stop (for ncu
// --profile-from-start off).
// --batch-streams sets the streams a batch of GEMMs spreads over (CublasLtOptions::batch_streams;
// 1: one after another, products of one shape still stacked); --align pads each expert's rows to a
// multiple of A (MoeConfig::align; experts of equal padded counts share one batched GEMM).
// --graph also times the
// graph-safe layer (moe.graph_safe: grouped GEMMs, no host synchronization), its forward+backward
// captured once in a CUDA graph and replayed (wall clock of a replay to the stream drained): a
// micro-batch's first step ("graph": the experts' weight gradients written) and a later one's
// ("graph_later_microbatch": added to them).
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/bfloat16.h"
#include "common/status_macros.h"
#include "kernels/cuda_graph.h"
#include "kernels/cuda_ops.h"
#include "kernels/grouped_gemm.h"
#include "kernels/stream_hold.h"
#include "mimo/moe_layer.h"
#include "mimo/parameter.h"

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

void CheckCuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "moe_bench: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The layer's forward+backward; with skew > 0 the routing is skewed towards low experts by a
// selection bias of -skew * ln(e + 1) / E on expert e (the layer's aux-loss-free bias, written as
// a checkpoint would), and the achieved imbalance (largest / mean expert load) is reported.
void Run(const MoeCase& c, int iters, double skew, int batch_streams, int64_t align,
         bool graph = false) {
  kernels::CudaOpsOptions options;
  options.blas.batch_streams = batch_streams;
  auto ops = kernels::NewCudaOps(options);
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
  moe.expert_bias = skew > 0;
  moe.graph_safe = graph;
  moe.align = align;
  BuildContext build{.ops = ops->get(), .config = &config, .seed = 1, .prefix = "mlp"};
  auto layer = MoeLayer::Create(build, moe);
  Check(layer.status(), "MoeLayer::Create");
  if (skew > 0) {
    std::vector<float> bias(c.experts);
    for (int64_t e = 0; e < c.experts; ++e) {
      bias[e] = static_cast<float>(-skew * std::log(e + 1.0) / static_cast<double>(c.experts));
    }
    Check((*ops)->CopyFromHost((*layer)->expert_bias().data(), bias.data(),
                               sizeof(float) * bias.size()),
          "setting the expert bias");
  }
  const kernels::Tensor x = RandomBF16(**ops, {c.tokens, c.hidden}, 1);
  const kernels::Tensor dy = RandomBF16(**ops, {c.tokens, c.hidden}, 2);
  const StepContext ctx{.ops = ops->get()};
  // Every step is a training step of one micro-batch: its gradients reset first, as the
  // trainer's (the experts' marked stale, so their first products write them).
  std::vector<Parameter*> params;
  (*layer)->AppendParameters(params);
  auto reset = [&]() -> absl::Status {
    for (Parameter* p : params) MIMO_RETURN_IF_ERROR(p->ResetGrad(**ops));
    return absl::OkStatus();
  };
  auto step = [&]() {
    Check(reset(), "ResetGrad");
    auto out = (*layer)->Forward(ctx, x);
    Check(out.status(), "Forward");
    Check((*layer)->Backward(ctx, std::move(out->saved), dy).status(), "Backward");
    Check((*ops)->Synchronize(), "Synchronize");
  };
  for (int i = 0; i < 2; ++i) step();
  // The step without its final synchronization, for the capture: a micro-batch's first (the
  // gradients reset, the experts' weight gradients written) or a later one (added to them).
  auto enqueue = [&](bool first) -> absl::Status {
    if (first) MIMO_RETURN_IF_ERROR(reset());
    auto out = (*layer)->Forward(ctx, x);
    if (!out.ok()) return out.status();
    return (*layer)->Backward(ctx, std::move(out->saved), dy).status();
  };
  const double flops = 3.0 * 2.0 * c.tokens * c.top_k * 3.0 * c.hidden * c.ffn;
  // Times `run` (wall clock to the stream drained) and prints the case's line for `mode`.
  auto time_and_print = [&](const char* mode, const std::function<void()>& run) {
    std::vector<double> ms;
    for (int i = 0; i < iters; ++i) {
      const auto start = std::chrono::steady_clock::now();
      run();
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count());
    }
    // One more, untimed, between profiler marks (ncu --profile-from-start off sees it alone).
    CheckCuda(cudaProfilerStart(), "cudaProfilerStart");
    run();
    CheckCuda(cudaProfilerStop(), "cudaProfilerStop");
    const double median = Median(ms);
    auto load = (*layer)->TakeExpertLoad(**ops);
    Check(load.status(), "TakeExpertLoad");
    double total = 0, most = 0;
    for (int64_t n : *load) {
      total += static_cast<double>(n);
      most = std::max(most, static_cast<double>(n));
    }
    std::printf(
        "{\"name\": \"%s\", \"mode\": \"%s\", \"skew\": %.2f, \"max_over_mean_load\": %.2f, "
        "\"ms\": %.3f, \"expert_tflops\": %.1f}\n",
        c.name.c_str(), mode, skew, most / (total / static_cast<double>(c.experts)), median,
        flops / (median * 1e-3) / 1e12);
    std::fflush(stdout);
  };
  if (!graph) {
    time_and_print("eager", step);
    return;
  }
  // Captured once, replayed; then a later micro-batch's step (the gradients not stale at the
  // capture: the experts' weight gradients added), its replays accumulating into them.
  for (const bool first : {true, false}) {
    if (!first) step();  // Fresh gradients, no longer stale.
    auto graph_step = kernels::CudaGraph::Capture(**ops, [&] { return enqueue(first); });
    Check(graph_step.status(), "capturing the layer");
    auto replay = [&] {
      Check(graph_step->Replay((*ops)->stream()), "Replay");
      Check((*ops)->Synchronize(), "Synchronize");
    };
    replay();  // Warm-up.
    time_and_print(first ? "graph" : "graph_later_microbatch", replay);
  }
}

// Median milliseconds of `fn` (enqueued on `ops`' stream) between CUDA events, after a warm-up.
double TimeOnStream(kernels::Ops& ops, int iters, const std::function<void()>& fn) {
  const auto stream = static_cast<cudaStream_t>(ops.stream());
  fn();
  Check(ops.Synchronize(), "Synchronize");
  std::vector<double> ms;
  cudaEvent_t start, stop;
  CheckCuda(cudaEventCreate(&start), "cudaEventCreate");
  CheckCuda(cudaEventCreate(&stop), "cudaEventCreate");
  for (int i = 0; i < iters; ++i) {
    CheckCuda(cudaEventRecord(start, stream), "cudaEventRecord");
    fn();
    CheckCuda(cudaEventRecord(stop, stream), "cudaEventRecord");
    CheckCuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float elapsed = 0;
    CheckCuda(cudaEventElapsedTime(&elapsed, start, stop), "cudaEventElapsedTime");
    ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return Median(ms);
}

// Median milliseconds of each of `fns` between CUDA events, timed in `iters` rounds that run
// each once (round r starting with fns[r % n]), so that a change of the clock over the run moves
// all of them alike: what comparing them needs. Each round waits behind a stream hold while the
// host enqueues it, so no function's time includes the host's. After one warm-up run of each.
std::vector<double> TimeInterleaved(kernels::Ops& ops, int iters,
                                    const std::vector<std::function<void()>>& fns) {
  constexpr int64_t kHoldNs = 20'000'000;  // Longer than a round takes to enqueue.
  const auto stream = static_cast<cudaStream_t>(ops.stream());
  const size_t n = fns.size();
  for (const auto& fn : fns) fn();
  Check(ops.Synchronize(), "Synchronize");
  std::vector<cudaEvent_t> marks(n + 1);
  for (cudaEvent_t& m : marks) CheckCuda(cudaEventCreate(&m), "cudaEventCreate");
  std::vector<std::vector<double>> ms(n);
  for (int r = 0; r < iters; ++r) {
    Check(kernels::LaunchStreamHold(kHoldNs, stream), "LaunchStreamHold");
    for (size_t j = 0; j < n; ++j) {
      CheckCuda(cudaEventRecord(marks[j], stream), "cudaEventRecord");
      fns[(r + j) % n]();
    }
    CheckCuda(cudaEventRecord(marks[n], stream), "cudaEventRecord");
    CheckCuda(cudaEventSynchronize(marks[n]), "cudaEventSynchronize");
    for (size_t j = 0; j < n; ++j) {
      float elapsed = 0;
      CheckCuda(cudaEventElapsedTime(&elapsed, marks[j], marks[j + 1]), "cudaEventElapsedTime");
      ms[(r + j) % n].push_back(elapsed);
    }
  }
  for (cudaEvent_t m : marks) cudaEventDestroy(m);
  std::vector<double> medians;
  for (auto& v : ms) medians.push_back(Median(std::move(v)));
  return medians;
}

// top_k distinct experts per token, expert e with weight 1 / (e + 1)^skew.
std::vector<int32_t> Routing(const MoeCase& c, double skew) {
  std::mt19937 random(7);
  std::vector<double> weight(c.experts);
  for (int64_t e = 0; e < c.experts; ++e) weight[e] = 1.0 / std::pow(e + 1.0, skew);
  std::vector<int32_t> out;
  out.reserve(c.tokens * c.top_k);
  for (int64_t t = 0; t < c.tokens; ++t) {
    std::vector<double> w = weight;
    for (int64_t j = 0; j < c.top_k; ++j) {
      std::discrete_distribution<int32_t> pick(w.begin(), w.end());
      const int32_t e = pick(random);
      out.push_back(e);
      w[e] = 0;
    }
  }
  return out;
}

void RunParts(const MoeCase& c, int iters, int batch_streams, int64_t align) {
  kernels::CudaOpsOptions options;
  options.blas.batch_streams = batch_streams;
  auto made = kernels::NewCudaOps(options);
  Check(made.status(), "NewCudaOps");
  kernels::Ops& ops = **made;
  auto tensor = [&](const kernels::Shape& shape, kernels::DType dtype) {
    auto t = kernels::Tensor::Empty(shape, dtype, ops.allocator(), ops.stream());
    Check(t.status(), "allocating");
    return *t;
  };
  const int64_t t = c.tokens, k = c.top_k, e = c.experts, h = c.hidden, pairs = t * k;
  const int64_t capacity = kernels::MoePermuteCapacity(t, k, e, align);
  const kernels::Tensor x = RandomBF16(ops, {t, h}, 3);
  const kernels::Tensor rows_out = tensor({capacity, h}, kernels::DType::kBF16);
  const kernels::Tensor y = tensor({t, h}, kernels::DType::kBF16);
  const kernels::Tensor probs = tensor({t, k}, kernels::DType::kF32);
  Check(ops.SetZero(probs.data(), probs.nbytes()), "SetZero");
  const kernels::Tensor indices = tensor({t, k}, kernels::DType::kI32);
  const kernels::Tensor rows = tensor({t, k}, kernels::DType::kI32);
  const kernels::Tensor offsets = tensor({e + 1}, kernels::DType::kI32);
  const kernels::Tensor pair_of_row = tensor({capacity}, kernels::DType::kI32);
  // Rows of hidden bf16 values each pair reads and writes once.
  const double row_bytes = 2.0 * h * 2.0 * pairs;
  // The pairs grouped by expert (into rows, offsets, pair_of_row).
  auto map = [&] {
    Check(ops.MoePermuteMap({.indices = indices.data<int32_t>(),
                             .rows = rows.data<int32_t>(),
                             .offsets = offsets.data<int32_t>(),
                             .pair_of_row = pair_of_row.data<int32_t>(),
                             .tokens = t,
                             .top_k = k,
                             .experts = e,
                             .align = align,
                             .capacity = capacity}),
          "MoePermuteMap");
  };
  for (const auto& [routing, skew] : {std::pair{"balanced", 0.0}, std::pair{"zipf", 1.2}}) {
    const std::vector<int32_t> host = Routing(c, skew);
    Check(ops.CopyFromHost(indices.data(), host.data(), sizeof(int32_t) * pairs), "upload");
    const double permute_ms = TimeOnStream(ops, iters, [&] {
      map();
      Check(ops.MoePermute({.dtype = kernels::DType::kBF16,
                            .x = x.data(),
                            .pair_of_row = pair_of_row.data<int32_t>(),
                            .rows = rows.data<int32_t>(),
                            .out = rows_out.data(),
                            .tokens = t,
                            .top_k = k,
                            .hidden = h,
                            .capacity = capacity}),
            "MoePermute");
    });
    const double unpermute_ms = TimeOnStream(ops, iters, [&] {
      Check(ops.MoeUnpermute({.dtype = kernels::DType::kBF16,
                              .h = rows_out.data(),
                              .rows = rows.data<int32_t>(),
                              .probs = probs.data<float>(),
                              .y = y.data(),
                              .tokens = t,
                              .top_k = k,
                              .hidden = h}),
            "MoeUnpermute");
    });
    std::printf(
        "{\"name\": \"%s\", \"part\": \"permute\", \"routing\": \"%s\", \"ms\": %.3f, "
        "\"gbps\": %.0f}\n",
        c.name.c_str(), routing, permute_ms, row_bytes / (permute_ms * 1e-3) / 1e9);
    std::printf(
        "{\"name\": \"%s\", \"part\": \"unpermute\", \"routing\": \"%s\", \"ms\": %.3f, "
        "\"gbps\": %.0f}\n",
        c.name.c_str(), routing, unpermute_ms,
        (2.0 * h * pairs + 2.0 * h * t) / (unpermute_ms * 1e-3) / 1e9);
    // The experts' fc1 GEMMs over the permuted rows, one per expert, against one dense GEMM of
    // the same rows.
    std::vector<int32_t> off(e + 1);
    map();
    Check(ops.CopyToHost(off.data(), offsets.data(), sizeof(int32_t) * (e + 1)), "offsets");
    const int64_t f1 = 2 * c.ffn, used = off[e];
    const kernels::Tensor w1 = RandomBF16(ops, {e * f1, h}, 4);
    const kernels::Tensor h1 = tensor({capacity, f1}, kernels::DType::kBF16);
    // Each expert's rows as products of at most `chunk` rows (0: one product per expert).
    auto fc1_batch = [&](int64_t chunk) {
      std::vector<kernels::GemmParams> out;
      for (int64_t i = 0; i < e; ++i) {
        const int64_t step = chunk > 0 ? chunk : std::max<int64_t>(off[i + 1] - off[i], 1);
        for (int64_t r = off[i]; r < off[i + 1]; r += step) {
          out.push_back(
              kernels::LinearForwardGemm({.dtype = kernels::DType::kBF16,
                                          .x = static_cast<char*>(rows_out.data()) + r * h * 2,
                                          .w = static_cast<char*>(w1.data()) + i * f1 * h * 2,
                                          .y = static_cast<char*>(h1.data()) + r * f1 * 2,
                                          .tokens = std::min<int64_t>(step, off[i + 1] - r),
                                          .in = h,
                                          .out = f1}));
        }
      }
      return out;
    };
    const std::vector<kernels::GemmParams> batch = fc1_batch(0), chunk512 = fc1_batch(512),
                                           chunk1024 = fc1_batch(1024), chunk2048 = fc1_batch(2048);
    const std::vector<double> fc1_ms =
        TimeInterleaved(ops, iters,
                        {[&] { Check(ops.GemmBatch(batch), "GemmBatch"); },
                         [&] {
                           for (const kernels::GemmParams& p : batch) Check(ops.Gemm(p), "Gemm");
                         },
                         [&] {
                           Check(ops.GroupedGemm({.ab_dtype = kernels::DType::kBF16,
                                                  .d_dtype = kernels::DType::kBF16,
                                                  .a = rows_out.data(),
                                                  .b = w1.data(),
                                                  .d = h1.data(),
                                                  .offsets = offsets.data<int32_t>(),
                                                  .groups = e,
                                                  .rows = capacity,
                                                  .n = f1,
                                                  .k = h,
                                                  .transpose_b = true,
                                                  .row_multiple = align}),
                                 "GroupedGemm");
                         },
                         [&] {
                           Check(ops.Linear({.dtype = kernels::DType::kBF16,
                                             .x = rows_out.data(),
                                             .w = w1.data(),
                                             .y = h1.data(),
                                             .tokens = used,
                                             .in = h,
                                             .out = f1}),
                                 "Linear");
                         },
                         [&] { Check(ops.GemmBatch(chunk512), "GemmBatch"); },
                         [&] { Check(ops.GemmBatch(chunk1024), "GemmBatch"); },
                         [&] { Check(ops.GemmBatch(chunk2048), "GemmBatch"); }});
    const double batch_ms = fc1_ms[0], sequential_ms = fc1_ms[1], grouped_kernel_ms = fc1_ms[2],
                 dense_ms = fc1_ms[3];
    const double flops = 2.0 * used * f1 * h;
    std::printf(
        "{\"name\": \"%s\", \"part\": \"experts_fc1_chunks\", \"routing\": \"%s\", "
        "\"tflops_512\": %.1f, \"tflops_1024\": %.1f, \"tflops_2048\": %.1f}\n",
        c.name.c_str(), routing, flops / (fc1_ms[4] * 1e-3) / 1e12,
        flops / (fc1_ms[5] * 1e-3) / 1e12, flops / (fc1_ms[6] * 1e-3) / 1e12);
    // fc1's weight gradient, one product per expert as one batch: added to an f32 gradient (as
    // the layer's later micro-batches do), written over an f32 gradient (its first), and written
    // in bf16 (as PyTorch's autograd leaves a bf16 parameter's gradient).
    const kernels::Tensor dw = tensor({e * f1, h}, kernels::DType::kF32);
    const kernels::Tensor dw16 = tensor({e * f1, h}, kernels::DType::kBF16);
    Check(ops.SetZero(dw.data(), dw.nbytes()), "SetZero");
    auto dw_batch = [&](kernels::DType d_dtype, bool accumulate) {
      const kernels::Tensor& out_dw = d_dtype == kernels::DType::kF32 ? dw : dw16;
      std::vector<kernels::GemmParams> out;
      for (int64_t i = 0; i < e; ++i) {
        const int64_t n = off[i + 1] - off[i];
        if (n == 0) continue;
        kernels::GemmParams g = kernels::LinearDwGemm(
            {.dtype = kernels::DType::kBF16,
             .x = static_cast<char*>(rows_out.data()) + off[i] * h * 2,
             .dw = reinterpret_cast<float*>(static_cast<char*>(out_dw.data()) +
                                            i * f1 * h * kernels::DTypeSize(d_dtype)),
             .accumulate = accumulate,
             .tokens = n,
             .in = h,
             .out = f1},
            static_cast<char*>(h1.data()) + off[i] * f1 * 2);
        g.d_dtype = d_dtype;
        out.push_back(g);
      }
      return out;
    };
    const std::vector<kernels::GemmParams> dw_add = dw_batch(kernels::DType::kF32, true),
                                           dw_f32 = dw_batch(kernels::DType::kF32, false),
                                           dw_bf16 = dw_batch(kernels::DType::kBF16, false);
    // And as the graph-safe layer runs it: one grouped product over the device offsets, added
    // to the f32 gradient, on each tensor-core kernel this GPU has.
    const kernels::GroupedGemmParams grouped_dw{.mode = kernels::GroupedGemmMode::kVariableDepth,
                                                .ab_dtype = kernels::DType::kBF16,
                                                .d_dtype = kernels::DType::kF32,
                                                .a = h1.data(),
                                                .b = rows_out.data(),
                                                .d = dw.data(),
                                                .offsets = offsets.data<int32_t>(),
                                                .groups = e,
                                                .rows = capacity,
                                                .m = f1,
                                                .n = h,
                                                .accumulate = true};
    std::vector<std::function<void()>> dw_fns = {
        [&] { Check(ops.GemmBatch(dw_add), "GemmBatch"); },
        [&] { Check(ops.GemmBatch(dw_f32), "GemmBatch"); },
        [&] { Check(ops.GemmBatch(dw_bf16), "GemmBatch"); }};
    std::vector<std::string> grouped_names;
    for (const auto& [name, kernel] :
         {std::pair{"wgmma", kernels::GroupedGemmKernel::kWgmma},
          std::pair{"mma_sync", kernels::GroupedGemmKernel::kMmaSync}}) {
      const absl::Status can = kernels::LaunchGroupedGemmWith(grouped_dw, kernel, ops.stream());
      if (absl::IsFailedPrecondition(can)) {
        std::printf(
            "{\"name\": \"%s\", \"part\": \"experts_fc1_dw_grouped\", \"routing\": "
            "\"%s\", \"kernel\": \"%s\", \"refused\": \"%s\"}\n",
            c.name.c_str(), routing, name, std::string(can.message()).c_str());
        continue;
      }
      Check(can, "GroupedGemm");
      grouped_names.push_back(name);
      dw_fns.push_back([&, kernel] {
        Check(kernels::LaunchGroupedGemmWith(grouped_dw, kernel, ops.stream()), "GroupedGemm");
      });
      // And written over the gradient (the graph-safe layer's first micro-batch of a step).
      grouped_names.push_back(absl::StrCat(name, "_written"));
      dw_fns.push_back([&, kernel] {
        kernels::GroupedGemmParams written = grouped_dw;
        written.accumulate = false;
        Check(kernels::LaunchGroupedGemmWith(written, kernel, ops.stream()), "GroupedGemm");
      });
    }
    const std::vector<double> dw_ms = TimeInterleaved(ops, iters, dw_fns);
    for (size_t i = 0; i < grouped_names.size(); ++i) {
      const double ms = dw_ms[3 + i];
      std::printf(
          "{\"name\": \"%s\", \"part\": \"experts_fc1_dw_grouped\", \"routing\": \"%s\", "
          "\"kernel\": \"%s\", \"ms\": %.3f, \"tflops\": %.1f}\n",
          c.name.c_str(), routing, grouped_names[i].c_str(), ms, flops / (ms * 1e-3) / 1e12);
    }
    std::printf(
        "{\"name\": \"%s\", \"part\": \"experts_fc1_dw\", \"routing\": \"%s\", "
        "\"f32_add_ms\": %.3f, \"f32_add_tflops\": %.1f, \"f32_ms\": %.3f, \"f32_tflops\": "
        "%.1f, \"bf16_ms\": %.3f, \"bf16_tflops\": %.1f}\n",
        c.name.c_str(), routing, dw_ms[0], flops / (dw_ms[0] * 1e-3) / 1e12, dw_ms[1],
        flops / (dw_ms[1] * 1e-3) / 1e12, dw_ms[2], flops / (dw_ms[2] * 1e-3) / 1e12);
    std::printf(
        "{\"name\": \"%s\", \"part\": \"experts_fc1\", \"routing\": \"%s\", \"ms\": "
        "%.3f, \"tflops\": %.1f, \"sequential_ms\": %.3f, \"sequential_tflops\": %.1f, "
        "\"grouped_kernel_ms\": %.3f, \"grouped_kernel_tflops\": %.1f, "
        "\"dense_ms\": %.3f, \"dense_tflops\": %.1f}\n",
        c.name.c_str(), routing, batch_ms, flops / (batch_ms * 1e-3) / 1e12, sequential_ms,
        flops / (sequential_ms * 1e-3) / 1e12, grouped_kernel_ms,
        flops / (grouped_kernel_ms * 1e-3) / 1e12, dense_ms, flops / (dense_ms * 1e-3) / 1e12);
    std::fflush(stdout);
  }
}

}  // namespace
}  // namespace mimo

int main(int argc, char** argv) {
  CLI::App app{"Times the MoE layer's forward and backward on the CUDA ops"};
  bool list = false;
  std::string filter;
  int iters = 5;
  bool parts = false;
  double skew = 0;
  bool graph = false;
  int batch_streams = mimo::kernels::CublasLtOptions{}.batch_streams;
  int64_t align = mimo::MoeConfig{}.align;
  app.add_flag("--list", list, "Print the cases as JSON lines and exit");
  app.add_option("--filter", filter, "Only cases whose name contains this");
  app.add_option("--iters", iters, "Timed steps per case")->check(CLI::Range(1, 1000));
  app.add_flag("--parts", parts, "Also time the permutation and the experts' GEMMs alone");
  app.add_option("--skew", skew,
                 "Also time the layer with routing skewed by a selection bias of "
                 "-skew * ln(e + 1) / E on expert e")
      ->check(CLI::Range(0.0, 1000.0));
  app.add_flag("--graph", graph,
               "Also time the graph-safe layer captured in a CUDA graph and replayed");
  app.add_option("--batch-streams", batch_streams,
                 "Streams a batch of GEMMs (the experts' per-expert GEMMs) spreads over")
      ->check(CLI::Range(1, 16));
  app.add_option("--align", align,
                 "Each expert's rows padded to a multiple of this (MoeConfig::align); experts of "
                 "equal padded counts share one batched GEMM")
      ->check(CLI::Range(1, 1024));
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
    mimo::Run(c, iters, 0, batch_streams, align);
    if (skew > 0) mimo::Run(c, iters, skew, batch_streams, align);
    if (graph) mimo::Run(c, iters, 0, batch_streams, align, /*graph=*/true);
    if (parts) mimo::RunParts(c, iters, batch_streams, align);
  }
  return 0;
}
