// Row-major matrix products on cuBLASLt: descriptors and heuristic algorithms cached per problem,
// the timed choice of algorithm shared by the problems of one size class, bias and GELU
// epilogues fused where cuBLASLt offers them.
#include "kernels/gemm.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda_device_guard.h"
#include "kernels/cuda_status.h"
#include "kernels/fastest_of.h"
#include "kernels/gelu.h"
#include "kernels/gemm_pointers.h"

namespace mimo::kernels {
namespace {

// OK for CUBLAS_STATUS_SUCCESS; otherwise Internal (InvalidArgument for a bad value) naming the
// call, its location and cuBLAS's name for the error.
absl::Status CublasStatus(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message =
      absl::StrCat(file, ":", line, ": ", call, " failed: ", cublasLtGetStatusName(status), " (",
                   cublasLtGetStatusString(status), ")");
  switch (status) {
    case CUBLAS_STATUS_ALLOC_FAILED:
      return absl::ResourceExhaustedError(message);
    case CUBLAS_STATUS_INVALID_VALUE:
      return absl::InvalidArgumentError(message);
    case CUBLAS_STATUS_NOT_INITIALIZED:
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

#define MIMO_CUBLAS_RETURN_IF_ERROR(call) \
  MIMO_RETURN_IF_ERROR(CublasStatus((call), #call, __FILE__, __LINE__))

cudaDataType_t CudaType(DType dtype) { return dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

// Every buffer is 16-byte aligned (Gemm checks it): what cuBLASLt's algorithms are chosen for.
constexpr uint32_t kAlignment = 16;

// InvalidArgument naming the first of p's buffers not kAlignment-aligned.
absl::Status CheckAligned(const GemmParams& p) {
  for (const auto& [ptr, name] : {std::pair<const void*, const char*>{p.a, "a"},
                                  {p.b, "b"},
                                  {p.d, "d"},
                                  {p.bias, "bias"},
                                  {p.pre_activation, "pre_activation"}}) {
    if (reinterpret_cast<uintptr_t>(ptr) % kAlignment != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Gemm: ", name, " is not 16-byte aligned (address ",
                       absl::Hex(reinterpret_cast<uintptr_t>(ptr)), ")"));
    }
  }
  return absl::OkStatus();
}

// One distinct problem: what cuBLASLt's choice of algorithm depends on. `batch` > 1: that many
// products of this shape in one pointer-array batched call (GemmBatch's stacks).
struct PlanKey {
  DType ab_dtype, d_dtype;
  bool transpose_a, transpose_b;
  int64_t m, n, k;
  cublasLtEpilogue_t epilogue;
  bool accumulate;
  int batch;

  auto Tie() const {
    return std::tie(ab_dtype, d_dtype, transpose_a, transpose_b, m, n, k, epilogue, accumulate,
                    batch);
  }
  bool operator==(const PlanKey& o) const { return Tie() == o.Tie(); }
  template <typename H>
  friend H AbslHashValue(H h, const PlanKey& key) {
    return H::combine(std::move(h), key.Tie());
  }
};

// Algorithms the heuristic proposes per problem; the first call of a size class (SizeClass) that
// may time them (one that overwrites its output, outside a graph capture) keeps the heuristic's
// first unless another is more than 2% faster (Tune), and the other problems of the class take
// it (unless none of its candidates ran). Packed sequences change the token count, a dimension of
// most products, at every micro-batch: timing each new count would cost more than it saves.
constexpr int kCandidates = 8;

// CublasLtOptions::batch_streams at most.
constexpr int kMaxBatchStreams = 16;

// Bytes of one stream's operand tables for a stack (GemmPointersParams::out).
constexpr size_t kTableBytes = 3 * kMaxGemmPointers * sizeof(void*);

// Plans kept at most; past that the cache starts over (a plan is cheap to make again).
constexpr size_t kMaxPlans = 4096;

// `x` rounded up to a multiple of 2^(floor(log2 x) - 2): four classes per octave.
int64_t SizeClass(int64_t x) {
  if (x <= 8) return x;
  int64_t unit = 1;
  while ((unit << 3) <= x) unit <<= 1;
  return (x + unit - 1) / unit * unit;
}

PlanKey KeyOf(const GemmParams& p, cublasLtEpilogue_t epilogue, int batch = 1) {
  return {.ab_dtype = p.ab_dtype,
          .d_dtype = p.d_dtype,
          .transpose_a = p.transpose_a,
          .transpose_b = p.transpose_b,
          .m = p.m,
          .n = p.n,
          .k = p.k,
          .epilogue = epilogue,
          .accumulate = p.accumulate,
          .batch = batch};
}

// The key whose timed algorithm `key` may borrow: its dimensions through SizeClass, not
// accumulating.
PlanKey SizeClassOf(PlanKey key) {
  key.m = SizeClass(key.m);
  key.n = SizeClass(key.n);
  key.k = SizeClass(key.k);
  // One class for every stack size: routing changes the sizes every step, and each new class
  // would cost a timing (a synchronization) in the middle of training.
  key.batch = key.batch > 1 ? 2 : 1;
  key.accumulate = false;
  return key;
}

// Descriptors of one problem in cuBLASLt's column-major terms and its algorithm (none when the
// heuristic found none: the caller then takes an unfused path).
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool has_algo = false;
  std::vector<cublasLtMatmulAlgo_t> candidates;  // The heuristic's, best first.
  bool tuned = false;
  bool borrowed = false;  // algo is the size class's, not yet seen to run on this problem.
  bool queried = false;   // The heuristic was asked (candidates are its answer).

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
  }
};

}  // namespace

struct CublasLt::State {
  int device = 0;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  bool deterministic = false;  // CublasLtOptions::deterministic: no timing, so nothing lent.
  int batch_streams = 1;       // CublasLtOptions::batch_streams.
  // GemmBatch's extra streams, each with its workspace and the event it joins back with; made on
  // the first batch. `fork` is recorded on the caller's stream for them to wait on.
  struct Side {
    cudaStream_t stream = nullptr;
    void* workspace = nullptr;
    void** table = nullptr;  // Its stacks' operand tables (3 x kMaxGemmPointers pointers).
    cudaEvent_t done = nullptr;
  };
  // The caller's stream's operand tables for stacks. A lane's table is written and read only by
  // work on that lane's stream, so stream order keeps a stack's table until its product has run;
  // for the caller's stream this holds because a context serves one stream of work (CublasLt's
  // contract), as its workspace already requires.
  void** table = nullptr;
  std::vector<Side> sides;
  cudaEvent_t fork = nullptr;
  absl::flat_hash_map<PlanKey, std::unique_ptr<Plan>> plans;
  // The kept algorithm per size class (timed, or the only candidate that ran): the key with m, n,
  // k through SizeClass, not accumulating.
  absl::flat_hash_map<PlanKey, cublasLtMatmulAlgo_t> tuned;
  std::vector<cudaEvent_t> marks;  // Tune's timing events, made on first use.

  ~State() {
    plans.clear();
    DestroySides();
    for (cudaEvent_t event : marks) cudaEventDestroy(event);
    if (workspace != nullptr) cudaFree(workspace);
    if (table != nullptr) cudaFree(table);
    if (handle != nullptr) cublasLtDestroy(handle);
  }

  // The plan of `key` (descriptors only; no algorithm yet), made on first use. Row-major
  // D (m, n) = op(A) op(B) is column-major D^T (n, m) = op(B)^T op(A)^T, so cuBLASLt's A is our
  // b, its B our a, its m our n.
  absl::StatusOr<Plan*> PlanFor(const PlanKey& key) {
    if (auto it = plans.find(key); it != plans.end()) return it->second.get();
    if (plans.size() >= kMaxPlans) plans.clear();
    auto plan = std::make_unique<Plan>();
    MIMO_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = key.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = key.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &key.epilogue, sizeof(key.epilogue)));
    const cudaDataType_t ab = CudaType(key.ab_dtype), d = CudaType(key.d_dtype);
    // Stored shapes, column-major: our b is (k, n) row-major = (n, k) column-major, or (k, n)
    // when transposed; likewise a.
    const auto [a_rows, a_cols] =
        key.transpose_b ? std::pair{key.k, key.n} : std::pair{key.n, key.k};
    const auto [b_rows, b_cols] =
        key.transpose_a ? std::pair{key.m, key.k} : std::pair{key.k, key.m};
    MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->a, ab, a_rows, a_cols, a_rows));
    MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->b, ab, b_rows, b_cols, b_rows));
    MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->d, d, key.n, key.m, key.n));
    if (key.batch > 1) {
      // The operands are device tables of `batch` pointers each (GemmPointersParams::out).
      const int32_t count = key.batch;
      const uint32_t mode = CUBLASLT_BATCH_MODE_POINTER_ARRAY;
      for (cublasLtMatrixLayout_t layout : {plan->a, plan->b, plan->d}) {
        MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutSetAttribute(
            layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
        MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutSetAttribute(
            layout, CUBLASLT_MATRIX_LAYOUT_BATCH_MODE, &mode, sizeof(mode)));
      }
    }
    Plan* out = plan.get();
    plans.emplace(key, std::move(plan));
    return out;
  }

  // Asks cuBLASLt's heuristic for `plan`'s candidates (best first) and takes the first; none
  // found leaves has_algo false. Costs tens to hundreds of microseconds of host time, which is
  // why a problem of an already timed size class skips it (Matmul).
  absl::Status Query(Plan* plan, const PlanKey& key) {
    plan->queried = true;
    plan->candidates.clear();
    cublasLtMatmulPreference_t preference = nullptr;
    MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&preference));
    const auto destroy = [](cublasLtMatmulPreference_t* p) { cublasLtMatmulPreferenceDestroy(*p); };
    std::unique_ptr<cublasLtMatmulPreference_t, decltype(destroy)> preference_guard(&preference,
                                                                                    destroy);
    const uint64_t max_workspace = workspace_bytes;
    MIMO_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &max_workspace, sizeof(max_workspace)));
    for (const auto attribute :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
      MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(
          preference, attribute, &kAlignment, sizeof(kAlignment)));
    }
    // The heuristic needs the epilogue's pointers' alignment: it gets an aligned stand-in (it does
    // not dereference it; Matmul sets the real pointers before every run).
    const void* stand_in = reinterpret_cast<const void*>(uintptr_t{kAlignment});
    if (key.epilogue == CUBLASLT_EPILOGUE_BIAS || key.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
      // Only epilogues that read a bias may have its pointer set: cuBLASLt refuses the others.
      MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
          plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &stand_in, sizeof(stand_in)));
    }
    if (key.epilogue == CUBLASLT_EPILOGUE_GELU_AUX ||
        key.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
      const int64_t ld = key.n;
      MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
          plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &stand_in, sizeof(stand_in)));
      MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
          plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
    }
    cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
    int found = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->a, plan->b, plan->d, plan->d,
                                       preference, kCandidates, results, &found);
    if (status == CUBLAS_STATUS_SUCCESS && found > 0) {
      for (int i = 0; i < found; ++i) {
        if (results[i].state == CUBLAS_STATUS_SUCCESS) plan->candidates.push_back(results[i].algo);
      }
    } else if (status != CUBLAS_STATUS_NOT_SUPPORTED && status != CUBLAS_STATUS_SUCCESS &&
               key.epilogue != CUBLASLT_EPILOGUE_GELU_AUX &&
               key.epilogue != CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
      // (A refused GELU epilogue is no error: the caller falls back to an unfused GELU.)
      return CublasStatus(status, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
    }
    plan->has_algo = !plan->candidates.empty();
    if (plan->has_algo) plan->algo = plan->candidates[0];
    plan->tuned = plan->candidates.size() < 2;
    plan->borrowed = false;
    return absl::OkStatus();
  }

  // Times the candidates of `plan` on `stream` and keeps the heuristic's first unless another is
  // clearly faster (FastestOf); `run` enqueues one run with the given algorithm. Candidates that
  // fail are skipped; false when every one failed (plan->algo is then not one to lend).
  template <typename Run>
  absl::StatusOr<bool> Tune(Plan* plan, cudaStream_t stream, const Run& run) {
    plan->tuned = true;
    while (marks.size() < static_cast<size_t>(kCandidates) + 1) {
      cudaEvent_t event = nullptr;
      MIMO_CUDA_RETURN_IF_ERROR(cudaEventCreate(&event));
      marks.push_back(event);
    }
    std::vector<cublasLtMatmulAlgo_t> algos;  // Those that run (this first run: the warm-up).
    for (const cublasLtMatmulAlgo_t& algo : plan->candidates) {
      if (run(algo) == CUBLAS_STATUS_SUCCESS) algos.push_back(algo);
    }
    if (algos.empty()) return false;
    const auto run_one = [&](int i) { return run(algos[i]) == CUBLAS_STATUS_SUCCESS; };
    MIMO_ASSIGN_OR_RETURN(const int keep,
                          FastestOf(static_cast<int>(algos.size()), run_one, stream, marks));
    if (keep < 0) return false;
    plan->algo = algos[keep];
    return true;
  }

  // Runs one cuBLASLt matmul with `epilogue`, writing `d` (and the GELU input to `aux`).
  // `scratch`: the workspace of `stream` (workspace_bytes). `batch` > 1: p.a, p.b and `d` are
  // device tables of that many pointers, one product of p's shape each.
  absl::Status Matmul(const GemmParams& p, cublasLtEpilogue_t epilogue, void* d, void* aux,
                      cudaStream_t stream, void* scratch, bool* ran, int batch = 1) {
    const PlanKey key = KeyOf(p, epilogue, batch);
    MIMO_ASSIGN_OR_RETURN(Plan * plan, Settle(key));
    const auto set_pointers = [&]() -> absl::Status {
      if (p.bias != nullptr) {
        MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
            plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias)));
      }
      if (aux != nullptr) {
        MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
            plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
      }
      return absl::OkStatus();
    };
    const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
    const auto run = [&](const cublasLtMatmulAlgo_t& algo) {
      return cublasLtMatmul(handle, plan->desc, &alpha, p.b, plan->a, p.a, plan->b, &beta, d,
                            plan->d, d, plan->d, &algo, scratch, workspace_bytes, stream);
    };
    if (plan->borrowed) {
      // The class's algorithm may not fit this problem (cuBLASLt refuses it without running):
      // then the heuristic's first choice, or none (the caller's unfused path).
      plan->borrowed = false;
      MIMO_RETURN_IF_ERROR(set_pointers());
      if (run(plan->algo) == CUBLAS_STATUS_SUCCESS) {
        *ran = true;
        return absl::OkStatus();
      }
      MIMO_RETURN_IF_ERROR(Query(plan, key));
      plan->tuned = true;
    }
    *ran = plan->has_algo;
    if (!plan->has_algo) return absl::OkStatus();
    MIMO_RETURN_IF_ERROR(set_pointers());
    // Timing runs overwrite d, so only a call that overwrites it anyway (not accumulating) tunes,
    // and never inside a graph capture; an accumulating one runs the heuristic's first choice.
    if (!plan->tuned && !p.accumulate) {
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      MIMO_CUDA_RETURN_IF_ERROR(cudaStreamIsCapturing(stream, &capture));
      if (deterministic) {
        plan->tuned = true;  // The heuristic's first choice for this problem; nothing is lent.
      } else if (capture == cudaStreamCaptureStatusNone) {
        MIMO_ASSIGN_OR_RETURN(const bool kept, Tune(plan, stream, run));
        if (kept) tuned[SizeClassOf(key)] = plan->algo;
      }
    }
    MIMO_CUBLAS_RETURN_IF_ERROR(run(plan->algo));
    return absl::OkStatus();
  }

  // The plan of `key` with an algorithm chosen as its first call chooses one: a new problem of a
  // size class already timed takes the class's algorithm without asking the heuristic; any other
  // new problem asks it.
  absl::StatusOr<Plan*> Settle(const PlanKey& key) {
    MIMO_ASSIGN_OR_RETURN(Plan * plan, PlanFor(key));
    if (!plan->queried && !plan->tuned) {
      if (auto it = tuned.find(SizeClassOf(key)); it != tuned.end()) {
        plan->algo = it->second;
        plan->has_algo = plan->tuned = plan->borrowed = true;
      } else {
        MIMO_RETURN_IF_ERROR(Query(plan, key));
      }
    }
    return plan;
  }

  // Whether Matmul, outside a graph capture, would time algorithms for `key`: its plan is untimed
  // and no timed size class lends it one.
  bool WouldTime(const PlanKey& key) const {
    if (deterministic || key.accumulate) return false;
    if (auto it = plans.find(key); it != plans.end()) {
      if (it->second->tuned) return false;
      if (it->second->queried) return true;
    }
    return !tuned.contains(SizeClassOf(key));
  }

  void DestroySides() {
    for (Side& side : sides) {
      if (side.done != nullptr) cudaEventDestroy(side.done);
      if (side.stream != nullptr) cudaStreamDestroy(side.stream);
      if (side.workspace != nullptr) cudaFree(side.workspace);
      if (side.table != nullptr) cudaFree(side.table);
    }
    sides.clear();
    if (fork != nullptr) cudaEventDestroy(fork);
    fork = nullptr;
  }

  // Makes GemmBatch's extra streams, their workspaces and events.
  absl::Status MakeSides() {
    for (int i = 1; i < batch_streams; ++i) {
      Side& side = sides.emplace_back();
      MIMO_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&side.stream, cudaStreamNonBlocking));
      MIMO_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&side.done, cudaEventDisableTiming));
      if (workspace_bytes > 0) {
        MIMO_CUDA_RETURN_IF_ERROR(cudaMalloc(&side.workspace, workspace_bytes));
      }
      MIMO_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&side.table), kTableBytes));
    }
    MIMO_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    return absl::OkStatus();
  }
};

