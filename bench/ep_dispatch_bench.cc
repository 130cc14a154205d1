// Expert-parallel dispatch + combine of the MoE token dispatcher over NCCL against NCCL's own
// all-to-all of the same bytes, one thread per GPU of this host (issue 6: EP=2 on two NVLink
// GPUs at 90% or more of NCCL's all-to-all bus bandwidth).
//
//   ep_dispatch_bench [--gpus N] [--tokens T] [--hidden C] [--experts E] [--top-k K]
//                     [--zipf S] [--iters I]
//
// Each rank routes T tokens (bf16 rows of width C) to k distinct experts (uniformly, or with
// --zipf S expert e drawn with weight 1 / (e + 1)^S; each rank holds E / N experts), then times I
// steps of MoeTokenDispatcher::Dispatch followed by Combine of the dispatched rows (identity
// experts): two all-to-alls of the routed rows plus the dispatcher's own work (the count
// exchange, permutation, padding, host synchronizations for the counts). Against it, in the same
// run, with the same send buffer (S = T * k rows in equal blocks per peer): 2 x I all-to-alls as
// NCCL runs them (grouped ncclSend/ncclRecv on a stream, one wait at the end, as nccl-tests and
// comm_bench time them), and 2 x I through the communicator (which waits for each call). Bus
// bandwidth as nccl-tests defines it for all-to-all: 2 x S x C x 2 bytes / time x (N - 1) / N.
// The gap between the layer and NCCL is the dispatcher's overhead and the routing's imbalance
// (the rows each rank sends to the others are printed), not NCCL's efficiency. Defaults: the
// Mixtral-style layer of bench/torch_moe.py (C 4096, E 8, k 2) at 16384 tokens per rank: 256 MiB
// per all-to-all, the size of the NCCL figure. Run with NCCL_NVLS_ENABLE=0 on NVLink.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <barrier>
#include <cmath>
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

