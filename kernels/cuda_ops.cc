// The CUDA Ops: every call makes the Ops' device current and enqueues the op's kernels on its
// stream; scratch comes from the caching allocator and goes back as soon as it is enqueued (the
// allocator hands it out again only to later work on the same stream).
#include "kernels/cuda_ops.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention_cudnn.h"
#include "kernels/cuda_allocator.h"
#include "kernels/cuda_device_guard.h"
#include "kernels/cuda_status.h"
#include "kernels/cuda_stream.h"
#include "kernels/grouped_gemm_tiles.h"
#include "kernels/pinned_staging.h"

namespace mimo::kernels {
namespace {

// Ops::RecordEvent's: a blocking-sync event on the Ops' stream (the waiting thread makes the
// Ops' device current first: Ops::UseDeviceOnThisThread).
class StreamEvent final : public Event {
 public:
  explicit StreamEvent(CudaEvent event) : event_(std::move(event)) {}
  absl::Status Wait() override { return event_.Synchronize(); }

 private:
  CudaEvent event_;
};

class CudaOps final : public Ops {
 public:
  CudaOps(int device, std::unique_ptr<CachingAllocator> allocator, CudaStream stream,
          std::unique_ptr<CublasLt> blas, std::unique_ptr<CudnnAttention> cudnn, bool deterministic)
      : device_(device),
        deterministic_(deterministic),
        allocator_(std::move(allocator)),
        stream_(std::move(stream)),
        blas_(std::move(blas)),
        cudnn_(std::move(cudnn)),
        staging_(device) {}

  Device device() const override { return Device::Cuda(device_); }
  Allocator& allocator() override { return *allocator_; }
  StreamHandle stream() const override { return stream_.get(); }
  absl::Status Synchronize() override { return stream_.Synchronize(); }
  absl::StatusOr<std::unique_ptr<Event>> RecordEvent() override {
    CudaDeviceGuard guard(device_);
    MIMO_ASSIGN_OR_RETURN(CudaEvent event, CudaEvent::Create(device_, /*timing=*/false));
    MIMO_RETURN_IF_ERROR(event.Record(stream_));
    return std::make_unique<StreamEvent>(std::move(event));
  }
  absl::Status UseDeviceOnThisThread() override {
    MIMO_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    return absl::OkStatus();
  }

  // Staged through pinned buffers (PinnedStaging): the host goes on while the copy waits its
  // turn in the stream.
  absl::Status CopyFromHost(void* dst, const void* host, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    if (dst == nullptr || host == nullptr) {
      return absl::InvalidArgumentError("Ops::CopyFromHost: null buffer");
    }
    CudaDeviceGuard guard(device_);
    return staging_.CopyToDevice(dst, host, bytes, stream_.get());
  }
  absl::Status CopyToHost(void* host, const void* src, size_t bytes) override {
    MIMO_RETURN_IF_ERROR(Memcpy(host, src, bytes, cudaMemcpyDeviceToHost, "CopyToHost"));
    return Synchronize();
  }
  absl::Status Copy(void* dst, const void* src, size_t bytes) override {
    return Memcpy(dst, src, bytes, cudaMemcpyDeviceToDevice, "Copy");
  }
  absl::Status SetZero(void* dst, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    if (dst == nullptr) return absl::InvalidArgumentError("Ops::SetZero: null buffer");
    CudaDeviceGuard guard(device_);
    MIMO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dst, 0, bytes, stream_.get()));
    return absl::OkStatus();
  }

