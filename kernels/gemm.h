// Row-major matrix products D (+)= op(A) op(B) (+ bias, then GELU): cuBLASLt on the GPU with
// algorithm heuristics cached per shape, and the CPU twin.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/allocator.h"
#include "kernels/dtype.h"

namespace mimo::kernels {

// The elementwise function applied after the bias.
enum class GemmActivation {
  kNone,
  // GELU, tanh approximation (what cuBLASLt's GELU epilogue computes, like Megatron's fused
  // bias-GELU); the pre-activation is written too, for the backward.
  kGeluTanh,
};

// All matrices are row-major and dense. Arithmetic is fp32 (bf16 products accumulate in fp32).
// On the GPU every buffer starts 16-byte aligned (the caching allocator's blocks are).
struct GemmParams {
  DType ab_dtype = DType::kF32;  // Of a and b: bf16 or f32.
  DType d_dtype = DType::kF32;   // Of d, bias and pre_activation: ab_dtype or f32.
  const void* a = nullptr;       // (m, k), or (k, m) when transpose_a.
  const void* b = nullptr;       // (k, n), or (n, k) when transpose_b.
  void* d = nullptr;             // (m, n); may not alias a or b.
  bool transpose_a = false;
  bool transpose_b = false;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;  // 0 gives d = 0, or leaves d unchanged when accumulating.
  // d += a·b (gradient accumulation) instead of d = a·b. Not with a bias or an activation.
  bool accumulate = false;
  const void* bias = nullptr;  // Optional (n,): added to every row.
  GemmActivation activation = GemmActivation::kNone;
  void* pre_activation = nullptr;  // (m, n) with an activation: a·b + bias before it.
};

// InvalidArgument for unsupported dtypes, negative sizes, sizes of 2^31 or more, a null buffer
// that is to be read or written, or a bias or an activation with accumulation or with k = 0.
absl::Status CheckGemm(const GemmParams& p);

// CPU twin: host memory.
absl::Status GemmCpu(const GemmParams& p);

// A batch of independent products (GemmBatch): each passes CheckGemm and takes no bias and no
// activation, and no product's output overlaps another's output or any product's inputs, so they
// may run in any order or at once. InvalidArgument naming the first offending product otherwise.
absl::Status CheckGemmBatch(absl::Span<const GemmParams> problems);

// CPU twin of CublasLt::GemmBatch: the products one after another.
absl::Status GemmBatchCpu(absl::Span<const GemmParams> problems);

// Options of the cuBLASLt context.
struct CublasLtOptions {
  // cuBLASLt's scratch, allocated once: 32 MiB lets it pick its fastest Hopper kernels.
  size_t workspace_bytes = size_t{32} << 20;
  // Every problem runs the heuristic's first algorithm for its own shape instead of the fastest
  // of the first 8 as timed on its size class's first call: timing picks by noise among
  // near-equal algorithms, which may sum in another order in another run, and a lent algorithm
  // would depend on which problem came first. On, a product's bits depend on the problem only
  // (and, in a GemmBatch, on how many products of its shape share its stack); the price is
  // sometimes a slower algorithm and a heuristic query per new shape.
  bool deterministic = false;
  // Streams a GemmBatch spreads its products over, the caller's included (1 to 16): products too
  // small to fill the GPU alone (an MoE layer's per-expert GEMMs) then run side by side. Each
  // extra stream has a workspace of workspace_bytes of its own, allocated with the context. 1 runs
  // a batch's stacks and products one after another.
  int batch_streams = 4;
};

// cuBLASLt on one device: a handle, a workspace and, per distinct problem (dtypes, shape,
// transposes, epilogue, and for GemmBatch's stacks the number of products batched), the
// descriptors and an algorithm: of the heuristic's first 8, timed by the problem's first call
// outside a graph capture (three interleaved rounds queued behind a stream hold, so short products
// run back to back), the first unless another is more than 2% faster (that call synchronizes the
// stream a few times; accumulating problems, whose output timing runs would spoil, keep the
// heuristic's first choice; CublasLtOptions::deterministic skips the timing). A training loop of
// fixed shapes thus neither allocates nor searches after its first step; each new problem costs a
// heuristic query, the timing and a cache entry kept for the context's life (shapes that change
// every step, like MoE expert token counts, meet mostly size classes already timed: m, n and k in
// quarter octaves, all stack sizes in one class; the graph-safe path takes a grouped GEMM). Not
// thread-safe: one per stream of work.
class CublasLt {
 public:
  // Uses the current CUDA device. Unavailable without a device.
  static absl::StatusOr<std::unique_ptr<CublasLt>> Create(const CublasLtOptions& options = {});
  ~CublasLt();
  CublasLt(const CublasLt&) = delete;
  CublasLt& operator=(const CublasLt&) = delete;

