// Attention through cuDNN's fused flash attention: the SDPA forward and backward operation graphs
// (the composite form cuDNN's runtime fusion engines recognize), one plan per problem, and the
// glue to the packed layout.
#include "kernels/attention_cudnn.h"

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention_cudnn_layout.h"
#include "kernels/cuda_device_guard.h"
#include "kernels/cuda_status.h"
#include "kernels/cudnn_backend.h"
#include "kernels/cudnn_status.h"

namespace mimo::kernels {
namespace {

// Unique ids of the graphs' memory-backed tensors (virtual ones count up from kFirstVirtual).
enum Uid : int64_t {
  kQ = 1,
  kK,
  kV,
  kO,
  kStats,
  kScale,
  kNegInf,
  kSeqLen,
  kSeqLenKv,
  kRaggedQ,
  kRaggedKv,
  kDO,
  kDQ,
  kDK,
  kDV,
  kOne,
  kSoftmaxSum,
  kDQAccum,
  kFirstVirtual = 1000,
};

// One plan's problem. s is the padded sequence length the tensors are described with.
struct Problem {
  bool backward = false;
  int64_t b = 0, s = 0, h = 0, hk = 0, d = 0;
  bool causal = false;
  bool ragged = false;  // Ragged offsets and a padding mask from per-sequence lengths.

  auto Tie() const { return std::tie(backward, b, s, h, hk, d, causal, ragged); }
  bool operator==(const Problem& o) const { return Tie() == o.Tie(); }
  template <typename H>
  friend H AbslHashValue(H hash, const Problem& p) {
    return H::combine(std::move(hash), p.backward, p.b, p.s, p.h, p.hk, p.d, p.causal, p.ragged);
  }
};

int64_t PowerOfTwoAtLeast(int64_t n, int64_t floor) {
  return static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(std::max(n, floor))));
}

// Sequences of one length that is a multiple of 128 are plain strided batches; anything else is
// ragged: the sequence count rounded up to a power of two (the extra sequences empty) and the
// length to a power of two of at least 128 (cuDNN 9.14's backward wants the padding mask below
// multiples of 128), so that packed batches of varying counts and lengths share a few plans.
Problem Describe(bool backward, int64_t num_seqs, int64_t total_tokens, int64_t max_seqlen,
                 int64_t heads, int64_t kv_heads, int64_t head_dim, bool causal) {
  Problem p{.backward = backward,
            .b = num_seqs,
            .s = max_seqlen,
            .h = heads,
            .hk = kv_heads,
            .d = head_dim,
            .causal = causal};
  p.ragged = total_tokens != num_seqs * max_seqlen || max_seqlen % 128 != 0;
  if (p.ragged) {
    p.b = PowerOfTwoAtLeast(num_seqs, 1);
    p.s = PowerOfTwoAtLeast(max_seqlen, 128);
  }
  return p;
}

// Padded rows (sequences x padded length) at most this many times the tokens: past it the fp32
// workspace (stats, softmax sums, dq accumulators, all padded) outgrows what the tokens need, and
// our kernels, whose scratch follows the tokens, take the batch. Small batches, up to kFreePadding
// padded rows, may pad any amount.
constexpr int64_t kMaxPadding = 4;
constexpr int64_t kFreePadding = 8192;

// Whether the problem's graphs set scores to -inf anywhere.
bool Masks(const Problem& p) { return p.ragged || p.causal; }

// Byte offsets of the pieces of a call's workspace, each 256-byte aligned.
struct Layout {
  size_t stats = 0, softmax_sum = 0, dq_accum = 0, seq_len = 0, ragged_q = 0, ragged_kv = 0;
  size_t cudnn = 0, total = 0;
};

size_t Align(size_t n) { return (n + 255) / 256 * 256; }

Layout LayoutFor(const Problem& p, int64_t cudnn_bytes) {
  Layout l;
  size_t at = 0;
  const auto take = [&at](size_t bytes) {
    const size_t here = at;
    at += Align(bytes);
    return here;
  };
  const size_t rows = static_cast<size_t>(p.b * p.h * p.s);
  l.stats = take(rows * sizeof(float));
  if (p.backward) {
    l.softmax_sum = take(rows * sizeof(float));
    l.dq_accum = take(rows * p.d * sizeof(float));
  }
  if (p.ragged) {
    l.seq_len = take(p.b * sizeof(int32_t));
    l.ragged_q = take((p.b + 1) * sizeof(int32_t));
    l.ragged_kv = take((p.b + 1) * sizeof(int32_t));
  }
  l.cudnn = take(static_cast<size_t>(cudnn_bytes));
  l.total = at;
  return l;
}

