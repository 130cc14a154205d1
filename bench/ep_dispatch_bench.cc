// Expert-parallel dispatch + combine of the MoE token dispatcher over NCCL against NCCL's own
// all-to-all of the same bytes, one thread per GPU of this host (issue 6: EP=2 on two NVLink
// GPUs at 90% or more of the all-to-all's bus bandwidth).
//
//   ep_dispatch_bench [--gpus N] [--tokens T] [--hidden C] [--experts E] [--top-k K] [--iters I]
//
// Each rank routes T tokens (bf16 rows of width C) to k distinct experts drawn uniformly (each
// rank holds E / N of them), then times I steps of MoeTokenDispatcher::Dispatch followed by
// Combine of the dispatched rows (identity experts): two all-to-alls of the routed rows plus the
// dispatcher's own work (routing metadata exchange, permutation, padding, host synchronizations
// for the counts). Against it, in the same run, I pairs of communicator AllToAll calls moving
// the same send buffer (S = T * k rows, equal blocks per peer). Prints one markdown row: bytes
// per all-to-all, time per step, and bus bandwidth as nccl-tests defines it for all-to-all
// (2 all-to-alls x S x C x 2 bytes / time x (N - 1) / N) for both, and their ratio. Defaults: the
// Mixtral-style layer of bench/torch_moe.py (C 4096, E 8, k 2) at 32768 tokens per rank: 256 MiB
// per all-to-all.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/time/clock.h"
#include "comm/in_memory_store.h"
#include "comm/nccl_communicator.h"
#include "common/bfloat16.h"
#include "kernels/cuda_ops.h"
#include "mimo/moe_token_dispatcher.h"

namespace mimo {
namespace {

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "ep_dispatch_bench: %s: %s\n", what, status.ToString().c_str());
    std::exit(1);
  }
}

void CheckCuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "ep_dispatch_bench: %s: %s\n", what, cudaGetErrorName(e));
    std::exit(1);
  }
}

template <typename T>
T Take(absl::StatusOr<T> v, const char* what) {
  Check(v.status(), what);
  return *std::move(v);
}

struct Options {
  int gpus = 2;
  int64_t tokens = 32768;
  int64_t hidden = 4096;
  int64_t experts = 8;
  int64_t top_k = 2;
  int iters = 10;
};

// A device tensor holding `host` (bf16 bits, fp32 or int32 values).
template <typename T>
kernels::Tensor Upload(kernels::Ops& ops, const std::vector<T>& host, const kernels::Shape& shape,
                       kernels::DType dtype) {
  kernels::Tensor t =
      Take(kernels::Tensor::Empty(shape, dtype, ops.allocator(), ops.stream()), "Tensor::Empty");
  Check(ops.CopyFromHost(t.data(), host.data(), t.nbytes()), "CopyFromHost");
  return t;
}

// One rank: its ops, communicator, dispatcher and inputs.
struct Rank {
  std::unique_ptr<kernels::Ops> ops;
  std::unique_ptr<comm::NcclCommunicator> ep;
  std::optional<MoeTokenDispatcher> dispatcher;
  kernels::Tensor x, indices, probs, send, recv;
};

void Setup(const Options& o, int rank, comm::KeyValueStore& store, Rank& r) {
  CheckCuda(cudaSetDevice(rank), "cudaSetDevice");
  r.ops = Take(kernels::NewCudaOps({.device = rank}), "NewCudaOps");
  std::vector<int> members(o.gpus);
  std::iota(members.begin(), members.end(), 0);
  r.ep = Take(comm::NcclCommunicator::Connect("ep", members, rank, store, rank, absl::Seconds(120)),
              "NcclCommunicator::Connect");
  r.dispatcher.emplace(Take(MoeTokenDispatcher::Create({.experts = o.experts,
                                                        .top_k = o.top_k,
                                                        .hidden = o.hidden,
                                                        .align = 16,
                                                        .ep = r.ep.get()}),
                            "MoeTokenDispatcher::Create"));
  std::mt19937 random(1234 + rank);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::vector<uint16_t> x(o.tokens * o.hidden);
  for (uint16_t& v : x) v = FloatToBFloat16(value(random));
  std::vector<int32_t> indices(o.tokens * o.top_k);
  std::vector<int32_t> experts(o.experts);
  std::iota(experts.begin(), experts.end(), 0);
  for (int64_t t = 0; t < o.tokens; ++t) {
    std::shuffle(experts.begin(), experts.end(), random);
    std::copy_n(experts.begin(), o.top_k, indices.begin() + t * o.top_k);
  }
  const std::vector<float> probs(o.tokens * o.top_k, 1.0f / static_cast<float>(o.top_k));
  r.x = Upload(*r.ops, x, {o.tokens, o.hidden}, kernels::DType::kBF16);
  r.indices = Upload(*r.ops, indices, {o.tokens, o.top_k}, kernels::DType::kI32);
  r.probs = Upload(*r.ops, probs, {o.tokens, o.top_k}, kernels::DType::kF32);
  const kernels::Shape rows = {o.tokens * o.top_k, o.hidden};
  r.send =
      Take(kernels::Tensor::Empty(rows, kernels::DType::kBF16, r.ops->allocator(), r.ops->stream()),
           "Tensor::Empty");
  r.recv =
      Take(kernels::Tensor::Empty(rows, kernels::DType::kBF16, r.ops->allocator(), r.ops->stream()),
           "Tensor::Empty");
  Check(r.ops->SetZero(r.send.data(), r.send.nbytes()), "SetZero");
  Check(r.ops->Synchronize(), "Synchronize");
}