void CheckNccl(ncclResult_t e, const char* what) {
  if (e != ncclSuccess) {
    std::fprintf(stderr, "ep_dispatch_bench: %s: %s\n", what, ncclGetErrorString(e));
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
  int64_t tokens = 16384;
  int64_t hidden = 4096;
  int64_t experts = 8;
  int64_t top_k = 2;
  double zipf = 0;  // 0: uniform routing.
  int iters = 20;
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
  ncclComm_t raw = nullptr;  // A plain NCCL communicator of the same GPUs.
  cudaStream_t stream = nullptr;
  std::optional<MoeTokenDispatcher> dispatcher;
  kernels::Tensor x, indices, probs, send, recv;
};

void Setup(const Options& o, int rank, comm::KeyValueStore& store, Rank& r) {
  CheckCuda(cudaSetDevice(rank), "cudaSetDevice");
  CheckCuda(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  r.ops = Take(kernels::NewCudaOps({.device = rank}), "NewCudaOps");
  std::vector<int> members(o.gpus);
  std::iota(members.begin(), members.end(), 0);
  r.ep = Take(comm::NcclCommunicator::Connect("ep", members, rank, store, rank, absl::Seconds(60)),
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
  // k distinct experts per token, drawn one after another by weight without replacement.
  std::vector<double> weight(o.experts);
  for (int64_t e = 0; e < o.experts; ++e) weight[e] = std::pow(1.0 / (e + 1), o.zipf);
  std::vector<int32_t> indices(o.tokens * o.top_k);
  for (int64_t t = 0; t < o.tokens; ++t) {
    std::vector<double> left = weight;
    for (int64_t j = 0; j < o.top_k; ++j) {
      std::discrete_distribution<int32_t> pick(left.begin(), left.end());
      const int32_t e = pick(random);
      indices[t * o.top_k + j] = e;
      left[e] = 0;
    }
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

size_t PerPeer(const Options& o) {
  return static_cast<size_t>(o.tokens * o.top_k / o.gpus * o.hidden);
}

// Two all-to-alls of the whole send buffer in equal blocks, through the communicator.
void CommunicatorStep(const Options& o, Rank& r) {
  const std::vector<size_t> counts(o.gpus, PerPeer(o));
  for (int i = 0; i < 2; ++i) {
    Check(r.ep->AllToAll(r.send.data(), counts, r.recv.data(), counts, comm::DataType::kBFloat16),
          "AllToAll");
  }
}

// Two all-to-alls as NCCL runs them: grouped sends and receives, enqueued without waiting.
void NcclEnqueue(const Options& o, Rank& r) {
  const size_t per_peer = PerPeer(o);
  const auto* in = static_cast<const uint16_t*>(r.send.data());
  auto* out = static_cast<uint16_t*>(r.recv.data());
  for (int i = 0; i < 2; ++i) {
    CheckNccl(ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < o.gpus; ++p) {
      CheckNccl(ncclSend(in + p * per_peer, per_peer, ncclBfloat16, p, r.raw, r.stream),
                "ncclSend");
      CheckNccl(ncclRecv(out + p * per_peer, per_peer, ncclBfloat16, p, r.raw, r.stream),
                "ncclRecv");
    }
    CheckNccl(ncclGroupEnd(), "ncclGroupEnd");
  }
}

int Main(const Options& o) {
  int visible = 0;
  if (cudaGetDeviceCount(&visible) != cudaSuccess || visible < o.gpus || o.gpus < 2) {
    std::fprintf(stderr, "ep_dispatch_bench: needs %d GPUs (>= 2), %d visible\n", o.gpus, visible);
    return 2;
  }
  if (o.experts % o.gpus != 0 || o.top_k > o.experts || (o.tokens * o.top_k) % o.gpus != 0) {
    std::fprintf(stderr,
                 "ep_dispatch_bench: the experts and the tokens x top-k must split evenly over the "
                 "GPUs, and top-k may not exceed the experts\n");
    return 2;
  }
  cudaDeviceProp prop{};
  CheckCuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  comm::InMemoryStore store;
  std::vector<Rank> ranks(o.gpus);
  std::vector<ncclComm_t> raw(o.gpus);
  std::vector<int> devices(o.gpus);
  std::iota(devices.begin(), devices.end(), 0);
  CheckNccl(ncclCommInitAll(raw.data(), o.gpus, devices.data()), "ncclCommInitAll");
  for (int i = 0; i < o.gpus; ++i) ranks[i].raw = raw[i];
  {
    std::vector<std::thread> threads;
    for (int i = 0; i < o.gpus; ++i) threads.emplace_back([&, i] { Setup(o, i, store, ranks[i]); });
    for (std::thread& t : threads) t.join();
  }
  // Seconds per step (slowest rank): the layer's path, NCCL's all-to-alls, the communicator's.
  enum Path { kLayer, kNccl, kCommunicator };
  double seconds[3] = {0, 0, 0};
  std::vector<int64_t> crossed(o.gpus, 0);
  for (const Path path : {kLayer, kNccl, kCommunicator}) {
    std::barrier sync(o.gpus);
    std::vector<double> took(o.gpus);
    std::vector<std::thread> threads;
    for (int i = 0; i < o.gpus; ++i) {
      threads.emplace_back([&, i] {
        CheckCuda(cudaSetDevice(i), "cudaSetDevice");
        Rank& r = ranks[i];
        const auto steps = [&](int n) {
          for (int it = 0; it < n; ++it) {
            if (path == kLayer) LayerStep(r, nullptr);
            if (path == kNccl) NcclEnqueue(o, r);
            if (path == kCommunicator) CommunicatorStep(o, r);
          }
          if (path == kNccl) CheckCuda(cudaStreamSynchronize(r.stream), "cudaStreamSynchronize");
        };
        steps(3);  // Warm-up (plans, buffers, NCCL channels).
        if (path == kLayer) LayerStep(r, &crossed[i]);
        sync.arrive_and_wait();
        const absl::Time start = absl::Now();
        steps(o.iters);
        took[i] = absl::ToDoubleSeconds(absl::Now() - start) / o.iters;
      });
    }
    for (std::thread& t : threads) t.join();
    seconds[path] = *std::max_element(took.begin(), took.end());
  }
  const double rows = static_cast<double>(o.tokens * o.top_k);
  const double bytes = rows * static_cast<double>(o.hidden) * 2;  // One all-to-all's buffer.
  const double factor = static_cast<double>(o.gpus - 1) / o.gpus;
  const auto busbw = [&](double s) { return 2 * bytes / s / 1e9 * factor; };
  std::printf(
      "# %d x %s, %lld tokens per rank, hidden %lld, %lld experts, top-%lld, %s routing, "
      "bf16, %d steps; rows sent to other ranks per dispatch:",
      o.gpus, prop.name, static_cast<long long>(o.tokens), static_cast<long long>(o.hidden),
      static_cast<long long>(o.experts), static_cast<long long>(o.top_k),
      o.zipf > 0 ? "Zipf" : "uniform", o.iters);
  for (int64_t c : crossed) std::printf(" %lld", static_cast<long long>(c));
  std::printf(" (of %.0f)\n", rows);
  std::printf(
      "| bytes per all-to-all | dispatch + combine | busbw GB/s | 2 NCCL all-to-alls | "
      "busbw GB/s | 2 through the communicator | busbw GB/s | layer / NCCL | layer / "
      "communicator |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  std::printf("| %.0f | %.1f us | %.1f | %.1f us | %.1f | %.1f us | %.1f | %.2f | %.2f |\n", bytes,
              seconds[kLayer] * 1e6, busbw(seconds[kLayer]), seconds[kNccl] * 1e6,
              busbw(seconds[kNccl]), seconds[kCommunicator] * 1e6, busbw(seconds[kCommunicator]),
              seconds[kNccl] / seconds[kLayer], seconds[kCommunicator] / seconds[kLayer]);
  for (int i = 0; i < o.gpus; ++i) {
    CheckCuda(cudaSetDevice(i), "cudaSetDevice");
    CheckNccl(ncclCommDestroy(ranks[i].raw), "ncclCommDestroy");
    CheckCuda(cudaStreamDestroy(ranks[i].stream), "cudaStreamDestroy");
  }
  return 0;
}

}  // namespace
}  // namespace mimo

int main(int argc, char** argv) {
  // Line by line even into a pipe: a time limit that ends the run keeps the rows printed.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CLI::App app("Times the MoE dispatcher's expert-parallel dispatch + combine against NCCL.");
  mimo::Options o;
  app.add_option("--gpus", o.gpus, "GPUs (ranks of the EP group)")->check(CLI::Range(2, 64));
  app.add_option("--tokens", o.tokens, "tokens per rank")->check(CLI::PositiveNumber);
  app.add_option("--hidden", o.hidden, "hidden size")->check(CLI::PositiveNumber);
  app.add_option("--experts", o.experts, "routed experts in all")->check(CLI::PositiveNumber);
  app.add_option("--top-k", o.top_k, "experts per token")->check(CLI::PositiveNumber);
  app.add_option("--zipf", o.zipf, "routing skew: expert e drawn with weight 1 / (e + 1)^S")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--iters", o.iters, "timed steps")->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);
  return mimo::Main(o);
}