// Describes the SDPA graphs of one problem.
class SdpaGraph {
 public:
  explicit SdpaGraph(const Problem& p) : p_(p) {}

  absl::StatusOr<std::unique_ptr<CudnnGraph::Plan>> Build(cudnnHandle_t handle) && {
    MIMO_RETURN_IF_ERROR(p_.backward ? Backward() : Forward());
    return std::move(graph_).Finish(handle);
  }

 private:
  using Desc = cudnnBackendDescriptor_t;
  using Dims = std::vector<int64_t>;

  absl::StatusOr<Desc> Virtual(Dims dims, Dims strides, cudnnDataType_t dtype = CUDNN_DATA_FLOAT) {
    return graph_.Tensor({.uid = next_uid_++,
                          .dtype = dtype,
                          .dims = std::move(dims),
                          .strides = std::move(strides),
                          .is_virtual = true});
  }
  absl::StatusOr<Desc> Memory(int64_t uid, Dims dims, Dims strides, cudnnDataType_t dtype,
                              Desc ragged = nullptr) {
    return graph_.Tensor({.uid = uid,
                          .dtype = dtype,
                          .dims = std::move(dims),
                          .strides = std::move(strides),
                          .ragged_offset = ragged});
  }
  absl::StatusOr<Desc> Scalar(int64_t uid) {
    return graph_.Tensor({.uid = uid,
                          .dtype = CUDNN_DATA_FLOAT,
                          .dims = {1, 1, 1, 1},
                          .strides = {1, 1, 1, 1},
                          .by_value = true});
  }

  // The problem's shapes. Q-shaped tensors hold token t of sequence i at row
  // cu_seqlens[i] + t of a (tokens, heads, head_dim) array.
  Dims QDims() const { return {p_.b, p_.h, p_.s, p_.d}; }
  Dims QStrides() const { return {p_.s * p_.h * p_.d, p_.d, p_.h * p_.d, 1}; }
  Dims KDims() const { return {p_.b, p_.hk, p_.s, p_.d}; }
  Dims KStrides() const { return {p_.s * p_.hk * p_.d, p_.d, p_.hk * p_.d, 1}; }
  // K and V seen transposed: (b, hk, d, s).
  Dims KtDims() const { return {p_.b, p_.hk, p_.d, p_.s}; }
  Dims KtStrides() const { return {p_.s * p_.hk * p_.d, p_.d, 1, p_.hk * p_.d}; }
  Dims ScoreDims() const { return {p_.b, p_.h, p_.s, p_.s}; }
  Dims ScoreStrides() const { return {p_.h * p_.s * p_.s, p_.s * p_.s, p_.s, 1}; }
  Dims ScoreTStrides() const { return {p_.h * p_.s * p_.s, p_.s * p_.s, 1, p_.s}; }
  Dims RowDims() const { return {p_.b, p_.h, p_.s, 1}; }
  Dims RowStrides() const { return {p_.h * p_.s, p_.s, 1, 1}; }
  Dims PackedQStrides() const { return {p_.h * p_.s * p_.d, p_.s * p_.d, p_.d, 1}; }