  // Enqueues the product on `stream` (a cudaStream_t); device memory. The bias and GELU are fused
  // into the GEMM as cuBLASLt epilogues where it offers them (GELU needs n % 8 == 0); otherwise a
  // separate GELU kernel follows. InvalidArgument (nothing enqueued) for bad parameters or a
  // buffer not 16-byte aligned; an error naming the cuBLASLt call and its status when it fails
  // (Internal when it finds no algorithm).
  absl::Status Gemm(const GemmParams& p, StreamHandle stream);

  // Enqueues independent products (CheckGemmBatch) so that they run side by side. Products of
  // one shape (dtypes, transposes, m, n, k, accumulation; up to 128 at a time) run as one
  // pointer-array batched cuBLASLt product: one kernel over all their tiles, near the speed of a
  // dense product of their rows where the shape alone leaves the GPU partly idle (an MoE layer's
  // experts with equal padded row counts: 0.84-1.06x dense, against 0.80-0.92x for the products
  // side by side; bench/RESULTS.md, 2026-12-06). These stacks and the remaining products go largest
  // first, each onto the least loaded of CublasLtOptions::batch_streams streams, which fork from
  // and join back into `stream` (also inside a graph capture). A stack whose size class would
  // have its algorithms timed runs alone on `stream` first, so no timing overlaps other work.
  // A product's bits depend on the batch's shapes, not on the streams: a product alone in its
  // shape gives what Gemm gives it. Nothing is enqueued when a check fails.
  absl::Status GemmBatch(absl::Span<const GemmParams> problems, StreamHandle stream);

  // `count` (2 or more) products of `shape`'s dtypes, transposes, m, n, k and accumulation
  // whose operands are in device tables (count pointers each) that earlier work on `stream`
  // writes: one pointer-array batched product, planned and timed as a GemmBatch stack of that
  // many. shape's a, b and d are not read; the operands must be 16-byte aligned, and an output
  // that overlaps another's gets one of their values (not checked: they are on the device).
  // InvalidArgument for a bad shape, count or table, or a bias or an activation;
  // FailedPrecondition (nothing enqueued) when cuBLASLt has no pointer-array algorithm for it.
  absl::Status GemmTables(const GemmParams& shape, const void* const* a, const void* const* b,
                          void* const* d, int count, StreamHandle stream);

  // Distinct problems planned so far.
  size_t cached_plans() const;
  // The CUDA device the context (and its workspace) belongs to.
  int device() const;

 private:
  struct State;
  explicit CublasLt(std::unique_ptr<State> state);
  // One checked product on `stream`, with `workspace` (workspace_bytes, that stream's own).
  absl::Status Enqueue(const GemmParams& p, StreamHandle stream, void* workspace);
  // A GemmBatch stack on `stream`: one product, or several of one shape as one pointer-array
  // batched product whose operand tables are written to `table` (that stream's own).
  absl::Status EnqueueStack(absl::Span<const GemmParams* const> stack, StreamHandle stream,
                            void* workspace, void** table);
  std::unique_ptr<State> state_;
};

}  // namespace mimo::kernels
