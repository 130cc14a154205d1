// CUDA graphs: the work one piece of code enqueues on a stream, captured once and replayed with a
// single launch (no host work per kernel), as long as that code never synchronizes with the host.
#pragma once

#include <cuda_runtime_api.h>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "kernels/allocator.h"
#include "kernels/ops.h"

namespace mimo::kernels {

class CudaGraph {
 public:
  // Runs `enqueue` with `stream` (a cudaStream_t) capturing, in relaxed mode (allocations are
  // allowed; anything that waits for the stream fails). What it enqueues is not run now. Returns
  // enqueue's error, or the capture's when it enqueued something a graph cannot hold (a host
  // synchronization ends the capture with an error naming the call); the stream is out of
  // capture mode again either way.
  //
  // A replay repeats what the capture enqueued with the values the host had then (sizes, the
  // packed sequences' buffers, scalars such as a loss scale): new inputs go into the same device
  // buffers, with the same shapes. Replays read and write the addresses the capture saw: the caller
  // keeps every buffer they use allocated, and away from other work while the graph may run. This
  // form is for launches on buffers of the caller's: nothing enqueue allocates is protected.
  static absl::StatusOr<CudaGraph> Capture(StreamHandle stream,
                                           absl::FunctionRef<absl::Status()> enqueue);
  // As above on `ops`' stream, with a private pool of ops' allocator (Allocator::BeginPrivatePool)
  // open during the capture: what enqueue allocates from it comes from the pool's own segments,
  // and what was allocated on ops' stream and is freed during the capture (a step's temporaries,
  // tensors the step replaced) is handed to no other request until the graph is destroyed, so
  // other work may use the allocator between and beside replays. Buffers made before the capture
  // and freed after it are not covered: keep the graph's inputs while it lives. The tensors enqueue
  // leaves behind (outputs, gradients) are the replays' too: keep them to read each replay's
  // results. Destroying the graph returns the pool to the cache of ops' stream: replays enqueued on
  // another stream must have finished by then. `ops` must outlive the graph. The allocator's error
  // when it has no private pools (the CPU's).
  static absl::StatusOr<CudaGraph> Capture(Ops& ops, absl::FunctionRef<absl::Status()> enqueue);
  CudaGraph(CudaGraph&& other) noexcept;
  CudaGraph& operator=(CudaGraph&& other) noexcept;
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  ~CudaGraph();

  // Enqueues one run of the captured work on `stream`.
  absl::Status Replay(StreamHandle stream) const;
  // Kernels, copies and other nodes captured.
  size_t nodes() const { return nodes_; }

 private:
  CudaGraph(cudaGraph_t graph, cudaGraphExec_t exec, size_t nodes)
      : graph_(graph), exec_(exec), nodes_(nodes) {}
  void Reset();
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  size_t nodes_ = 0;
  Allocator* pool_owner_ = nullptr;  // The private pool the graph's memory came from, if any.
  Allocator::PoolId pool_ = 0;
};

}  // namespace mimo::kernels