  // The ragged offsets, sequence lengths and constants every graph uses.
  absl::Status Common() {
    if (p_.ragged) {
      MIMO_ASSIGN_OR_RETURN(ragged_q_,
                            Memory(kRaggedQ, {p_.b + 1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_INT32));
      MIMO_ASSIGN_OR_RETURN(ragged_kv_,
                            Memory(kRaggedKv, {p_.b + 1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_INT32));
      MIMO_ASSIGN_OR_RETURN(seq_q_,
                            Memory(kSeqLen, {p_.b, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_INT32));
      MIMO_ASSIGN_OR_RETURN(seq_kv_,
                            Memory(kSeqLenKv, {p_.b, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_INT32));
    }
    MIMO_ASSIGN_OR_RETURN(scale_, Scalar(kScale));
    // Only a graph with a mask has it (a variant pack may not name a tensor the graph lacks).
    if (Masks(p_)) {
      MIMO_ASSIGN_OR_RETURN(neg_inf_, Scalar(kNegInf));
    }
    return absl::OkStatus();
  }

  // Scores with the padding (rows and columns past their sequence's length) and the causal
  // upper triangle set to -inf.
  absl::StatusOr<Desc> Masked(Desc scores) {
    if (p_.ragged) {
      MIMO_ASSIGN_OR_RETURN(Desc row, Virtual(ScoreDims(), ScoreStrides(), CUDNN_DATA_INT32));
      MIMO_ASSIGN_OR_RETURN(Desc col, Virtual(ScoreDims(), ScoreStrides(), CUDNN_DATA_INT32));
      MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_GEN_INDEX, scores, nullptr, row,
                                            nullptr, CUDNN_DATA_INT32, 2));
      MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_GEN_INDEX, scores, nullptr, col,
                                            nullptr, CUDNN_DATA_INT32, 3));
      MIMO_ASSIGN_OR_RETURN(Desc row_in, Virtual(ScoreDims(), ScoreStrides(), CUDNN_DATA_BOOLEAN));
      MIMO_ASSIGN_OR_RETURN(Desc col_in, Virtual(ScoreDims(), ScoreStrides(), CUDNN_DATA_BOOLEAN));
      MIMO_ASSIGN_OR_RETURN(Desc in, Virtual(ScoreDims(), ScoreStrides(), CUDNN_DATA_BOOLEAN));
      MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_CMP_LT, row, seq_q_, row_in, nullptr,
                                            CUDNN_DATA_BOOLEAN));
      MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_CMP_LT, col, seq_kv_, col_in, nullptr,
                                            CUDNN_DATA_BOOLEAN));
      MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_LOGICAL_AND, row_in, col_in, in,
                                            nullptr, CUDNN_DATA_BOOLEAN));
      MIMO_ASSIGN_OR_RETURN(Desc padded, Virtual(ScoreDims(), ScoreStrides()));
      MIMO_RETURN_IF_ERROR(
          graph_.Pointwise(CUDNN_POINTWISE_BINARY_SELECT, scores, neg_inf_, padded, in));
      scores = padded;
    }
    if (p_.causal) {
      MIMO_ASSIGN_OR_RETURN(Desc row, Virtual(ScoreDims(), ScoreStrides(), CUDNN_DATA_INT32));
      MIMO_ASSIGN_OR_RETURN(Desc col, Virtual(ScoreDims(), ScoreStrides(), CUDNN_DATA_INT32));
      MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_GEN_INDEX, scores, nullptr, row,
                                            nullptr, CUDNN_DATA_INT32, 2));
      MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_GEN_INDEX, scores, nullptr, col,
                                            nullptr, CUDNN_DATA_INT32, 3));
      MIMO_ASSIGN_OR_RETURN(Desc keep, Virtual(ScoreDims(), ScoreStrides(), CUDNN_DATA_BOOLEAN));
      MIMO_RETURN_IF_ERROR(
          graph_.Pointwise(CUDNN_POINTWISE_CMP_GE, row, col, keep, nullptr, CUDNN_DATA_BOOLEAN));
      MIMO_ASSIGN_OR_RETURN(Desc causal, Virtual(ScoreDims(), ScoreStrides()));
      MIMO_RETURN_IF_ERROR(
          graph_.Pointwise(CUDNN_POINTWISE_BINARY_SELECT, scores, neg_inf_, causal, keep));
      scores = causal;
    }
    return scores;
  }

  CudnnMatmulOverrides Rows(Desc m, Desc n, Desc k) const {
    if (!p_.ragged) return {};
    return {.m = m, .n = n, .k = k};
  }

  // Scores = Q K^T (b, h, s, s); probabilities from them; O = P V; Stats = the rows' logsumexp.
  absl::Status Forward() {
    MIMO_RETURN_IF_ERROR(Common());
    MIMO_ASSIGN_OR_RETURN(Desc q, Memory(kQ, QDims(), QStrides(), CUDNN_DATA_BFLOAT16, ragged_q_));
    MIMO_ASSIGN_OR_RETURN(Desc kt,
                          Memory(kK, KtDims(), KtStrides(), CUDNN_DATA_BFLOAT16, ragged_kv_));
    MIMO_ASSIGN_OR_RETURN(Desc v, Memory(kV, KDims(), KStrides(), CUDNN_DATA_BFLOAT16, ragged_kv_));
    MIMO_ASSIGN_OR_RETURN(Desc o, Memory(kO, QDims(), QStrides(), CUDNN_DATA_BFLOAT16, ragged_q_));
    MIMO_ASSIGN_OR_RETURN(Desc stats, Memory(kStats, RowDims(), RowStrides(), CUDNN_DATA_FLOAT));

    MIMO_ASSIGN_OR_RETURN(Desc s, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Matmul(q, kt, s, Rows(seq_q_, seq_kv_, nullptr)));
    MIMO_ASSIGN_OR_RETURN(Desc scaled, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_MUL, s, scale_, scaled));
    MIMO_ASSIGN_OR_RETURN(Desc masked, Masked(scaled));
    MIMO_ASSIGN_OR_RETURN(Desc max, Virtual(RowDims(), RowStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Reduction(CUDNN_REDUCE_TENSOR_MAX, masked, max));
    MIMO_ASSIGN_OR_RETURN(Desc shifted, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_SUB, masked, max, shifted));
    MIMO_ASSIGN_OR_RETURN(Desc e, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_EXP, shifted, nullptr, e));
    MIMO_ASSIGN_OR_RETURN(Desc sum, Virtual(RowDims(), RowStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Reduction(CUDNN_REDUCE_TENSOR_ADD, e, sum));
    MIMO_ASSIGN_OR_RETURN(Desc log_sum, Virtual(RowDims(), RowStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_LOG, sum, nullptr, log_sum));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_ADD, max, log_sum, stats));
    MIMO_ASSIGN_OR_RETURN(Desc probs, Virtual(ScoreDims(), ScoreStrides(), CUDNN_DATA_BFLOAT16));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_DIV, e, sum, probs));
    return graph_.Matmul(probs, v, o, Rows(seq_q_, nullptr, seq_kv_));
  }

  // dst = a · b, summed over the query heads of each kv head when there are groups.
  absl::Status KvGradient(Desc a, Desc b, Desc dst) {
    const auto rows = Rows(seq_kv_, nullptr, seq_q_);
    if (p_.h == p_.hk) return graph_.Matmul(a, b, dst, rows);
    MIMO_ASSIGN_OR_RETURN(Desc full, Virtual(QDims(), PackedQStrides(), CUDNN_DATA_BFLOAT16));
    MIMO_RETURN_IF_ERROR(graph_.Matmul(a, b, full, rows));
    return graph_.Reduction(CUDNN_REDUCE_TENSOR_ADD, full, dst);
  }

  absl::Status Backward() {
    MIMO_RETURN_IF_ERROR(Common());
    MIMO_ASSIGN_OR_RETURN(Desc one, Scalar(kOne));
    MIMO_ASSIGN_OR_RETURN(Desc q, Memory(kQ, QDims(), QStrides(), CUDNN_DATA_BFLOAT16, ragged_q_));
    MIMO_ASSIGN_OR_RETURN(Desc kt,
                          Memory(kK, KtDims(), KtStrides(), CUDNN_DATA_BFLOAT16, ragged_kv_));
    MIMO_ASSIGN_OR_RETURN(Desc vt,
                          Memory(kV, KtDims(), KtStrides(), CUDNN_DATA_BFLOAT16, ragged_kv_));
    MIMO_ASSIGN_OR_RETURN(Desc o, Memory(kO, QDims(), QStrides(), CUDNN_DATA_BFLOAT16, ragged_q_));
    MIMO_ASSIGN_OR_RETURN(Desc d_o,
                          Memory(kDO, QDims(), QStrides(), CUDNN_DATA_BFLOAT16, ragged_q_));
    MIMO_ASSIGN_OR_RETURN(Desc stats, Memory(kStats, RowDims(), RowStrides(), CUDNN_DATA_FLOAT));
    MIMO_ASSIGN_OR_RETURN(Desc dq,
                          Memory(kDQ, QDims(), QStrides(), CUDNN_DATA_BFLOAT16, ragged_q_));
    MIMO_ASSIGN_OR_RETURN(Desc dk,
                          Memory(kDK, KDims(), KStrides(), CUDNN_DATA_BFLOAT16, ragged_kv_));
    MIMO_ASSIGN_OR_RETURN(Desc dv,
                          Memory(kDV, KDims(), KStrides(), CUDNN_DATA_BFLOAT16, ragged_kv_));
    MIMO_ASSIGN_OR_RETURN(Desc softmax_sum,
                          Memory(kSoftmaxSum, RowDims(), RowStrides(), CUDNN_DATA_FLOAT));
    MIMO_ASSIGN_OR_RETURN(Desc dq_accum,
                          Memory(kDQAccum, QDims(), PackedQStrides(), CUDNN_DATA_FLOAT));

    // softmax_sum = rowsum(dO * O).
    MIMO_ASSIGN_OR_RETURN(Desc d_o_o, Virtual(QDims(), PackedQStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_MUL, d_o, o, d_o_o));
    MIMO_ASSIGN_OR_RETURN(Desc row_sum, Virtual(RowDims(), RowStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Reduction(CUDNN_REDUCE_TENSOR_ADD, d_o_o, row_sum));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_MUL, row_sum, one, softmax_sum));

    // P = exp(scale * Q K^T - Stats), masked.
    MIMO_ASSIGN_OR_RETURN(Desc s, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Matmul(q, kt, s, Rows(seq_q_, seq_kv_, nullptr)));
    MIMO_ASSIGN_OR_RETURN(Desc scaled, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_MUL, s, scale_, scaled));
    MIMO_ASSIGN_OR_RETURN(Desc shifted, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_SUB, scaled, stats, shifted));
    MIMO_ASSIGN_OR_RETURN(Desc masked, Masked(shifted));
    MIMO_ASSIGN_OR_RETURN(Desc p, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_EXP, masked, nullptr, p));

    // dV = P^T dO.
    MIMO_ASSIGN_OR_RETURN(Desc pt, Virtual(ScoreDims(), ScoreTStrides(), CUDNN_DATA_BFLOAT16));
    MIMO_RETURN_IF_ERROR(graph_.Reshape(p, pt));
    MIMO_RETURN_IF_ERROR(KvGradient(pt, d_o, dv));

    // dS = scale * P * (dO V^T - softmax_sum).
    MIMO_ASSIGN_OR_RETURN(Desc dp, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Matmul(d_o, vt, dp, Rows(seq_q_, seq_kv_, nullptr)));
    MIMO_ASSIGN_OR_RETURN(Desc centered, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_SUB, dp, softmax_sum, centered));
    MIMO_ASSIGN_OR_RETURN(Desc weighted, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_MUL, centered, p, weighted));
    MIMO_ASSIGN_OR_RETURN(Desc ds, Virtual(ScoreDims(), ScoreStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Pointwise(CUDNN_POINTWISE_MUL, weighted, scale_, ds));

    // dK = dS^T Q.
    MIMO_ASSIGN_OR_RETURN(Desc dst, Virtual(ScoreDims(), ScoreTStrides(), CUDNN_DATA_BFLOAT16));
    MIMO_RETURN_IF_ERROR(graph_.Reshape(ds, dst));
    MIMO_RETURN_IF_ERROR(KvGradient(dst, q, dk));

    // dQ = dS K, accumulated in fp32, then rounded.
    MIMO_ASSIGN_OR_RETURN(Desc k, Virtual(KDims(), KStrides()));
    MIMO_RETURN_IF_ERROR(graph_.Reshape(kt, k));
    MIMO_RETURN_IF_ERROR(graph_.Matmul(ds, k, dq_accum, Rows(seq_q_, nullptr, seq_kv_)));
    return graph_.Pointwise(CUDNN_POINTWISE_IDENTITY, dq_accum, nullptr, dq);
  }

  Problem p_;
  CudnnGraph graph_;
  int64_t next_uid_ = kFirstVirtual;
  Desc ragged_q_ = nullptr, ragged_kv_ = nullptr, seq_q_ = nullptr, seq_kv_ = nullptr;
  Desc scale_ = nullptr, neg_inf_ = nullptr;
};

}  // namespace