  absl::Status Add(const AddParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchAdd(p, stream());
  }
  absl::Status Cast(const CastParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchCast(p, stream());
  }
  absl::Status Embedding(const EmbeddingParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchEmbedding(p, stream());
  }
  absl::Status EmbeddingBackward(const EmbeddingBackwardParams& p) override {
    CudaDeviceGuard guard(device_);
    MIMO_ASSIGN_OR_RETURN(Scratch scratch, Take(EmbeddingBackwardWorkspaceBytes(p.tokens, p.dim)));
    EmbeddingBackwardParams q = p;
    q.workspace = scratch.ptr;
    q.workspace_bytes = scratch.bytes;
    return LaunchEmbeddingBackward(q, stream());
  }
  absl::Status RmsNorm(const RmsNormParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchRmsNorm(p, stream());
  }
  absl::Status RmsNormBackward(const RmsNormBackwardParams& p) override {
    CudaDeviceGuard guard(device_);
    const size_t bytes = p.dweight != nullptr ? RmsNormBackwardWorkspaceBytes(p.rows, p.cols) : 0;
    MIMO_ASSIGN_OR_RETURN(Scratch scratch, Take(bytes));
    RmsNormBackwardParams q = p;
    q.workspace = scratch.ptr;
    q.workspace_bytes = scratch.bytes;
    return LaunchRmsNormBackward(q, stream());
  }
  absl::Status LayerNorm(const LayerNormParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchLayerNorm(p, stream());
  }
  absl::Status LayerNormBackward(const LayerNormBackwardParams& p) override {
    CudaDeviceGuard guard(device_);
    MIMO_ASSIGN_OR_RETURN(Scratch scratch, Take(LayerNormBackwardWorkspaceBytes(p.rows, p.cols)));
    LayerNormBackwardParams q = p;
    q.workspace = scratch.ptr;
    q.workspace_bytes = scratch.bytes;
    return LaunchLayerNormBackward(q, stream());
  }
  absl::Status Gemm(const GemmParams& p) override {
    CudaDeviceGuard guard(device_);
    return blas_->Gemm(p, stream());
  }
  absl::Status GemmBatch(absl::Span<const GemmParams> problems) override {
    CudaDeviceGuard guard(device_);
    return blas_->GemmBatch(problems, stream());
  }
  // Row blocks padded to 64 rows or more run as tiles through cuBLASLt (1.1-1.6x the grouped
  // kernel with 64-row tiles on an H100, more with longer ones: bench/RESULTS.md), the rest on
  // the grouped kernel.
  absl::Status GroupedGemm(const GroupedGemmParams& p) override {
    CudaDeviceGuard guard(device_);
    MIMO_RETURN_IF_ERROR(CheckGroupedGemm(p));
    if (GroupedGemmTilesApply(p)) {
      // Without room for the tables, or without a cuBLASLt algorithm: the grouped kernel.
      absl::StatusOr<Scratch> scratch = Take(GroupedGemmTilesWorkspaceBytes(p));
      if (scratch.ok()) {
        const absl::Status tiles = LaunchGroupedGemmTiles(p, scratch->ptr, *blas_, stream());
        if (!absl::IsFailedPrecondition(tiles)) return tiles;
      } else if (!absl::IsResourceExhausted(scratch.status())) {
        return scratch.status();
      }
    }
    return LaunchGroupedGemm(p, stream());
  }
  absl::Status Linear(const LinearParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchLinear(p, *blas_, stream());
  }
  absl::Status LinearBackward(const LinearBackwardParams& p) override {
    CudaDeviceGuard guard(device_);
    const size_t bytes = p.dbias != nullptr ? LinearBackwardWorkspaceBytes(p.tokens, p.out) : 0;
    MIMO_ASSIGN_OR_RETURN(Scratch scratch, Take(bytes));
    LinearBackwardParams q = p;
    q.workspace = scratch.ptr;
    q.workspace_bytes = scratch.bytes;
    return LaunchLinearBackward(q, *blas_, stream());
  }
  absl::Status Rope(const RopeParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchRope(p, stream());
  }
  // bf16 attention goes through cuDNN's fused attention where it takes the problem (1.6-2.4x our
  // kernels on long sequences on an H100, 1.1-1.2x on short ones: bench/RESULTS.md), the rest
  // through our kernels. Both keep the log-sum-exps in one layout, so either backward follows
  // either forward.
  absl::Status Attention(const AttentionParams& p) override {
    CudaDeviceGuard guard(device_);
    if (cudnn_ != nullptr && CudnnAttention::Handles(p.dtype, p.num_seqs, p.head_dim)) {
      const absl::StatusOr<size_t> bytes = cudnn_->ForwardWorkspaceBytes(p);
      if (bytes.ok()) {
        MIMO_ASSIGN_OR_RETURN(Scratch scratch, Take(*bytes));
        return cudnn_->Forward(p, scratch.ptr, scratch.bytes, stream());
      }
      if (!absl::IsUnimplemented(bytes.status())) return bytes.status();
    }
    return LaunchAttention(p, stream());
  }
  // Deterministic mode keeps our backward: its dq order is fixed, cuDNN's adds with atomics.
  absl::Status AttentionBackward(const AttentionBackwardParams& p) override {
    CudaDeviceGuard guard(device_);
    const bool deterministic = p.deterministic || deterministic_;
    if (!deterministic && cudnn_ != nullptr &&
        CudnnAttention::Handles(p.dtype, p.num_seqs, p.head_dim)) {
      const absl::StatusOr<size_t> bytes = cudnn_->BackwardWorkspaceBytes(p);
      if (bytes.ok()) {
        MIMO_ASSIGN_OR_RETURN(Scratch scratch, Take(*bytes));
        return cudnn_->Backward(p, scratch.ptr, scratch.bytes, stream());
      }
      if (!absl::IsUnimplemented(bytes.status())) return bytes.status();
    }
    MIMO_ASSIGN_OR_RETURN(Scratch scratch, Take(AttentionBackwardWorkspaceBytes(
                                               p.total_tokens, p.heads, p.head_dim)));
    AttentionBackwardParams q = p;
    q.deterministic = deterministic;
    q.workspace = scratch.ptr;
    q.workspace_bytes = scratch.bytes;
    return LaunchAttentionBackward(q, stream());
  }
  absl::Status AttentionMerge(const AttentionMergeParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchAttentionMerge(p, stream());
  }
  absl::Status Swiglu(const SwigluParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchSwiglu(p, stream());
  }
  absl::Status SwigluBackward(const SwigluBackwardParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchSwigluBackward(p, stream());
  }
  absl::Status Gelu(const GeluParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchGelu(p, stream());
  }
  absl::Status GeluBackward(const GeluBackwardParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchGeluBackward(p, stream());
  }
  absl::Status Dropout(const DropoutParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchDropout(p, stream());
  }
  absl::Status Patchify(const PatchifyParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchPatchify(p, stream());
  }
  absl::Status CrossEntropyInit(const CrossEntropyState& s, int64_t tokens) override {
    CudaDeviceGuard guard(device_);
    return LaunchCrossEntropyInit(s, tokens, stream());
  }
  absl::Status CrossEntropyChunk(const CrossEntropyChunkParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchCrossEntropyChunk(p, stream());
  }
  absl::Status CrossEntropyFinish(const CrossEntropyFinishParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchCrossEntropyFinish(p, stream());
  }
  absl::Status CrossEntropyBackward(const CrossEntropyBackwardParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchCrossEntropyBackward(p, stream());
  }
  absl::Status MoeRouter(const MoeRouterParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchMoeRouter(p, stream());
  }
  absl::Status MoeRouterBackward(const MoeRouterBackwardParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchMoeRouterBackward(p, stream());
  }
  absl::Status MoeAuxLoss(const MoeAuxLossParams& p) override {
    MIMO_RETURN_IF_ERROR(CheckMoeAuxLoss(p));  // Before sizing scratch from its fields.
    CudaDeviceGuard guard(device_);
    const int64_t sequences = p.cu_seqlens != nullptr ? p.num_seqs : 1;
    MIMO_ASSIGN_OR_RETURN(Scratch scratch,
                          Take(MoeAuxLossWorkspaceBytes(p.tokens, std::max<int64_t>(sequences, 0),
                                                        p.config.experts)));
    MoeAuxLossParams q = p;
    q.workspace = scratch.ptr;
    q.workspace_bytes = scratch.bytes;
    return LaunchMoeAuxLoss(q, stream());
  }
  absl::Status MoeCapacityDrop(const MoeCapacityDropParams& p) override {
    MIMO_RETURN_IF_ERROR(CheckMoeCapacityDrop(p));  // Before sizing scratch from its fields.
    CudaDeviceGuard guard(device_);
    MIMO_ASSIGN_OR_RETURN(Scratch scratch,
                          Take(MoeCapacityDropWorkspaceBytes(p.tokens * p.top_k, p.experts)));
    MoeCapacityDropParams q = p;
    q.workspace = scratch.ptr;
    q.workspace_bytes = scratch.bytes;
    return LaunchMoeCapacityDrop(q, stream());
  }
  absl::Status MoePermuteMap(const MoePermuteMapParams& p) override {
    MIMO_RETURN_IF_ERROR(CheckMoePermuteMap(p));  // Before sizing scratch from its fields.
    CudaDeviceGuard guard(device_);
    MIMO_ASSIGN_OR_RETURN(Scratch scratch,
                          Take(MoePermuteMapWorkspaceBytes(std::max<int64_t>(p.tokens * p.top_k, 0),
                                                           std::max<int64_t>(p.experts, 0))));
    MoePermuteMapParams q = p;
    q.workspace = scratch.ptr;
    q.workspace_bytes = scratch.bytes;
    return LaunchMoePermuteMap(q, stream());
  }
  absl::Status MoePermute(const MoePermuteParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchMoePermute(p, stream());
  }
  absl::Status MoePermuteBackward(const MoePermuteBackwardParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchMoePermuteBackward(p, stream());
  }
  absl::Status MoeUnpermute(const MoeUnpermuteParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchMoeUnpermute(p, stream());
  }
  absl::Status MoeUnpermuteBackward(const MoeUnpermuteBackwardParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchMoeUnpermuteBackward(p, stream());
  }
  absl::Status AdamW(const AdamWParams& p) override {
    CudaDeviceGuard guard(device_);
    return LaunchAdamW(p, stream());
  }
  absl::Status SumSquares(const SumSquaresParams& p) override {
    CudaDeviceGuard guard(device_);
    MIMO_ASSIGN_OR_RETURN(Scratch scratch, Take(SumSquaresWorkspaceBytes()));
    return LaunchSumSquares(p, scratch.ptr, stream());
  }