// One dispatch + combine through the layer's dispatcher; rows sent to other ranks in `crossed`.
void LayerStep(Rank& r, int64_t* crossed) {
  const StepContext ctx{.ops = r.ops.get()};
  MoeDispatched d = Take(r.dispatcher->Dispatch(ctx, r.x, r.indices, r.probs), "Dispatch");
  const kernels::Tensor y = Take(r.dispatcher->Combine(ctx, d.state, d.rows), "Combine");
  (void)y;
  Check(r.ops->Synchronize(), "Synchronize");
  if (crossed != nullptr) {
    *crossed = 0;
    for (size_t p = 0; p < d.state.send_rows.size(); ++p) {
      if (static_cast<int>(p) != r.ep->rank())
        *crossed += static_cast<int64_t>(d.state.send_rows[p]);
    }
  }
}

// Two all-to-alls of the whole send buffer in equal blocks, through the same communicator.
void NcclStep(const Options& o, Rank& r) {
  const size_t per_peer = static_cast<size_t>(o.tokens * o.top_k / o.gpus * o.hidden);
  const std::vector<size_t> counts(o.gpus, per_peer);
  for (int i = 0; i < 2; ++i) {
    Check(r.ep->AllToAll(r.send.data(), counts, r.recv.data(), counts, comm::DataType::kBFloat16),
          "AllToAll");
  }
}

int Main(const Options& o) {
  int visible = 0;
  if (cudaGetDeviceCount(&visible) != cudaSuccess || visible < o.gpus || o.gpus < 2) {
    std::fprintf(stderr, "ep_dispatch_bench: needs %d GPUs (>= 2), %d visible\n", o.gpus, visible);
    return 2;
  }
  if (o.experts % o.gpus != 0 || o.top_k > o.experts || (o.tokens * o.top_k) % o.gpus != 0) {
    std::fprintf(stderr, "ep_dispatch_bench: experts must split over the GPUs, top-k <= experts\n");
    return 2;
  }
  cudaDeviceProp prop{};
  CheckCuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  comm::InMemoryStore store;
  std::vector<Rank> ranks(o.gpus);
  {
    std::vector<std::thread> threads;
    for (int i = 0; i < o.gpus; ++i) threads.emplace_back([&, i] { Setup(o, i, store, ranks[i]); });
    for (std::thread& t : threads) t.join();
  }
  // Seconds per step (slowest rank) of the layer's path and of the bare all-to-alls.
  double seconds[2] = {0, 0};
  std::vector<int64_t> crossed(o.gpus, 0);
  for (int bare = 0; bare < 2; ++bare) {
    std::barrier sync(o.gpus);
    std::vector<double> took(o.gpus);
    std::vector<std::thread> threads;
    for (int i = 0; i < o.gpus; ++i) {
      threads.emplace_back([&, i] {
        CheckCuda(cudaSetDevice(i), "cudaSetDevice");
        Rank& r = ranks[i];
        const auto step = [&] {
          if (bare) {
            NcclStep(o, r);
          } else {
            LayerStep(r, nullptr);
          }
        };
        for (int w = 0; w < 3; ++w) step();  // Warm-up (plans, buffers, NCCL channels).
        if (!bare) LayerStep(r, &crossed[i]);
        sync.arrive_and_wait();
        const absl::Time start = absl::Now();
        for (int it = 0; it < o.iters; ++it) step();
        took[i] = absl::ToDoubleSeconds(absl::Now() - start) / o.iters;
      });
    }
    for (std::thread& t : threads) t.join();
    seconds[bare] = *std::max_element(took.begin(), took.end());
  }
  const double rows = static_cast<double>(o.tokens * o.top_k);
  const double bytes = rows * static_cast<double>(o.hidden) * 2;  // One all-to-all's buffer.
  const double factor = static_cast<double>(o.gpus - 1) / o.gpus;
  const auto busbw = [&](double s) { return 2 * bytes / s / 1e9 * factor; };
  std::printf(
      "# %d x %s, %lld tokens per rank, hidden %lld, %lld experts, top-%lld, bf16; rows "
      "sent to other ranks per dispatch:",
      o.gpus, prop.name, static_cast<long long>(o.tokens), static_cast<long long>(o.hidden),
      static_cast<long long>(o.experts), static_cast<long long>(o.top_k));
  for (int64_t c : crossed) std::printf(" %lld", static_cast<long long>(c));
  std::printf(" (of %.0f)\n", rows);
  std::printf(
      "| bytes per all-to-all | dispatch + combine | busbw GB/s | 2 NCCL all-to-alls | "
      "busbw GB/s | layer / NCCL |\n| --- | --- | --- | --- | --- | --- |\n");
  std::printf("| %.0f | %.1f us | %.1f | %.1f us | %.1f | %.2f |\n", bytes, seconds[0] * 1e6,
              busbw(seconds[0]), seconds[1] * 1e6, busbw(seconds[1]),
              busbw(seconds[0]) / busbw(seconds[1]));
  return 0;
}

}  // namespace
}  // namespace mimo

int main(int argc, char** argv) {
  CLI::App app("Times the MoE dispatcher's expert-parallel dispatch + combine against NCCL.");
  mimo::Options o;
  app.add_option("--gpus", o.gpus, "GPUs (ranks of the EP group)")->check(CLI::Range(2, 64));
  app.add_option("--tokens", o.tokens, "tokens per rank")->check(CLI::PositiveNumber);
  app.add_option("--hidden", o.hidden, "hidden size")->check(CLI::PositiveNumber);
  app.add_option("--experts", o.experts, "routed experts in all")->check(CLI::PositiveNumber);
  app.add_option("--top-k", o.top_k, "experts per token")->check(CLI::PositiveNumber);
  app.add_option("--iters", o.iters, "timed steps")->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);
  return mimo::Main(o);
}