struct CudnnAttention::State {
  int device = 0;
  cudnnHandle_t handle = nullptr;
  absl::flat_hash_map<Problem, std::unique_ptr<CudnnGraph::Plan>> plans;
  // Problems cuDNN turned down, with its answer, so they are not built again.
  absl::flat_hash_map<Problem, absl::Status> refused;

  ~State() {
    if (handle == nullptr) return;  // No plans either.
    // The plans and the handle belong to `device`, whichever device the thread has current.
    CudaDeviceGuard guard(device);
    // Work enqueued earlier may still use the plans' kernels. (The handle's last stream may be
    // gone by now: the whole device is waited for.)
    cudaDeviceSynchronize();
    plans.clear();
    cudnnDestroy(handle);
  }

  absl::StatusOr<const CudnnGraph::Plan*> PlanFor(const Problem& p) {
    if (auto it = plans.find(p); it != plans.end()) return it->second.get();
    if (auto it = refused.find(p); it != refused.end()) return it->second;
    absl::StatusOr<std::unique_ptr<CudnnGraph::Plan>> plan = SdpaGraph(p).Build(handle);
    if (!plan.ok()) {
      const absl::Status why(
          plan.status().code(),
          absl::StrCat("cuDNN attention ", p.backward ? "backward" : "forward", " (b ", p.b, ", s ",
                       p.s, ", heads ", p.h, "/", p.hk, ", head_dim ", p.d,
                       p.causal ? ", causal" : "", p.ragged ? ", ragged" : "",
                       "): ", plan.status().message()));
      // The parameters passed CheckAttention: whatever else cuDNN objects to is "not this problem"
      // (Unimplemented, remembered, and our kernels take it), short of running out of memory.
      if (why.code() == absl::StatusCode::kResourceExhausted) return why;
      const absl::Status refusal = absl::UnimplementedError(why.message());
      refused.emplace(p, refusal);
      return refusal;
    }
    return plans.emplace(p, *std::move(plan)).first->second.get();
  }
};

