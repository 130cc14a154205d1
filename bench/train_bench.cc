// Times the training step of a job spec's whole model on one device: every module on one rank
// (the trainer's ModelPart::kWhole), the spec's batches, data and optimizer, in its precision.
//   train_bench SPEC [--steps N] [--warmup W] [--device cuda|cpu] [--micro-batch-size N]
//               [--micro-batches N]
// Prints how long one thread takes to read a step's samples (the trainer reads them ahead on
// several), Megatron-style iteration lines, then a summary line: parameters (total and active per
// token), median step time, tokens/s, model TFLOP/s (mimo/model_flops.h), MFU against the
// datasheet's dense bf16/fp32 peak (worker/train_job.h's PeakTflops) and the peak memory.
// On CUDA the timed steps lie between cudaProfilerStart and cudaProfilerStop, so
// `ncu --profile-from-start off` (or nsys's cudaProfilerApi capture range) sees only them.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "tools/mimoctl/spec_file.h"
#include "worker/model_spec.h"
#include "worker/train_job.h"
#include "worker/trainer.h"
#if MIMO_TRAIN_BENCH_CUDA
#include <cuda_profiler_api.h>

#include "kernels/cuda_ops.h"
#include "kernels/device_info.h"
#endif

namespace mimo {
namespace {

struct Args {
  std::string spec;
  int steps = 20;
  int warmup = 3;
  bool cuda = true;
  int64_t micro_batch_size = 0;  // 0: the spec's.
  int64_t micro_batches = 0;     // 0: the spec's.
  bool deterministic = false;    // kernels::CudaOpsOptions::deterministic.
};

absl::Status Run(const Args& a) {
  MIMO_ASSIGN_OR_RETURN(const v1::JobSpec spec, tools::ReadJobSpecFile(a.spec));
  std::unique_ptr<kernels::Ops> ops;
  std::string device = "cpu";
  if (a.cuda) {
#if MIMO_TRAIN_BENCH_CUDA
    const kernels::CudaDevices devices = kernels::ListCudaDevices();
    if (devices.devices.empty()) {
      return absl::FailedPreconditionError("no CUDA device: " + devices.unavailable_reason);
    }
    device = devices.devices[0].name;
    MIMO_ASSIGN_OR_RETURN(ops, kernels::NewCudaOps({.deterministic = a.deterministic}));
#else
    return absl::FailedPreconditionError("built without CUDA: use --device cpu");
#endif
  } else {
    ops = kernels::NewCpuOps();
  }
  const kernels::DType dtype = worker::ComputeDType(spec.training().precision(), a.cuda);
  MIMO_ASSIGN_OR_RETURN(const MimoModelConfig config, worker::MimoModelConfigFromSpec(spec, dtype));
  MIMO_ASSIGN_OR_RETURN(worker::TrainerOptions options, worker::TrainerOptionsFromSpec(spec, 1));
  if (a.micro_batch_size > 0) options.micro_batch_size = a.micro_batch_size;
  if (a.micro_batches > 0) options.micro_batches = a.micro_batches;
  MIMO_ASSIGN_OR_RETURN(auto trainer, worker::Trainer::Create(*ops, config, options));
  std::vector<Parameter*> params;
  trainer->AppendParameters(params);
  int64_t total = 0, experts = 0;
  for (const Parameter* p : params) {
    total += p->numel();
    if (p->name().find(".mlp.experts.") != std::string::npos) experts += p->numel();
  }
  int64_t active = total;
  if (config.language.moe.has_value()) {
    const MoeConfig& moe = *config.language.moe;
    active = total - experts + experts * moe.router.top_k / moe.router.experts;
  }
  const double peak = worker::PeakTflops(device, dtype);
  const int64_t samples = options.micro_batches * options.micro_batch_size;
  std::cout << absl::StrFormat(
      "%s on %s, %s: %.1f M parameters (%.1f M active per token), %d micro-batches of %d "
      "samples\n",
      a.spec, device, kernels::DTypeName(dtype), total * 1e-6, active * 1e-6, options.micro_batches,
      options.micro_batch_size);
  {
    const auto start = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < samples; ++i) {
      MIMO_ASSIGN_OR_RETURN(const data::Sample sample, trainer->source().Get(i));
      (void)sample;
    }
    std::cout << absl::StrFormat(
        "data: %.1f ms for one step's samples on one thread\n",
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
  }
  std::vector<double> seconds, flops, tokens;
  int64_t peak_memory = 0, mallocs = 0;
  double data_wait = 0, batch = 0;
  for (int s = 1; s <= a.warmup + a.steps; ++s) {
#if MIMO_TRAIN_BENCH_CUDA
    if (a.cuda && s == a.warmup + 1) cudaProfilerStart();
#endif
    MIMO_ASSIGN_OR_RETURN(const worker::StepMetrics m, trainer->Step());
#if MIMO_TRAIN_BENCH_CUDA
    if (a.cuda && s == a.warmup + a.steps) cudaProfilerStop();
#endif
    const double tflops = m.model_flops / m.seconds * 1e-12;
    worker::LogInterval step;  // Every step logged: an interval of one.
    worker::StepMetrics iteration = m;
    iteration.step = s;  // The iteration, as RunTraining reports (a skipped step is one).
    step.Add(iteration);
    std::cout << worker::MegatronLogLine(step.Take(), a.warmup + a.steps, s * samples, samples,
                                         tflops)
              << (s <= a.warmup ? " (warm-up)" : "") << "\n";
    const kernels::AllocatorStats memory = ops->allocator().stats();
    if (s == a.warmup) mallocs = memory.system_allocations;
    if (s <= a.warmup) continue;
    if (s == a.warmup + a.steps) mallocs = memory.system_allocations - mallocs;
    data_wait += m.data_wait_seconds;
    batch += m.batch_seconds;
    seconds.push_back(m.seconds);
    flops.push_back(m.model_flops);
    tokens.push_back(static_cast<double>(m.tokens));
    peak_memory = std::max(peak_memory, m.peak_memory_bytes);
  }
  std::vector<double> sorted = seconds;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  double sum_s = 0, sum_f = 0, sum_t = 0;
  for (size_t i = 0; i < seconds.size(); ++i) {
    sum_s += seconds[i];
    sum_f += flops[i];
    sum_t += tokens[i];
  }
  const double tflops = sum_f / sum_s * 1e-12;
  std::cout << absl::StrFormat(
      "summary: %d steps | median step %.1f ms | %.0f tokens/s | %.1f TFLOP/s | MFU %s | peak "
      "memory %.2f GiB | waiting for data %.1f%% | packing and uploading batches %.1f%% | device "
      "allocations "
      "while timed %d\n",
      a.steps, median * 1e3, sum_t / sum_s, tflops,
      peak > 0 ? absl::StrFormat("%.1f%% of %.0f", 100 * tflops / peak, peak) : "n/a",
      peak_memory / double(1 << 30), 100 * data_wait / sum_s, 100 * batch / sum_s, mallocs);
  return absl::OkStatus();
}

}  // namespace
}  // namespace mimo

int main(int argc, char** argv) {
  CLI::App app("Times the training step of a job spec's whole model on one device");
  mimo::Args a;
  std::string device = "cuda";
  app.add_option("SPEC", a.spec, "job spec (.yaml/.json)")->required();
  app.add_option("--steps", a.steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", a.warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--device", device, "cuda or cpu")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--micro-batch-size", a.micro_batch_size, "samples per micro-batch (the spec's)")
      ->check(CLI::PositiveNumber);
  app.add_option("--micro-batches", a.micro_batches, "micro-batches per step (the spec's)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--deterministic", a.deterministic,
               "CUDA: bitwise reproducible kernels, to time what they cost");
  CLI11_PARSE(app, argc, argv);
  a.cuda = device == "cuda";
  const absl::Status status = mimo::Run(a);
  if (!status.ok()) {
    std::cerr << "error: " << status << "\n";
    return 1;
  }
  return 0;
}