absl::StatusOr<std::unique_ptr<CublasLt>> CublasLt::Create(const CublasLtOptions& options) {
  if (options.batch_streams < 1 || options.batch_streams > kMaxBatchStreams) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CublasLt: batch_streams is ", options.batch_streams, ", needs 1 to ", kMaxBatchStreams));
  }
  auto state = std::make_unique<State>();
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDevice(&state->device));
  MIMO_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&state->handle));
  if (options.workspace_bytes > 0) {
    MIMO_CUDA_RETURN_IF_ERROR(cudaMalloc(&state->workspace, options.workspace_bytes));
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&state->table), kTableBytes));
  state->workspace_bytes = options.workspace_bytes;
  state->deterministic = options.deterministic;
  state->batch_streams = options.batch_streams;
  // The extra streams' workspaces are allocated now, before the caching allocator holds the
  // device's memory, not in the middle of a step.
  if (options.batch_streams > 1) MIMO_RETURN_IF_ERROR(state->MakeSides());
  return std::unique_ptr<CublasLt>(new CublasLt(std::move(state)));
}

CublasLt::CublasLt(std::unique_ptr<State> state) : state_(std::move(state)) {}
CublasLt::~CublasLt() {
  if (state_ != nullptr) {
    CudaDeviceGuard guard(state_->device);
    state_.reset();
  }
}