CudnnAttention::CudnnAttention(std::unique_ptr<State> state) : state_(std::move(state)) {}
CudnnAttention::~CudnnAttention() = default;

absl::StatusOr<std::unique_ptr<CudnnAttention>> CudnnAttention::Create() {
  auto state = std::make_unique<State>();
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDevice(&state->device));
  int major = 0;
  MIMO_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, state->device));
  if (major < 9) {
    return absl::UnimplementedError(absl::StrCat("cuDNN attention: device ", state->device,
                                                 " has compute capability ", major,
                                                 ".x; these graphs need 9.0 (Hopper) or newer"));
  }
  // 9.6 zeroes the dq accumulators itself and takes grouped-query heads in ragged batches;
  // 9.10.0 and 9.10.1 have a known bf16 backward fault.
  const size_t version = cudnnGetVersion();
  if (version < 90600 || version == 91000 || version == 91001) {
    return absl::UnimplementedError(
        absl::StrCat("cuDNN attention: cuDNN ", version,
                     " is loaded; these graphs need 9.6 or newer (not 9.10.0 or 9.10.1)"));
  }
  // A cuDNN that cannot start (a missing sub-library, say) means no cuDNN attention, not an error.
  const absl::Status created =
      CudnnStatus(cudnnCreate(&state->handle), "cudnnCreate", __FILE__, __LINE__);
  if (!created.ok()) {
    state->handle = nullptr;
    return absl::UnimplementedError(created.message());
  }
  return std::unique_ptr<CudnnAttention>(new CudnnAttention(std::move(state)));
}

