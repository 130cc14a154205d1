// NCCL all-reduce and all-to-all bandwidth through comm::NcclCommunicator against the same NCCL
// calls made directly (the way nccl-tests times them), one thread per GPU of this host.
//
//   comm_bench [--gpus N] [--iters K] [--min-bytes B] [--max-bytes B]
//
// Prints one markdown row per (operation, size): algorithm bandwidth = bytes / time, bus
// bandwidth as nccl-tests defines it (all-reduce: x 2(n-1)/n; all-to-all: x (n-1)/n), for the
// direct NCCL loop and for the communicator. The direct loop enqueues K operations and waits
// once; the communicator waits for every call (its design: a dead peer becomes an error), so
// the gap at small sizes is that per-call wait.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/time/clock.h"
#include "comm/in_memory_store.h"
#include "comm/nccl_communicator.h"

namespace mimo::comm {
namespace {

#define BENCH_CHECK(call)                                                                       \
  do {                                                                                          \
    if (auto e = (call); e != 0) {                                                              \
      std::fprintf(stderr, "comm_bench: %s failed (%d) at %s:%d\n", #call, static_cast<int>(e), \
                   __FILE__, __LINE__);                                                         \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "comm_bench: %s: %s\n", what, status.ToString().c_str());
    std::exit(1);
  }
}

enum class Op { kAllReduce, kAllToAll };

struct Options {
  int gpus = 0;  // 0: every visible GPU.
  int iters = 20;
  size_t min_bytes = size_t{1} << 20;
  size_t max_bytes = size_t{1} << 30;
};

// Per-GPU state: a direct NCCL communicator, the wrapped one, and two device buffers.
struct Rank {
  ncclComm_t raw = nullptr;
  cudaStream_t stream = nullptr;
  std::unique_ptr<NcclCommunicator> wrapped;
  float* in = nullptr;
  float* out = nullptr;
};

// K direct NCCL calls on the rank's stream, then one wait.
void RunRaw(Op op, Rank& r, size_t count, int n, int iters) {
  for (int i = 0; i < iters; ++i) {
    if (op == Op::kAllReduce) {
      BENCH_CHECK(ncclAllReduce(r.in, r.in, count, ncclFloat32, ncclSum, r.raw, r.stream));
    } else {
      const size_t per_peer = count / n;
      BENCH_CHECK(ncclGroupStart());
      for (int p = 0; p < n; ++p) {
        BENCH_CHECK(ncclSend(r.in + p * per_peer, per_peer, ncclFloat32, p, r.raw, r.stream));
        BENCH_CHECK(ncclRecv(r.out + p * per_peer, per_peer, ncclFloat32, p, r.raw, r.stream));
      }
      BENCH_CHECK(ncclGroupEnd());
    }
  }
  BENCH_CHECK(cudaStreamSynchronize(r.stream));
}

// K calls through the communicator (each waits for its work).
void RunWrapped(Op op, Rank& r, size_t count, int n, int iters) {
  const std::vector<size_t> counts(n, count / n);
  for (int i = 0; i < iters; ++i) {
    if (op == Op::kAllReduce) {
      Check(r.wrapped->AllReduce(r.in, count, DataType::kFloat32, ReduceOp::kSum), "AllReduce");
    } else {
      Check(r.wrapped->AllToAll(r.in, counts, r.out, counts, DataType::kFloat32), "AllToAll");
    }
  }
}

int Main(const Options& options) {
  int visible = 0;
  if (cudaError_t e = cudaGetDeviceCount(&visible); e != cudaSuccess) {
    std::fprintf(stderr, "comm_bench: no CUDA device (%s)\n", cudaGetErrorName(e));
    return 2;
  }
  const int n = options.gpus > 0 ? options.gpus : visible;
  if (n < 2 || n > visible) {
    std::fprintf(stderr, "comm_bench: needs 2 or more GPUs (asked %d, %d visible)\n", n, visible);
    return 2;
  }
  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  int nccl_version = 0;
  BENCH_CHECK(ncclGetVersion(&nccl_version));
  std::printf("# %d x %s, NCCL %d, %d iterations per size, float32\n", n, prop.name, nccl_version,
              options.iters);

  std::vector<Rank> ranks(n);
  std::vector<ncclComm_t> raw(n);
  std::vector<int> devices(n);
  for (int i = 0; i < n; ++i) devices[i] = i;
  BENCH_CHECK(ncclCommInitAll(raw.data(), n, devices.data()));
  InMemoryStore store;
  std::vector<int> members(n);
  for (int i = 0; i < n; ++i) members[i] = i;
  {
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        Rank& r = ranks[i];
        BENCH_CHECK(cudaSetDevice(i));
        r.raw = raw[i];
        BENCH_CHECK(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking));
        BENCH_CHECK(cudaMalloc(&r.in, options.max_bytes));
        BENCH_CHECK(cudaMalloc(&r.out, options.max_bytes));
        BENCH_CHECK(cudaMemset(r.in, 0, options.max_bytes));
        absl::StatusOr<std::unique_ptr<NcclCommunicator>> c =
            NcclCommunicator::Connect("bench", members, i, store, i, absl::Seconds(120));
        Check(c.status(), "Connect");
        r.wrapped = *std::move(c);
      });
    }
    for (std::thread& t : threads) t.join();
  }

  std::printf(
      "| operation | bytes | NCCL direct: time | algbw GB/s | busbw GB/s | "
      "communicator: time | algbw GB/s | busbw GB/s | communicator / direct |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (Op op : {Op::kAllReduce, Op::kAllToAll}) {
    for (size_t bytes = options.min_bytes; bytes <= options.max_bytes; bytes *= 4) {
      const size_t count = bytes / sizeof(float) / n * n;  // All-to-all: equal blocks.
      const double actual = static_cast<double>(count * sizeof(float));
      double seconds[2] = {0, 0};
      for (int wrapped = 0; wrapped < 2; ++wrapped) {
        std::barrier sync(n);
        std::vector<double> took(n);
        std::vector<std::thread> threads;
        for (int i = 0; i < n; ++i) {
          threads.emplace_back([&, i] {
            BENCH_CHECK(cudaSetDevice(i));
            auto run = [&](int iters) {
              if (wrapped) {
                RunWrapped(op, ranks[i], count, n, iters);
              } else {
                RunRaw(op, ranks[i], count, n, iters);
              }
            };
            run(3);  // Warm-up.
            sync.arrive_and_wait();
            const absl::Time start = absl::Now();
            run(options.iters);
            took[i] = absl::ToDoubleSeconds(absl::Now() - start);
          });
        }
        for (std::thread& t : threads) t.join();
        seconds[wrapped] = *std::max_element(took.begin(), took.end()) / options.iters;
      }
      const double factor = op == Op::kAllReduce ? 2.0 * (n - 1) / n : 1.0 * (n - 1) / n;
      auto row = [&](double s) {
        const double algbw = actual / s / 1e9;
        return std::make_pair(algbw, algbw * factor);
      };
      const auto [raw_alg, raw_bus] = row(seconds[0]);
      const auto [wr_alg, wr_bus] = row(seconds[1]);
      std::printf("| %s | %.0f | %.1f us | %.1f | %.1f | %.1f us | %.1f | %.1f | %.2f |\n",
                  op == Op::kAllReduce ? "all-reduce" : "all-to-all", actual, seconds[0] * 1e6,
                  raw_alg, raw_bus, seconds[1] * 1e6, wr_alg, wr_bus, wr_bus / raw_bus);
      std::fflush(stdout);
    }
  }
  for (int i = 0; i < n; ++i) {
    BENCH_CHECK(cudaSetDevice(i));
    ranks[i].wrapped.reset();
    BENCH_CHECK(ncclCommDestroy(ranks[i].raw));
    BENCH_CHECK(cudaFree(ranks[i].in));
    BENCH_CHECK(cudaFree(ranks[i].out));
    BENCH_CHECK(cudaStreamDestroy(ranks[i].stream));
  }
  return 0;
}

}  // namespace
}  // namespace mimo::comm

int main(int argc, char** argv) {
  mimo::comm::Options options;
  CLI::App app{"comm_bench: NCCL bandwidth, direct and through comm::NcclCommunicator"};
  app.add_option("--gpus", options.gpus, "GPUs to use (0: all visible)")->check(CLI::Range(0, 64));
  app.add_option("--iters", options.iters, "Timed iterations per size")
      ->check(CLI::Range(1, 100000));
  app.add_option("--min-bytes", options.min_bytes, "Smallest message")->capture_default_str();
  app.add_option("--max-bytes", options.max_bytes, "Largest message")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (options.min_bytes < 1024 || options.min_bytes > options.max_bytes) {
    std::fprintf(stderr, "comm_bench: need 1024 <= --min-bytes <= --max-bytes\n");
    return 2;
  }
  return mimo::comm::Main(options);
}
