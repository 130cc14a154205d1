// Times the training step of a job spec's whole model on two ranks split four ways, for the
// model-parallel comparisons of the same model and global batch: dp 2 (the micro-batches split
// over two replicas), tp 2 (sequence parallel, the MoE experts split over the tp members), pp 2
// (1F1B) and pp 2 x vpp 2 (interleaved; the language layers must divide by 4). Ranks are threads,
// one device each: cuda:0 and cuda:1 over NCCL, or the CPU over Gloo (a smoke run).
//   parallel_bench SPEC [--layouts dp,tp,pp,vpp] [--steps N] [--warmup W] [--device cuda|cpu]
//                  [--language-only]
// Per layout and rank: the median step time and the share of the step spent inside each group's
// communicator calls (they block until done, so this counts the transfer and the wait for the
// peer); for the pipelines the measured bubble, the larger of the two ranks' share of the step
// spent in the pipeline's receives, beside the formula's (pp - 1) / (vpp m + pp - 1). The
// gradient reduction does not overlap the backward (overlap_grad_reduce off, as on GPUs with tp
// or pp). A layout that fails is reported at once (its peer's communicators aborted, so it does
// not wait out the timeout) and the next one runs; the exit status is then 1.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "common/status_macros.h"
#include "mimo/pipeline_schedule.h"
#include "tools/mimoctl/spec_file.h"
#include "worker/model_spec.h"
#include "worker/train_job.h"
#include "worker/trainer.h"
#if MIMO_PARALLEL_BENCH_CUDA
#include "kernels/cuda_ops.h"
#include "kernels/device_info.h"
#endif

namespace mimo {
namespace {

using Clock = std::chrono::steady_clock;

// Forwards every call to `inner`, adding the seconds it took to `seconds` (receives apart).
class TimedCommunicator final : public comm::Communicator {
 public:
  explicit TimedCommunicator(comm::Communicator* inner) : inner_(inner) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  absl::Status AllReduce(void* data, size_t count, comm::DataType type,
                         comm::ReduceOp op) override {
    return Time([&] { return inner_->AllReduce(data, count, type, op); });
  }
  absl::Status ReduceScatter(const void* input, void* output, size_t count, comm::DataType type,
                             comm::ReduceOp op) override {
    return Time([&] { return inner_->ReduceScatter(input, output, count, type, op); });
  }
  absl::Status AllGather(const void* input, void* output, size_t count,
                         comm::DataType type) override {
    return Time([&] { return inner_->AllGather(input, output, count, type); });
  }
  absl::Status AllToAll(const void* input, absl::Span<const size_t> send_counts, void* output,
                        absl::Span<const size_t> recv_counts, comm::DataType type) override {
    return Time([&] { return inner_->AllToAll(input, send_counts, output, recv_counts, type); });
  }
  absl::Status Broadcast(void* data, size_t count, comm::DataType type, int root) override {
    return Time([&] { return inner_->Broadcast(data, count, type, root); });
  }
  absl::Status Send(const void* data, size_t count, comm::DataType type, int peer) override {
    return Time([&] { return inner_->Send(data, count, type, peer); });
  }
  absl::Status Recv(void* data, size_t count, comm::DataType type, int peer) override {
    return Time([&] { return inner_->Recv(data, count, type, peer); }, &recv_seconds);
  }
  absl::Status Barrier() override {
    return Time([&] { return inner_->Barrier(); });
  }
  void Abort() override { inner_->Abort(); }

  double seconds = 0;       // In every call.
  double recv_seconds = 0;  // In receives (also in `seconds`).

 private:
  template <typename F>
  absl::Status Time(F call, double* also = nullptr) {
    const auto start = Clock::now();
    absl::Status status = call();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    seconds += s;
    if (also != nullptr) *also += s;
    return status;
  }
  comm::Communicator* inner_;
};

struct Args {
  std::string spec;
  std::vector<std::string> layouts = {"dp", "tp", "pp", "vpp"};
  int steps = 10;
  int warmup = 3;
  bool cuda = true;
  // The language model alone (the spec's encoders dropped, their placeholders not packed): equal
  // pipeline stages, so the measured bubble can be held against the formula, which assumes them.
  bool language_only = false;
};

// The two ranks' process groups while a layout runs: a rank that fails aborts both, so its peer
// returns from the call it waits in instead of waiting out the timeout.
class LayoutGroups {
 public:
  void Add(comm::ProcessGroups* groups) {
    std::lock_guard<std::mutex> lock(mu_);
    live_.push_back(groups);
    if (failed_) groups->AbortAll();
  }
  void Remove(comm::ProcessGroups* groups) {
    std::lock_guard<std::mutex> lock(mu_);
    live_.erase(std::remove(live_.begin(), live_.end(), groups), live_.end());
  }
  void Fail() {
    std::lock_guard<std::mutex> lock(mu_);
    failed_ = true;
    for (comm::ProcessGroups* g : live_) g->AbortAll();
  }