bool CudnnAttention::Handles(DType dtype, int64_t num_seqs, int64_t head_dim) {
  // cuDNN 9.14 accepts head_dim 256 on an H100 but leaves outputs unwritten: not taken.
  return dtype == DType::kBF16 && num_seqs >= 1 && head_dim % 8 == 0 && head_dim <= 128;
}

size_t CudnnAttention::cached_plans() const { return state_->plans.size(); }

namespace {

// Unimplemented for what cuDNN is not asked to do (the parameters' own errors come first, from
// CheckAttention); InvalidArgument for a buffer not 16-byte aligned, as LaunchAttention says.
absl::Status CheckHandled(DType dtype, int64_t num_seqs, int64_t total_tokens, int64_t heads,
                          int64_t head_dim, int64_t max_seqlen,
                          std::initializer_list<std::pair<const char*, const void*>> buffers) {
  for (const auto& [name, ptr] : buffers) {
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cuDNN attention: ", name, " is not 16-byte aligned"));
    }
  }
  if (!CudnnAttention::Handles(dtype, num_seqs, head_dim)) {
    return absl::UnimplementedError(
        absl::StrCat("cuDNN attention takes bf16, head_dim a multiple of 8 up to 128 and at least "
                     "one sequence; got ",
                     DTypeName(dtype), ", head_dim ", head_dim, ", ", num_seqs, " sequences"));
  }
  if (max_seqlen < 1) {
    return absl::UnimplementedError("cuDNN attention needs max_seqlen (the longest sequence)");
  }
  if (total_tokens * heads * head_dim > std::numeric_limits<int32_t>::max()) {
    return absl::UnimplementedError(
        "cuDNN attention: the tensors' element offsets exceed int32 (cuDNN's ragged offsets)");
  }
  const Problem padded = Describe(false, num_seqs, total_tokens, max_seqlen, 1, 1, 1, false);
  if (padded.ragged && padded.b * padded.s > std::max(kMaxPadding * total_tokens, kFreePadding)) {
    return absl::UnimplementedError(
        absl::StrCat("cuDNN attention: ", num_seqs, " sequences of up to ", max_seqlen, " tokens (",
                     total_tokens, " in all) pad to ", padded.b, " x ", padded.s, " rows, over ",
                     kMaxPadding, " times the tokens"));
  }
  return absl::OkStatus();
}

