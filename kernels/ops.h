// The ops of one device behind one interface: model code calls Ops and runs unchanged on the CPU
// twins (CPU workers, CI) or the CUDA kernels (GPU workers).
#pragma once

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/adamw.h"
#include "kernels/add.h"
#include "kernels/allocator.h"
#include "kernels/attention.h"
#include "kernels/attention_merge.h"
#include "kernels/cast.h"
#include "kernels/cross_entropy.h"
#include "kernels/device.h"
#include "kernels/dropout.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/gemm.h"
#include "kernels/grouped_gemm.h"
#include "kernels/layernorm.h"
#include "kernels/linear.h"
#include "kernels/moe_capacity.h"
#include "kernels/moe_permute.h"
#include "kernels/moe_router.h"
#include "kernels/patchify.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"

namespace mimo::kernels {

// A point in an Ops' stream that any thread may wait for.
class Event {
 public:
  virtual ~Event() = default;
  // Returns once the work enqueued before the event was recorded is done (at once on the CPU,
  // where every op finishes before it returns), with an asynchronous error if there was one.
  virtual absl::Status Wait() = 0;
};

// Each call takes the op's params struct (buffers in this device's memory, from allocator()) and
// enqueues the op: CPU ops finish before returning, CUDA ops run in order on the Ops' stream. Ops
// that need device scratch (embedding, RMSNorm and attention backward, the MoE losses, the sum of
// squares) get it from allocator() for the call: the params' workspace fields are ignored. Not
// thread-safe.
class Ops {
 public:
  virtual ~Ops() = default;

  virtual Device device() const = 0;
  // Memory for this device's tensors.
  virtual Allocator& allocator() = 0;
  // The stream work is enqueued on (null on the CPU).
  virtual StreamHandle stream() const = 0;
  // Waits for everything enqueued so far and reports an asynchronous error, if any.
  virtual absl::Status Synchronize() = 0;
  // An event after the work enqueued so far, for another thread to wait for (a communication
  // thread before it reads what that work wrote).
  virtual absl::StatusOr<std::unique_ptr<Event>> RecordEvent() = 0;
  // Makes this device the calling thread's current one (CUDA; nothing on the CPU): a thread that
  // works for these ops (a communication thread) calls it first, so that nothing it calls touches
  // another device (CUDA's default device 0 gets a context as soon as a thread makes it current).
  virtual absl::Status UseDeviceOnThisThread() = 0;

  // Memory: `bytes` bytes between host memory and this device's memory, within this device's
  // memory, or set to zero. CopyFromHost may return before the copy is done, and `host` may be
  // reused as soon as it returns when it is ordinary (pageable) memory (the CUDA Ops stage large
  // copies in pinned buffers of their own, kernels/pinned_staging.h; CUDA stages small ones);
  // pinned memory must stay untouched until Synchronize. CopyToHost waits for the work enqueued
  // before it and the copy.
  // Copy's buffers may not overlap.
  virtual absl::Status CopyFromHost(void* dst, const void* host, size_t bytes) = 0;
  virtual absl::Status CopyToHost(void* host, const void* src, size_t bytes) = 0;
  virtual absl::Status Copy(void* dst, const void* src, size_t bytes) = 0;
  virtual absl::Status SetZero(void* dst, size_t bytes) = 0;

  virtual absl::Status Add(const AddParams& p) = 0;
  virtual absl::Status Cast(const CastParams& p) = 0;
  virtual absl::Status Embedding(const EmbeddingParams& p) = 0;
  virtual absl::Status EmbeddingBackward(const EmbeddingBackwardParams& p) = 0;
  virtual absl::Status RmsNorm(const RmsNormParams& p) = 0;
  virtual absl::Status RmsNormBackward(const RmsNormBackwardParams& p) = 0;
  virtual absl::Status LayerNorm(const LayerNormParams& p) = 0;
  virtual absl::Status LayerNormBackward(const LayerNormBackwardParams& p) = 0;
  virtual absl::Status Gemm(const GemmParams& p) = 0;
  // Independent products (CheckGemmBatch), side by side where the device can (CublasLt::GemmBatch).
  virtual absl::Status GemmBatch(absl::Span<const GemmParams> problems) = 0;
  virtual absl::Status GroupedGemm(const GroupedGemmParams& p) = 0;
  virtual absl::Status Linear(const LinearParams& p) = 0;
  virtual absl::Status LinearBackward(const LinearBackwardParams& p) = 0;
  virtual absl::Status Rope(const RopeParams& p) = 0;
  virtual absl::Status Attention(const AttentionParams& p) = 0;
  virtual absl::Status AttentionBackward(const AttentionBackwardParams& p) = 0;
  virtual absl::Status AttentionMerge(const AttentionMergeParams& p) = 0;
  virtual absl::Status Swiglu(const SwigluParams& p) = 0;
  virtual absl::Status SwigluBackward(const SwigluBackwardParams& p) = 0;
  virtual absl::Status Gelu(const GeluParams& p) = 0;
  virtual absl::Status GeluBackward(const GeluBackwardParams& p) = 0;
  virtual absl::Status Dropout(const DropoutParams& p) = 0;
  virtual absl::Status Patchify(const PatchifyParams& p) = 0;
  virtual absl::Status CrossEntropyInit(const CrossEntropyState& s, int64_t tokens) = 0;
  virtual absl::Status CrossEntropyChunk(const CrossEntropyChunkParams& p) = 0;
  virtual absl::Status CrossEntropyFinish(const CrossEntropyFinishParams& p) = 0;
  virtual absl::Status CrossEntropyBackward(const CrossEntropyBackwardParams& p) = 0;
  virtual absl::Status MoeRouter(const MoeRouterParams& p) = 0;
  virtual absl::Status MoeRouterBackward(const MoeRouterBackwardParams& p) = 0;
  virtual absl::Status MoeAuxLoss(const MoeAuxLossParams& p) = 0;
  virtual absl::Status MoeCapacityDrop(const MoeCapacityDropParams& p) = 0;
  virtual absl::Status MoePermuteMap(const MoePermuteMapParams& p) = 0;
  virtual absl::Status MoePermute(const MoePermuteParams& p) = 0;
  virtual absl::Status MoePermuteBackward(const MoePermuteBackwardParams& p) = 0;
  virtual absl::Status MoeUnpermute(const MoeUnpermuteParams& p) = 0;
  virtual absl::Status MoeUnpermuteBackward(const MoeUnpermuteBackwardParams& p) = 0;
  virtual absl::Status AdamW(const AdamWParams& p) = 0;
  virtual absl::Status SumSquares(const SumSquaresParams& p) = 0;
};

// The CPU twins over host memory (a CpuAllocator).
std::unique_ptr<Ops> NewCpuOps();

}  // namespace mimo::kernels