 private:
  std::mutex mu_;
  std::vector<comm::ProcessGroups*> live_;  // Guarded by mu_.
  bool failed_ = false;                     // Guarded by mu_.
};

// What one rank measured over the timed steps.
struct RankResult {
  absl::Status status;
  std::vector<double> seconds;               // Per step.
  std::map<std::string, double> group_time;  // Per group kind, summed over the steps.
  double pipeline_recv = 0;                  // In the pp group's receives.
  int64_t micro_batches = 0;
};

RankResult RunRank(const Args& a, const std::string& layout, const v1::JobSpec& spec, int rank,
                   comm::KeyValueStore& store, LayoutGroups& live) {
  RankResult r;
  std::unique_ptr<comm::ProcessGroups> groups;
  r.status = [&]() -> absl::Status {
    const std::vector<std::string> kinds = layout == "dp" ? std::vector<std::string>{"dp"}
                                           : layout == "tp"
                                               ? std::vector<std::string>{"tp", "ep"}
                                               : std::vector<std::string>{"pp", "embd"};
    std::vector<comm::GroupSpec> specs;
    for (const std::string& k : kinds) specs.push_back({.kind = k, .members = {0, 1}});
    const comm::ProcessGroupsOptions po{
        .rank = rank, .timeout = absl::Seconds(60), .hostname = "127.0.0.1", .cuda_device = rank};
    std::unique_ptr<kernels::Ops> ops;
    std::string device = "cpu";
    if (a.cuda) {
#if MIMO_PARALLEL_BENCH_CUDA
      MIMO_ASSIGN_OR_RETURN(groups, comm::ProcessGroups::CreateNccl(specs, store, po));
      MIMO_ASSIGN_OR_RETURN(ops, kernels::NewCudaOps({.device = rank}));
      device = kernels::ListCudaDevices().devices.at(rank).name;
#else
      return absl::FailedPreconditionError("built without CUDA: use --device cpu");
#endif
    } else {
      MIMO_ASSIGN_OR_RETURN(groups, comm::ProcessGroups::CreateGloo(specs, store, po));
      ops = kernels::NewCpuOps();
    }
    live.Add(groups.get());
    std::map<std::string, std::unique_ptr<TimedCommunicator>> timed;
    for (const std::string& k : kinds) {
      timed[k] = std::make_unique<TimedCommunicator>(groups->Get(k));
    }
    const kernels::DType dtype = worker::ComputeDType(spec.training().precision(), a.cuda);
    MIMO_ASSIGN_OR_RETURN(MimoModelConfig config, worker::MimoModelConfigFromSpec(spec, dtype));
    if (a.language_only) {
      config.vision.reset();
      config.audio.reset();
    }
    MIMO_ASSIGN_OR_RETURN(worker::TrainerOptions o,
                          worker::TrainerOptionsFromSpec(spec, layout == "dp" ? 2 : 1));
    o.overlap_grad_reduce = false;
    if (layout == "dp") o.dp = timed["dp"].get();
    if (layout == "tp") {
      o.groups.tp = timed["tp"].get();
      o.groups.ep = timed["ep"].get();
    }
    if (layout == "pp" || layout == "vpp") {
      o.pp = timed["pp"].get();
      if (config.language.share_embeddings_and_output_weights) o.embd = timed["embd"].get();
      o.virtual_stages = layout == "vpp" ? 2 : 1;
    }
    r.micro_batches = o.micro_batches;
    MIMO_ASSIGN_OR_RETURN(auto trainer, worker::Trainer::Create(*ops, config, o));
    for (int s = 1; s <= a.warmup + a.steps; ++s) {
      std::map<std::string, double> before;
      for (const auto& [k, t] : timed) before[k] = t->seconds;
      const double recv_before = layout == "dp" || layout == "tp" ? 0 : timed["pp"]->recv_seconds;
      MIMO_ASSIGN_OR_RETURN(const worker::StepMetrics m, trainer->Step());
      if (s <= a.warmup) continue;
      r.seconds.push_back(m.seconds);
      for (const auto& [k, t] : timed) r.group_time[k] += t->seconds - before[k];
      if (layout == "pp" || layout == "vpp") {
        r.pipeline_recv += timed["pp"]->recv_seconds - recv_before;
      }
    }
    if (rank == 0) {
      std::cout << absl::StrFormat("%s: 2 ranks on %s, %s, %d micro-batches a rank%s\n", layout,
                                   device, kernels::DTypeName(dtype), o.micro_batches,
                                   a.language_only ? ", the language model alone" : "");
    }
    return absl::OkStatus();
  }();
  if (!r.status.ok()) {
    std::cerr << absl::StrFormat("%s, rank %d: %s\n", layout, rank, r.status.ToString())
              << std::flush;
    live.Fail();
  }
  if (groups != nullptr) live.Remove(groups.get());
  return r;
}

// Every layout in turn; the first failure (the others still run).
absl::Status Run(const Args& a) {
  MIMO_ASSIGN_OR_RETURN(const v1::JobSpec spec, tools::ReadJobSpecFile(a.spec));
  absl::Status first_error;
  for (const std::string& layout : a.layouts) {
    std::vector<RankResult> results(2);
    comm::InMemoryStore store;
    LayoutGroups live;
    std::vector<std::thread> threads;
    for (int rank = 0; rank < 2; ++rank) {
      threads.emplace_back(
          [&, rank] { results[rank] = RunRank(a, layout, spec, rank, store, live); });
    }
    for (std::thread& t : threads) t.join();
    if (!results[0].status.ok() || !results[1].status.ok()) {
      // The cause, rather than the peer's Cancelled from the abort.
      absl::Status s = results[0].status.ok() ? results[1].status : results[0].status;
      for (const RankResult& r : results) {
        if (!r.status.ok() && !absl::IsCancelled(r.status)) s = r.status;
      }
      std::cout << absl::StrFormat("%s: failed (%s)\n", layout, s.ToString()) << std::flush;
      first_error.Update(absl::Status(s.code(), absl::StrCat(layout, ": ", s.message())));
      continue;
    }
    double bubble = 0;
    for (int rank = 0; rank < 2; ++rank) {
      const RankResult& r = results[rank];
      std::vector<double> sorted = r.seconds;
      std::sort(sorted.begin(), sorted.end());
      double total = 0;
      for (double s : r.seconds) total += s;
      std::vector<std::string> shares;
      for (const auto& [k, t] : r.group_time) {
        shares.push_back(absl::StrFormat("%s %.1f%%", k, 100 * t / total));
      }
      bubble = std::max(bubble, r.pipeline_recv / total);
      std::cout << absl::StrFormat("  rank %d: median step %.1f ms | in communicator calls: %s\n",
                                   rank, 1e3 * sorted[sorted.size() / 2],
                                   absl::StrJoin(shares, ", "));
    }
    if (layout == "pp" || layout == "vpp") {
      std::cout << absl::StrFormat(
          "  bubble: %.1f%% of the step in pipeline receives (formula (pp-1)/(vpp m+pp-1): "
          "%.1f%%)\n",
          100 * bubble,
          100 * PipelineBubbleFraction(2, results[0].micro_batches, layout == "vpp" ? 2 : 1));
    }
    std::cout << std::flush;
  }
  return first_error;
}

}  // namespace
}  // namespace mimo

int main(int argc, char** argv) {
  CLI::App app("Times a spec's training step on two ranks: dp 2, tp 2, pp 2 and pp 2 x vpp 2");
  mimo::Args a;
  std::string device = "cuda", layouts = "dp,tp,pp,vpp";
  app.add_option("SPEC", a.spec, "job spec (.yaml/.json)")->required();
  app.add_option("--layouts", layouts, "comma-separated: dp, tp, pp, vpp");
  app.add_option("--steps", a.steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", a.warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--device", device, "cuda or cpu")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_flag("--language-only", a.language_only,
               "drop the encoders: equal pipeline stages, for the bubble against the formula");
  CLI11_PARSE(app, argc, argv);
  a.cuda = device == "cuda";
  a.layouts = absl::StrSplit(layouts, ',', absl::SkipEmpty());
  for (const std::string& l : a.layouts) {
    if (l != "dp" && l != "tp" && l != "pp" && l != "vpp") {
      std::cerr << "error: unknown layout '" << l << "' (dp, tp, pp, vpp)\n";
      return 2;
    }
  }
  const absl::Status status = mimo::Run(a);
  if (!status.ok()) {
    std::cerr << "error: " << status << "\n";
    return 1;
  }
  return 0;
}