// A forward call's checks: CheckAttention's, then (with tokens) what cuDNN is not asked to take.
absl::Status CheckCall(const AttentionParams& p) {
  MIMO_RETURN_IF_ERROR(CheckAttention(p));
  if (p.total_tokens == 0) return absl::OkStatus();
  return CheckHandled(p.dtype, p.num_seqs, p.total_tokens, p.heads, p.head_dim, p.max_seqlen,
                      {{"q", p.q}, {"k", p.k}, {"v", p.v}, {"out", p.out}});
}

absl::Status CheckCall(const AttentionBackwardParams& p) {
  MIMO_RETURN_IF_ERROR(CheckAttentionBackward(p));
  if (p.total_tokens == 0) return absl::OkStatus();
  return CheckHandled(p.dtype, p.num_seqs, p.total_tokens, p.heads, p.head_dim, p.max_seqlen,
                      {{"q", p.q},
                       {"k", p.k},
                       {"v", p.v},
                       {"out", p.out},
                       {"dout", p.dout},
                       {"dq", p.dq},
                       {"dk", p.dk},
                       {"dv", p.dv}});
}

// A call's problem, plan and workspace layout; no plan when there are no tokens (nothing to do).
struct Prepared {
  Problem problem;
  const CudnnGraph::Plan* plan = nullptr;
  Layout layout;
};

// Checks a call (AttentionParams or AttentionBackwardParams) and finds its plan through
// `plans.PlanFor(problem)` (the CudnnAttention's state).
template <typename Params, typename Plans>
absl::StatusOr<Prepared> Prepare(const Params& p, Plans& plans) {
  MIMO_RETURN_IF_ERROR(CheckCall(p));
  Prepared out;
  if (p.total_tokens == 0) return out;
  constexpr bool kBackward = std::is_same_v<Params, AttentionBackwardParams>;
  out.problem = Describe(kBackward, p.num_seqs, p.total_tokens, p.max_seqlen, p.heads, p.kv_heads,
                         p.head_dim, p.causal);
  MIMO_ASSIGN_OR_RETURN(out.plan, plans.PlanFor(out.problem));
  out.layout = LayoutFor(out.problem, out.plan->workspace_bytes);
  return out;
}