size_t CublasLt::cached_plans() const { return state_->plans.size(); }
int CublasLt::device() const { return state_->device; }

absl::Status CublasLt::Gemm(const GemmParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckGemm(p));
  MIMO_RETURN_IF_ERROR(CheckAligned(p));
  CudaDeviceGuard guard(state_->device);
  return Enqueue(p, stream, state_->workspace);
}

absl::Status CublasLt::Enqueue(const GemmParams& p, StreamHandle stream, void* workspace) {
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.m == 0 || p.n == 0 || (p.k == 0 && p.accumulate)) return absl::OkStatus();
  if (p.k == 0) {  // d = 0 (CheckGemm allows no bias or activation here).
    MIMO_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(p.d, 0, static_cast<size_t>(p.m) * p.n * DTypeSize(p.d_dtype), s));
    return absl::OkStatus();
  }
  const bool gelu = p.activation == GemmActivation::kGeluTanh;
  const bool bias = p.bias != nullptr;
  bool ran = false;
  if (gelu && p.n % 8 == 0) {
    MIMO_RETURN_IF_ERROR(
        state_->Matmul(p, bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX, p.d,
                       p.pre_activation, s, workspace, &ran));
    if (ran) return absl::OkStatus();
  }
  // Unfused GELU: the product (with its bias) into pre_activation, then GELU from it.
  void* out = gelu ? p.pre_activation : p.d;
  MIMO_RETURN_IF_ERROR(state_->Matmul(p, bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT,
                                      out, nullptr, s, workspace, &ran));
  if (!ran) {
    return absl::InternalError(absl::StrCat("Gemm: cuBLASLt found no algorithm for m ", p.m, ", n ",
                                            p.n, ", k ", p.k, " (", DTypeName(p.ab_dtype), " -> ",
                                            DTypeName(p.d_dtype), ")"));
  }
  if (!gelu) return absl::OkStatus();
  return LaunchGelu({.dtype = p.d_dtype,
                     .x = p.pre_activation,
                     .y = p.d,
                     .n = p.m * p.n,
                     .approximation = GeluApproximation::kTanh},
                    s);
}