 private:
  // Device scratch for one call, given back when the call has been enqueued.
  struct Scratch {
    Allocator* allocator = nullptr;
    void* ptr = nullptr;
    size_t bytes = 0;
    Scratch() = default;
    Scratch(Allocator* a, void* p, size_t b) : allocator(a), ptr(p), bytes(b) {}
    Scratch(Scratch&& o) noexcept : allocator(o.allocator), ptr(o.ptr), bytes(o.bytes) {
      o.ptr = nullptr;
    }
    Scratch& operator=(Scratch&&) = delete;
    ~Scratch() {
      if (ptr != nullptr) allocator->Free(ptr);
    }
  };

  absl::Status Memcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                      const char* op) {
    if (bytes == 0) return absl::OkStatus();
    if (dst == nullptr || src == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("Ops::", op, ": null buffer"));
    }
    CudaDeviceGuard guard(device_);
    MIMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, kind, stream_.get()));
    return absl::OkStatus();
  }

  absl::StatusOr<Scratch> Take(size_t bytes) {
    if (bytes == 0) return Scratch();
    MIMO_ASSIGN_OR_RETURN(void* ptr, allocator_->Allocate(bytes, stream()));
    return Scratch(allocator_.get(), ptr, bytes);
  }

  int device_;
  bool deterministic_;  // CudaOpsOptions::deterministic.
  std::unique_ptr<CachingAllocator> allocator_;
  CudaStream stream_;
  std::unique_ptr<CublasLt> blas_;
  std::unique_ptr<CudnnAttention> cudnn_;  // Null before Hopper.
  PinnedStaging staging_;  // After stream_: destroyed first, once its copies are done.
};

}  // namespace

absl::StatusOr<std::unique_ptr<Ops>> NewCudaOps(const CudaOpsOptions& options) {
  MIMO_RETURN_IF_ERROR(CheckCudaDevice(options.device, "NewCudaOps"));
  MIMO_ASSIGN_OR_RETURN(auto allocator, NewCudaAllocator(options.device, options.allocator));
  MIMO_ASSIGN_OR_RETURN(CudaStream stream, CudaStream::Create(options.device));
  CudaDeviceGuard guard(options.device);
  CublasLtOptions blas_options = options.blas;
  blas_options.deterministic = blas_options.deterministic || options.deterministic;
  MIMO_ASSIGN_OR_RETURN(auto blas, CublasLt::Create(blas_options));
  absl::StatusOr<std::unique_ptr<CudnnAttention>> cudnn = CudnnAttention::Create();
  if (!cudnn.ok() && !absl::IsUnimplemented(cudnn.status())) return cudnn.status();
  return std::unique_ptr<Ops>(new CudaOps(options.device, std::move(allocator), std::move(stream),
                                          std::move(blas), cudnn.ok() ? *std::move(cudnn) : nullptr,
                                          options.deterministic));
}

}  // namespace mimo::kernels