template <typename T>
T* At(void* base, size_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

// The masks' inputs, added to a variant pack: the -inf constant of a masked graph and, for a
// ragged batch, the sequence lengths and ragged offsets, computed into the workspace on `stream`.
template <typename Params>
absl::Status AddMaskInputs(const Problem& problem, const Layout& layout, const Params& p,
                           void* workspace, float* neg_inf, StreamHandle stream,
                           std::vector<int64_t>& uids, std::vector<void*>& pointers) {
  if (Masks(problem)) {
    uids.push_back(kNegInf);
    pointers.push_back(neg_inf);
  }
  if (!problem.ragged) return absl::OkStatus();
  auto* seq_len = At<int32_t>(workspace, layout.seq_len);
  auto* ragged_q = At<int32_t>(workspace, layout.ragged_q);
  auto* ragged_kv = At<int32_t>(workspace, layout.ragged_kv);
  MIMO_RETURN_IF_ERROR(LaunchCudnnVarlen({.cu_seqlens = p.cu_seqlens,
                                          .num_seqs = p.num_seqs,
                                          .padded_seqs = problem.b,
                                          .max_seqlen = problem.s,
                                          .heads = p.heads,
                                          .kv_heads = p.kv_heads,
                                          .head_dim = p.head_dim,
                                          .seq_len = seq_len,
                                          .q_offsets = ragged_q,
                                          .kv_offsets = ragged_kv},
                                         stream));
  uids.insert(uids.end(), {kSeqLen, kSeqLenKv, kRaggedQ, kRaggedKv});
  pointers.insert(pointers.end(), {seq_len, seq_len, ragged_q, ragged_kv});
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<size_t> CudnnAttention::ForwardWorkspaceBytes(const AttentionParams& p) {
  MIMO_ASSIGN_OR_RETURN(const Prepared call, Prepare(p, *state_));
  return call.plan == nullptr ? 0 : call.layout.total;
}

absl::StatusOr<size_t> CudnnAttention::BackwardWorkspaceBytes(const AttentionBackwardParams& p) {
  MIMO_ASSIGN_OR_RETURN(const Prepared call, Prepare(p, *state_));
  return call.plan == nullptr ? 0 : call.layout.total;
}

absl::Status CudnnAttention::Forward(const AttentionParams& p, void* workspace,
                                     size_t workspace_bytes, StreamHandle stream) {
  MIMO_ASSIGN_OR_RETURN(const Prepared call, Prepare(p, *state_));
  if (call.plan == nullptr) return absl::OkStatus();
  if (workspace == nullptr || workspace_bytes < call.layout.total) {
    return absl::InvalidArgumentError(absl::StrCat("cuDNN attention forward: workspace of ",
                                                   workspace_bytes, " bytes, needs ",
                                                   call.layout.total));
  }
  const Problem& problem = call.problem;
  const Layout& layout = call.layout;
  const CudnnGraph::Plan* plan = call.plan;
  const auto s = static_cast<cudaStream_t>(stream);
  MIMO_CUDNN_RETURN_IF_ERROR(cudnnSetStream(state_->handle, s));
  float scale = p.scale, neg_inf = -std::numeric_limits<float>::infinity();
  auto* stats = At<float>(workspace, layout.stats);
  std::vector<int64_t> uids = {kQ, kK, kV, kO, kStats, kScale};
  std::vector<void*> pointers = {
      const_cast<void*>(p.q), const_cast<void*>(p.k), const_cast<void*>(p.v), p.out, stats, &scale};
  MIMO_RETURN_IF_ERROR(
      AddMaskInputs(problem, layout, p, workspace, &neg_inf, stream, uids, pointers));
  MIMO_RETURN_IF_ERROR(
      CudnnExecute(state_->handle, *plan, uids, pointers, At<char>(workspace, layout.cudnn)));
  return LaunchCudnnStats({.cu_seqlens = p.cu_seqlens,
                           .num_seqs = p.num_seqs,
                           .padded_seqs = problem.b,
                           .heads = p.heads,
                           .total_tokens = p.total_tokens,
                           .max_seqlen = problem.s,
                           .lse = p.lse,
                           .stats = stats,
                           .to_stats = false},
                          stream);
}

absl::Status CudnnAttention::Backward(const AttentionBackwardParams& p, void* workspace,
                                      size_t workspace_bytes, StreamHandle stream) {
  MIMO_ASSIGN_OR_RETURN(const Prepared call, Prepare(p, *state_));
  if (call.plan == nullptr) return absl::OkStatus();
  if (workspace == nullptr || workspace_bytes < call.layout.total) {
    return absl::InvalidArgumentError(absl::StrCat("cuDNN attention backward: workspace of ",
                                                   workspace_bytes, " bytes, needs ",
                                                   call.layout.total));
  }
  const Problem& problem = call.problem;
  const Layout& layout = call.layout;
  const CudnnGraph::Plan* plan = call.plan;
  const auto s = static_cast<cudaStream_t>(stream);
  MIMO_CUDNN_RETURN_IF_ERROR(cudnnSetStream(state_->handle, s));
  auto* stats = At<float>(workspace, layout.stats);
  MIMO_RETURN_IF_ERROR(LaunchCudnnStats({.cu_seqlens = p.cu_seqlens,
                                         .num_seqs = p.num_seqs,
                                         .padded_seqs = problem.b,
                                         .heads = p.heads,
                                         .total_tokens = p.total_tokens,
                                         .max_seqlen = problem.s,
                                         .lse = const_cast<float*>(p.lse),
                                         .stats = stats,
                                         .to_stats = true},
                                        stream));
  float scale = p.scale, neg_inf = -std::numeric_limits<float>::infinity(), one = 1.0f;
  std::vector<int64_t> uids = {kQ,  kK,  kV,     kO,   kDO,         kStats,  kDQ,
                               kDK, kDV, kScale, kOne, kSoftmaxSum, kDQAccum};
  std::vector<void*> pointers = {const_cast<void*>(p.q),
                                 const_cast<void*>(p.k),
                                 const_cast<void*>(p.v),
                                 const_cast<void*>(p.out),
                                 const_cast<void*>(p.dout),
                                 stats,
                                 p.dq,
                                 p.dk,
                                 p.dv,
                                 &scale,
                                 &one,
                                 At<float>(workspace, layout.softmax_sum),
                                 At<float>(workspace, layout.dq_accum)};
  MIMO_RETURN_IF_ERROR(
      AddMaskInputs(problem, layout, p, workspace, &neg_inf, stream, uids, pointers));
  return CudnnExecute(state_->handle, *plan, uids, pointers, At<char>(workspace, layout.cudnn));
}

}  // namespace mimo::kernels