absl::Status CublasLt::EnqueueStack(absl::Span<const GemmParams* const> stack, StreamHandle stream,
                                    void* workspace, void** table) {
  if (stack.size() == 1) return Enqueue(*stack[0], stream, workspace);
  const auto s = static_cast<cudaStream_t>(stream);
  const int count = static_cast<int>(stack.size());
  // The a, b and d tables at fixed offsets (16-byte aligned whatever the count).
  GemmPointersParams tables{.count = count, .stride = kMaxGemmPointers, .out = table};
  for (int i = 0; i < count; ++i) {
    tables.a[i] = stack[i]->a;
    tables.b[i] = stack[i]->b;
    tables.d[i] = stack[i]->d;
  }
  MIMO_RETURN_IF_ERROR(LaunchGemmPointers(tables, s));
  GemmParams shape = *stack[0];
  shape.a = table;
  shape.b = table + kMaxGemmPointers;
  bool ran = false;
  MIMO_RETURN_IF_ERROR(state_->Matmul(shape, CUBLASLT_EPILOGUE_DEFAULT,
                                      table + 2 * kMaxGemmPointers, nullptr, s, workspace, &ran,
                                      count));
  if (ran) return absl::OkStatus();
  // cuBLASLt has no batched algorithm for this shape: the products one by one.
  for (const GemmParams* p : stack) MIMO_RETURN_IF_ERROR(Enqueue(*p, stream, workspace));
  return absl::OkStatus();
}

