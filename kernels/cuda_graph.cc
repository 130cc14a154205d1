// CudaGraph: stream capture, instantiation and replay through checked CUDA calls.
#include "kernels/cuda_graph.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda_status.h"

namespace mimo::kernels {

absl::StatusOr<CudaGraph> CudaGraph::Capture(StreamHandle stream,
                                             absl::FunctionRef<absl::Status()> enqueue) {
  const auto s = static_cast<cudaStream_t>(stream);
  MIMO_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  const absl::Status enqueued = enqueue();
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(s, &graph);
  if (!enqueued.ok() || ended != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    (void)cudaGetLastError();  // The capture's error is reported below, not left behind.
    if (!enqueued.ok()) {
      return absl::Status(enqueued.code(),
                          absl::StrCat("during CUDA graph capture: ", enqueued.message()));
    }
    const absl::Status status = CudaStatus(ended, "cudaStreamEndCapture", __FILE__, __LINE__);
    return absl::Status(status.code(),
                        absl::StrCat("during CUDA graph capture (something enqueued could not be "
                                     "captured): ",
                                     status.message()));
  }
  size_t nodes = 0;
  cudaGraphExec_t exec = nullptr;
  absl::Status status = CudaStatus(cudaGraphGetNodes(graph, nullptr, &nodes), "cudaGraphGetNodes",
                                   __FILE__, __LINE__);
  if (status.ok()) {
    status = CudaStatus(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate", __FILE__,
                        __LINE__);
  }
  if (!status.ok()) {
    cudaGraphDestroy(graph);
    (void)cudaGetLastError();  // Not left behind for the next launch to report.
    return status;
  }
  return CudaGraph(graph, exec, nodes);
}

absl::StatusOr<CudaGraph> CudaGraph::Capture(Ops& ops, absl::FunctionRef<absl::Status()> enqueue) {
  Allocator& memory = ops.allocator();
  MIMO_ASSIGN_OR_RETURN(const Allocator::PoolId pool, memory.BeginPrivatePool(ops.stream()));
  absl::StatusOr<CudaGraph> graph = Capture(ops.stream(), enqueue);
  const absl::Status ended = memory.EndPrivatePool(ops.stream());
  if (!graph.ok() || !ended.ok()) {
    memory.ReleasePrivatePool(pool);  // Nothing captured will run.
    return graph.ok() ? ended : graph.status();
  }
  graph->pool_owner_ = &memory;
  graph->pool_ = pool;
  return graph;
}

CudaGraph::CudaGraph(CudaGraph&& other) noexcept
    : graph_(std::exchange(other.graph_, nullptr)),
      exec_(std::exchange(other.exec_, nullptr)),
      nodes_(other.nodes_),
      pool_owner_(std::exchange(other.pool_owner_, nullptr)),
      pool_(other.pool_) {}

CudaGraph& CudaGraph::operator=(CudaGraph&& other) noexcept {
  if (this != &other) {
    Reset();
    graph_ = std::exchange(other.graph_, nullptr);
    exec_ = std::exchange(other.exec_, nullptr);
    nodes_ = other.nodes_;
    pool_owner_ = std::exchange(other.pool_owner_, nullptr);
    pool_ = other.pool_;
  }
  return *this;
}

CudaGraph::~CudaGraph() { Reset(); }

void CudaGraph::Reset() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  if (graph_ != nullptr) cudaGraphDestroy(graph_);
  exec_ = nullptr;
  graph_ = nullptr;
  // The pool's blocks go to the cache of the capture's stream: later work there runs after any
  // replay enqueued on it (the header asks replays elsewhere to be waited for).
  if (pool_owner_ != nullptr) pool_owner_->ReleasePrivatePool(pool_);
  pool_owner_ = nullptr;
}

absl::Status CudaGraph::Replay(StreamHandle stream) const {
  if (exec_ == nullptr)
    return absl::FailedPreconditionError("CudaGraph: replay of a moved-from graph");
  const cudaError_t e = cudaGraphLaunch(exec_, static_cast<cudaStream_t>(stream));
  if (e != cudaSuccess) (void)cudaGetLastError();
  return CudaStatus(e, "cudaGraphLaunch", __FILE__, __LINE__);
}

}  // namespace mimo::kernels