absl::Status CublasLt::GemmTables(const GemmParams& shape, const void* const* a,
                                  const void* const* b, void* const* d, int count,
                                  StreamHandle stream) {
  const auto aligned = [](const void* table) {
    return table != nullptr && reinterpret_cast<uintptr_t>(table) % alignof(void*) == 0;
  };
  // One product would be planned as a plain one, reading the tables as its matrices.
  if (count < 2 || !aligned(a) || !aligned(b) || !aligned(d) || shape.bias != nullptr ||
      shape.activation != GemmActivation::kNone) {
    return absl::InvalidArgumentError(
        absl::StrCat("GemmTables: needs pointer-aligned tables of at least two products (got ",
                     count, ") and no bias or activation"));
  }
  GemmParams p = shape;
  p.a = a;
  p.b = b;
  p.d = const_cast<void**>(d);
  MIMO_RETURN_IF_ERROR(CheckGemm(p));
  if (p.m == 0 || p.n == 0 || p.k == 0) {
    return absl::InvalidArgumentError("GemmTables: every dimension must be positive");
  }
  CudaDeviceGuard guard(state_->device);
  bool ran = false;
  MIMO_RETURN_IF_ERROR(state_->Matmul(p, CUBLASLT_EPILOGUE_DEFAULT, p.d, nullptr,
                                      static_cast<cudaStream_t>(stream), state_->workspace, &ran,
                                      count));
  if (ran) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("GemmTables: cuBLASLt has no pointer-array algorithm for ", count,
                   " products of m ", p.m, ", n ", p.n, ", k ", p.k));
}

absl::Status CublasLt::GemmBatch(absl::Span<const GemmParams> problems, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckGemmBatch(problems));
  for (const GemmParams& p : problems) MIMO_RETURN_IF_ERROR(CheckAligned(p));
  CudaDeviceGuard guard(state_->device);
  const auto s = static_cast<cudaStream_t>(stream);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  MIMO_CUDA_RETURN_IF_ERROR(cudaStreamIsCapturing(s, &capture));
  // Stacks: the products of one shape (dtypes, transposes, m, n, k, accumulation), in the
  // caller's order, up to kMaxGemmPointers a stack. A stack of several is one pointer-array
  // batched product (one kernel over all their tiles: an MoE layer's experts with equal padded
  // row counts); a stack of one, or one cuBLASLt cannot batch, is a plain product.
  std::vector<std::vector<const GemmParams*>> groups;
  absl::flat_hash_map<PlanKey, size_t> filling;  // Each shape's last group.
  for (const GemmParams& p : problems) {
    if (p.m == 0 || p.n == 0 || (p.k == 0 && p.accumulate)) continue;
    if (p.k == 0) {  // d = 0: a memset, never stacked.
      groups.push_back({&p});
      continue;
    }
    const auto [it, fresh] = filling.try_emplace(KeyOf(p, CUBLASLT_EPILOGUE_DEFAULT), 0);
    if (fresh || groups[it->second].size() == static_cast<size_t>(kMaxGemmPointers)) {
      it->second = groups.size();
      groups.emplace_back();
    }
    groups[it->second].push_back(&p);
  }
  // A group of several is a stack where cuBLASLt has a pointer-array algorithm for it; otherwise
  // its products run plain (and the timing pass below sees them as such).
  std::vector<std::vector<const GemmParams*>> stacks;
  for (std::vector<const GemmParams*>& group : groups) {
    if (group.size() > 1) {
      const absl::StatusOr<Plan*> plan = state_->Settle(
          KeyOf(*group[0], CUBLASLT_EPILOGUE_DEFAULT, static_cast<int>(group.size())));
      if (plan.ok() && (*plan)->has_algo) {
        stacks.push_back(std::move(group));
        continue;
      }
    }
    for (const GemmParams* p : group) stacks.push_back({p});
  }
  // In the caller's order, as one by one: stacks to time run alone on the caller's stream (as
  // does everything without extra streams); the others' algorithms are chosen now, so that none
  // depends on which stacks the batch timed first.
  std::vector<const std::vector<const GemmParams*>*> rest;
  for (const auto& stack : stacks) {
    const GemmParams& p = *stack[0];
    if (state_->sides.empty()) {
      MIMO_RETURN_IF_ERROR(EnqueueStack(stack, s, state_->workspace, state_->table));
      continue;
    }
    if (p.k > 0) {
      const PlanKey key = KeyOf(p, CUBLASLT_EPILOGUE_DEFAULT, static_cast<int>(stack.size()));
      if (capture == cudaStreamCaptureStatusNone && state_->WouldTime(key)) {
        MIMO_RETURN_IF_ERROR(EnqueueStack(stack, s, state_->workspace, state_->table));
        continue;
      }
      MIMO_RETURN_IF_ERROR(state_->Settle(key).status());
    }
    rest.push_back(&stack);
  }
  if (rest.size() <= 1) {
    return rest.empty() ? absl::OkStatus()
                        : EnqueueStack(*rest[0], s, state_->workspace, state_->table);
  }
  // Largest first onto the least loaded lane (lane 0: the caller's stream). Equal sizes keep
  // their order, so the assignment depends on the shapes only.
  const auto work = [](const std::vector<const GemmParams*>* stack) {
    const GemmParams& p = *(*stack)[0];
    return static_cast<double>(stack->size()) * p.m * p.n * std::max<int64_t>(p.k, 1);
  };
  std::stable_sort(rest.begin(), rest.end(),
                   [&](const auto* a, const auto* b) { return work(a) > work(b); });
  const size_t lanes = std::min(rest.size(), state_->sides.size() + 1);
  std::vector<double> load(lanes, 0.0);
  std::vector<std::vector<const std::vector<const GemmParams*>*>> assigned(lanes);
  for (const auto* stack : rest) {
    const size_t lane = std::min_element(load.begin(), load.end()) - load.begin();
    load[lane] += work(stack);
    assigned[lane].push_back(stack);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaEventRecord(state_->fork, s));
  // Every lane that forked joins back, after an error too: no stream is left forked from a
  // capture.
  absl::Status status;
  size_t forked = 1;
  for (; forked < lanes; ++forked) {
    const cudaError_t e = cudaStreamWaitEvent(state_->sides[forked - 1].stream, state_->fork);
    if (e != cudaSuccess) {
      status = CudaStatus(e, "cudaStreamWaitEvent (GemmBatch fork)", __FILE__, __LINE__);
      break;
    }
  }
  for (size_t lane = 0; lane < forked && status.ok(); ++lane) {
    const bool caller = lane == 0;
    const cudaStream_t ls = caller ? s : state_->sides[lane - 1].stream;
    void* workspace = caller ? state_->workspace : state_->sides[lane - 1].workspace;
    void** table = caller ? state_->table : state_->sides[lane - 1].table;
    for (const auto* stack : assigned[lane]) {
      status = EnqueueStack(*stack, ls, workspace, table);
      if (!status.ok()) break;
    }
  }
  for (size_t lane = 1; lane < forked; ++lane) {
    const State::Side& side = state_->sides[lane - 1];
    cudaError_t e = cudaEventRecord(side.done, side.stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(s, side.done);
    if (e != cudaSuccess && status.ok()) {
      status = CudaStatus(e, "joining a GemmBatch stream", __FILE__, __LINE__);
    }
  }
  return status;
}

}  // namespace mimo::kernels
