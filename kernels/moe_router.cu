// MoE routing: the CUDA kernels. Routing and its backward run a warp per token (group-limited
// routing one thread per token, the CPU twin's per-token arithmetic of moe_router_math.h); the
// per-expert counts are integer atomics and the losses' reductions run in a fixed order, so every
// result is reproducible bit for bit.
#include <cuda_runtime_api.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda_block_reduce.cuh"
#include "kernels/cuda_grid.cuh"
#include "kernels/cuda_status.h"
#include "kernels/moe_router.h"
#include "kernels/moe_router_math.h"

namespace mimo::kernels {
namespace {

constexpr int kThreads = 128;

unsigned Blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__global__ void RouterKernel(RouterConfig c, const float* __restrict__ logits,
                             const float* __restrict__ bias, float* __restrict__ scores,
                             int32_t* __restrict__ indices, float* __restrict__ probs,
                             int32_t* __restrict__ tokens_per_expert, int64_t tokens) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  float* s = scores + t * c.experts;
  int32_t* idx = indices + t * c.top_k;
  router::Scores(c, logits + t * c.experts, s);
  router::Choose(c, s, bias, idx, probs + t * c.top_k);
  for (int64_t j = 0; j < c.top_k; ++j) atomicAdd(tokens_per_expert + idx[j], 1);
}

// The warp-per-token kernels below (the forward without group-limited routing, and the
// backward): a warp's lanes hold experts lane, lane + 32, ..., so a token's row is read and
// written whole 128-byte lines at a time (one thread per token touched a 512-byte-strided line
// per expert: 633 us for the Qwen3 router of 32768 tokens x 128 experts on an H100). They choose
// the same experts as the CPU twin, whose softmax sum takes the warp reduction's order.
constexpr int kRouterWarps = 8;

// A candidate expert: its (biased) score and index; e < 0 when there is none.
struct Candidate {
  float v;
  int e;
};

// The better of two candidates: the higher score, on a tie the lower index (the CPU twin's first
// strict maximum in index order).
__device__ __forceinline__ Candidate Better(Candidate a, Candidate b) {
  if (a.e < 0) return b;
  if (b.e < 0) return a;
  if (b.v > a.v || (!(a.v > b.v) && b.e < a.e)) return b;
  return a;
}

// Blocks for a grid-stride loop of one warp per token: about two per SM, fewer for few tokens,
// so each block adds its per-expert counts to the global ones once.
unsigned RouterWarpBlocks(int64_t tokens) {
  const int64_t needed = (tokens + kRouterWarps - 1) / kRouterWarps;
  return static_cast<unsigned>(std::min<int64_t>(needed, 2 * MultiprocessorCount()));
}

// Shared memory: a row of scores per warp, then the block's per-expert counts.
size_t RouterWarpSmem(int64_t experts) {
  return sizeof(float) * kRouterWarps * experts + sizeof(int32_t) * experts;
}

__global__ void RouterWarpKernel(RouterConfig c, const float* __restrict__ logits,
                                 const float* __restrict__ bias, float* __restrict__ scores,
                                 int32_t* __restrict__ indices, float* __restrict__ probs,
                                 int32_t* __restrict__ tokens_per_expert, int64_t tokens) {
  extern __shared__ float smem[];
  const int experts = static_cast<int>(c.experts), top_k = static_cast<int>(c.top_k);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* s = smem + warp * experts;  // (experts,) this warp's token's scores
  auto* counts = reinterpret_cast<int32_t*>(smem + kRouterWarps * experts);  // (experts,)
  for (int e = threadIdx.x; e < experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRouterWarps + warp; t < tokens;
       t += static_cast<int64_t>(gridDim.x) * kRouterWarps) {
    const float* l = logits + t * experts;
    if (c.score == RouterScore::kSigmoid) {
      for (int e = lane; e < experts; e += 32) s[e] = 1.0f / (1.0f + router::Exp(-l[e]));
    } else {
      float m = -INFINITY;
      for (int e = lane; e < experts; e += 32) m = fmaxf(m, l[e]);
      m = WarpMax(m);
      float z = 0.0f;
      for (int e = lane; e < experts; e += 32) {
        s[e] = router::Exp(l[e] - m);
        z += s[e];
      }
      const float inv = 1.0f / WarpSum(z);
      for (int e = lane; e < experts; e += 32) s[e] *= inv;
    }
    __syncwarp();  // Every lane reads the chosen experts' scores below.
    for (int e = lane; e < experts; e += 32) scores[t * experts + e] = s[e];
    // Choice j: each lane's best untaken expert, then the warp's best of those.
    uint32_t taken = 0;  // Bit i: expert lane + 32 i.
    float sum = 0.0f, mine_p = 0.0f;
    int mine_e = 0;
    for (int j = 0; j < top_k; ++j) {
      Candidate best{0.0f, -1};
      for (int i = 0, e = lane; e < experts; ++i, e += 32) {
        if ((taken >> i) & 1u) continue;
        const float v = router::Biased(s, bias, e);
        if (best.e < 0 || v > best.v) best = {v, e};
      }
      for (int o = 16; o > 0; o /= 2) {
        const Candidate other{__shfl_xor_sync(0xffffffffu, best.v, o),
                              __shfl_xor_sync(0xffffffffu, best.e, o)};
        best = Better(best, other);
      }
      if (best.e % 32 == lane) taken |= 1u << (best.e / 32);
      const float p = s[best.e];
      sum += p;
      if (lane == j) mine_p = p, mine_e = best.e;
      if (lane == 0) atomicAdd(counts + best.e, 1);
    }
    const float scale =
        router::Normalizes(c) ? c.scaling_factor / (sum + router::kNormEps) : c.scaling_factor;
    if (lane < top_k) {
      indices[t * top_k + lane] = mine_e;
      probs[t * top_k + lane] = mine_p * scale;
    }
    __syncwarp();  // s is rewritten for the next token.
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    if (counts[e] != 0) atomicAdd(tokens_per_expert + e, counts[e]);
  }
}

// The CPU twin's router::Backward, a warp per token: the chosen experts' terms by lane j (in
// choice order, as the twin adds them), each expert's gradient by its lane.
__global__ void RouterBackwardWarpKernel(RouterConfig c, const float* __restrict__ dprobs,
                                         const float* __restrict__ scores,
                                         const int32_t* __restrict__ indices,
                                         float* __restrict__ dlogits, int64_t tokens) {
  const int experts = static_cast<int>(c.experts), top_k = static_cast<int>(c.top_k);
  const int lane = threadIdx.x % 32;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRouterWarps + threadIdx.x / 32; t < tokens;
       t += static_cast<int64_t>(gridDim.x) * kRouterWarps) {
    const float* st = scores + t * experts;
    const int my_e = lane < top_k ? indices[t * top_k + lane] : -1;
    const float my_s = lane < top_k ? st[my_e] : 0.0f;
    float my_ds = lane < top_k ? dprobs[t * top_k + lane] * c.scaling_factor : 0.0f;
    float sum = 0.0f;
    for (int j = 0; j < top_k; ++j) sum += __shfl_sync(0xffffffffu, my_s, j);
    const float denom = sum + router::kNormEps;
    float dot = 0.0f;
    for (int j = 0; j < top_k; ++j) {
      dot += __shfl_sync(0xffffffffu, my_ds, j) * __shfl_sync(0xffffffffu, my_s, j) / denom;
    }
    if (router::Normalizes(c)) my_ds = (my_ds - dot) / denom;
    float inner = 0.0f;  // Softmax: the sum over the chosen of ds * s.
    for (int j = 0; j < top_k; ++j) {
      inner += __shfl_sync(0xffffffffu, my_ds, j) * __shfl_sync(0xffffffffu, my_s, j);
    }
    for (int base = 0; base < experts; base += 32) {  // Whole warps: the shuffles need them.
      const int e = base + lane;
      const float s = e < experts ? st[e] : 0.0f;
      float d = c.score == RouterScore::kSigmoid ? 0.0f : -s * inner;
      for (int j = 0; j < top_k; ++j) {
        const int chosen = __shfl_sync(0xffffffffu, my_e, j);
        const float ds = __shfl_sync(0xffffffffu, my_ds, j);
        if (chosen == e) d = c.score == RouterScore::kSigmoid ? ds * s * (1.0f - s) : d + s * ds;
      }
      if (e < experts) dlogits[t * experts + e] = d;
    }
  }
}

// The scratch of the losses: per token the auxiliary scores' normalizer, per (sequence, expert)
// the sum of the auxiliary scores and the count (and their partials per chunk of rows); the
// number of non-empty sequences.
struct AuxScratch {
  float* denom;             // (tokens,)
  float* sums;              // (sequences, experts)
  int32_t* counts;          // (sequences, experts)
  int32_t* nonempty;        // (1,)
  float* partial_sums;      // (sequences, chunks, experts)
  int32_t* partial_counts;  // (sequences, chunks, experts)
};

size_t Align(size_t n) { return (n + 255) / 256 * 256; }

// Chunks of rows each sequence's sums are split into, so that one long sequence (or the whole
// micro-batch, the per-micro-batch loss) keeps many blocks busy: about 64 rows a chunk (8 per
// row lane of a block), at most 1024. A function of the shape only, so the sums' order is too.
// (At 512 rows a chunk, a 3.7k-token micro-batch took 53 us on an H200: 8 blocks, each lane
// walking ~58 rows one dependent load after another.)
int64_t RowChunks(int64_t tokens, int64_t sequences) {
  const int64_t per = 64 * std::max<int64_t>(sequences, 1);
  return std::clamp<int64_t>((tokens + per - 1) / per, 1, 1024);
}

AuxScratch Carve(void* workspace, int64_t tokens, int64_t sequences, int64_t experts) {
  const int64_t chunks = RowChunks(tokens, sequences);
  char* p = static_cast<char*>(workspace);
  AuxScratch s;
  s.denom = reinterpret_cast<float*>(p);
  p += Align(sizeof(float) * tokens);
  s.sums = reinterpret_cast<float*>(p);
  p += Align(sizeof(float) * sequences * experts);
  s.counts = reinterpret_cast<int32_t*>(p);
  p += Align(sizeof(int32_t) * sequences * experts);
  s.nonempty = reinterpret_cast<int32_t*>(p);
  p += Align(sizeof(int32_t));
  s.partial_sums = reinterpret_cast<float*>(p);
  p += Align(sizeof(float) * sequences * chunks * experts);
  s.partial_counts = reinterpret_cast<int32_t*>(p);
  return s;
}

__device__ int64_t SeqBegin(const int32_t* cu, int64_t q, int64_t tokens, bool last) {
  if (cu == nullptr) return last ? tokens : 0;
  return cu[q + (last ? 1 : 0)];
}

__global__ void AuxDenominatorKernel(RouterConfig c, const float* __restrict__ scores,
                                     float* __restrict__ denom, int64_t tokens) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < tokens) denom[t] = router::AuxDenominator(c, scores + t * c.experts);
}

// Block (32 experts, 8 row lanes) per (sequence, 32-expert chunk, chunk z of rows): partial sums
// and counts of rows z * 8 + lane, stepping 8 * chunks, in a fixed order (strided rows per lane,
// then the 8 lanes in order).
__global__ void AuxPartialSumsKernel(RouterConfig c, const float* __restrict__ scores,
                                     const int32_t* __restrict__ indices, const int32_t* cu_seqlens,
                                     AuxScratch scratch, int64_t tokens) {
  __shared__ float s_sum[8][32];
  __shared__ int32_t s_count[8][32];
  const int64_t q = blockIdx.x, z = blockIdx.z, chunks = gridDim.z;
  const int64_t e = static_cast<int64_t>(blockIdx.y) * 32 + threadIdx.x;
  const int64_t begin = SeqBegin(cu_seqlens, q, tokens, false);
  const int64_t end = SeqBegin(cu_seqlens, q, tokens, true);
  float sum = 0.0f;
  int32_t count = 0;
  if (e < c.experts) {
    for (int64_t t = begin + z * 8 + threadIdx.y; t < end; t += 8 * chunks) {
      sum += scores[t * c.experts + e] / scratch.denom[t];
      for (int64_t j = 0; j < c.top_k; ++j) count += indices[t * c.top_k + j] == e ? 1 : 0;
    }
  }
  s_sum[threadIdx.y][threadIdx.x] = sum;
  s_count[threadIdx.y][threadIdx.x] = count;
  __syncthreads();
  if (threadIdx.y == 0 && e < c.experts) {
    for (int y = 1; y < 8; ++y) {
      sum += s_sum[y][threadIdx.x];
      count += s_count[y][threadIdx.x];
    }
    const int64_t at = (q * chunks + z) * c.experts + e;
    scratch.partial_sums[at] = sum;
    scratch.partial_counts[at] = count;
  }
}

// Per (sequence, expert), one warp: lane l adds the partials of chunks l, l + 32, ... in chunk
// order, then the lanes' sums meet in a fixed butterfly, so the order depends on the shape only.
// (A thread per output walking every chunk took 57 us a call on an H100 for one sequence of 14.7k
// tokens: 230 chunks, one load after another.)
__global__ void AuxSumsKernel(RouterConfig c, AuxScratch scratch, int64_t sequences,
                              int64_t chunks) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (i >= sequences * c.experts) return;  // The whole warp: i is the warp's.
  const int64_t q = i / c.experts, e = i % c.experts;
  float sum = 0.0f;
  int32_t count = 0;
  for (int64_t z = lane; z < chunks; z += 32) {
    sum += scratch.partial_sums[(q * chunks + z) * c.experts + e];
    count += scratch.partial_counts[(q * chunks + z) * c.experts + e];
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    count += __shfl_xor_sync(0xffffffffu, count, offset);
  }
  if (lane == 0) {
    scratch.sums[i] = sum;
    scratch.counts[i] = count;
  }
}

constexpr int kFinishThreads = 256;

// Sum of `v` over the block's threads, in a fixed order; the result in thread 0.
__device__ double BlockSum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kFinishThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();
  return total;
}

// One block: the two losses and the number of non-empty sequences.
// `whole` > 0: this call holds part of a micro-batch of `whole` tokens (its counts already in
// the scratch); 0: all of it.
__global__ void AuxFinishKernel(RouterConfig c, const float* __restrict__ logits,
                                const int32_t* cu_seqlens, AuxScratch scratch, int64_t tokens,
                                int64_t whole, int64_t sequences, float aux_coeff, float z_coeff,
                                float* __restrict__ losses) {
  __shared__ double shared[kFinishThreads];
  double aux = 0.0, nonempty = 0.0, z = 0.0;
  for (int64_t q = threadIdx.x; q < sequences; q += kFinishThreads) {
    const int64_t n =
        whole > 0 ? whole
                  : SeqBegin(cu_seqlens, q, tokens, true) - SeqBegin(cu_seqlens, q, tokens, false);
    if (n <= 0) continue;
    double dot = 0.0;
    for (int64_t e = 0; e < c.experts; ++e) {
      dot += static_cast<double>(scratch.counts[q * c.experts + e]) *
             static_cast<double>(scratch.sums[q * c.experts + e]);
    }
    aux += dot * static_cast<double>(c.experts) /
           (static_cast<double>(c.top_k) * static_cast<double>(n) * static_cast<double>(n));
    nonempty += 1.0;
  }
  if (z_coeff != 0.0f) {
    for (int64_t t = threadIdx.x; t < tokens; t += kFinishThreads) {
      const double lse = router::LogSumExp(logits + t * c.experts, c.experts);
      z += lse * lse;
    }
  }
  aux = BlockSum(aux, shared);
  nonempty = BlockSum(nonempty, shared);
  z = BlockSum(z, shared);
  if (threadIdx.x == 0) {
    losses[0] = nonempty > 0 ? static_cast<float>(aux_coeff * aux / nonempty) : 0.0f;
    const int64_t z_tokens = whole > 0 ? whole : tokens;
    losses[1] = z_tokens > 0 ? static_cast<float>(z_coeff * z / z_tokens) : 0.0f;
    *scratch.nonempty = static_cast<int32_t>(nonempty);
  }
}

__global__ void AuxGradientKernel(RouterConfig c, const float* __restrict__ logits,
                                  const float* __restrict__ scores, const int32_t* cu_seqlens,
                                  int64_t sequences, AuxScratch scratch, int64_t tokens,
                                  int64_t whole, float aux_coeff, float z_coeff, float loss_grad,
                                  float* __restrict__ dlogits) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  // The token's sequence: the last q with cu_seqlens[q] <= t (and a non-empty range).
  int64_t q = 0;
  if (cu_seqlens != nullptr) {
    int64_t lo = 0, hi = sequences - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (cu_seqlens[mid] <= t)
        lo = mid;
      else
        hi = mid - 1;
    }
    q = lo;
  }
  const float n = static_cast<float>(whole > 0 ? whole
                                               : SeqBegin(cu_seqlens, q, tokens, true) -
                                                     SeqBegin(cu_seqlens, q, tokens, false));
  const float scale = loss_grad * aux_coeff * static_cast<float>(c.experts) /
                      (static_cast<float>(c.top_k) * n * n * static_cast<float>(*scratch.nonempty));
  const float z_scale = loss_grad * z_coeff / static_cast<float>(whole > 0 ? whole : tokens);
  router::AddAuxGradient(c, logits + t * c.experts, scores + t * c.experts,
                         scratch.counts + q * c.experts, scale, z_scale, dlogits + t * c.experts);
}

}  // namespace

size_t MoeAuxLossWorkspaceBytes(int64_t tokens, int64_t sequences, int64_t experts) {
  const int64_t partials = sequences * RowChunks(tokens, sequences) * experts;
  return Align(sizeof(float) * tokens) + Align(sizeof(float) * sequences * experts) +
         Align(sizeof(int32_t) * sequences * experts) + Align(sizeof(int32_t)) +
         Align(sizeof(float) * partials) + Align(sizeof(int32_t) * partials);
}

absl::Status LaunchMoeRouter(const MoeRouterParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckMoeRouter(p));
  const auto s = static_cast<cudaStream_t>(stream);
  if (!p.accumulate_counts) {
    MIMO_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(p.tokens_per_expert, 0, sizeof(int32_t) * p.config.experts, s));
  }
  if (p.tokens == 0) return absl::OkStatus();
  if (p.config.num_groups == 0) {
    RouterWarpKernel<<<RouterWarpBlocks(p.tokens), 32 * kRouterWarps,
                       RouterWarpSmem(p.config.experts), s>>>(p.config, p.logits, p.expert_bias,
                                                              p.scores, p.indices, p.probs,
                                                              p.tokens_per_expert, p.tokens);
  } else {
    RouterKernel<<<Blocks(p.tokens), kThreads, 0, s>>>(p.config, p.logits, p.expert_bias, p.scores,
                                                       p.indices, p.probs, p.tokens_per_expert,
                                                       p.tokens);
  }
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchMoeRouterBackward(const MoeRouterBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckMoeRouterBackward(p));
  if (p.tokens == 0) return absl::OkStatus();
  RouterBackwardWarpKernel<<<RouterWarpBlocks(p.tokens), 32 * kRouterWarps, 0,
                             static_cast<cudaStream_t>(stream)>>>(p.config, p.dprobs, p.scores,
                                                                  p.indices, p.dlogits, p.tokens);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchMoeAuxLoss(const MoeAuxLossParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckMoeAuxLoss(p));
  const RouterConfig& c = p.config;
  const int64_t sequences = p.cu_seqlens != nullptr ? p.num_seqs : 1;
  const size_t need = MoeAuxLossWorkspaceBytes(p.tokens, sequences, c.experts);
  if (p.workspace == nullptr || p.workspace_bytes < need) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoeAuxLoss: needs ", need, " workspace bytes, got ", p.workspace_bytes));
  }
  if (sequences > 65535) {
    return absl::InvalidArgumentError("MoeAuxLoss: more than 65535 sequences");
  }
  const auto s = static_cast<cudaStream_t>(stream);
  const AuxScratch scratch = Carve(p.workspace, p.tokens, sequences, c.experts);
  if (p.tokens > 0) {
    AuxDenominatorKernel<<<Blocks(p.tokens), kThreads, 0, s>>>(c, p.scores, scratch.denom,
                                                               p.tokens);
    MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  const int64_t chunks = RowChunks(p.tokens, sequences);
  const dim3 grid(static_cast<unsigned>(sequences), static_cast<unsigned>((c.experts + 31) / 32),
                  static_cast<unsigned>(chunks));
  AuxPartialSumsKernel<<<grid, dim3(32, 8), 0, s>>>(c, p.scores, p.indices, p.cu_seqlens, scratch,
                                                    p.tokens);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  AuxSumsKernel<<<Blocks(sequences * c.experts * 32), kThreads, 0, s>>>(c, scratch, sequences,
                                                                        chunks);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  // Part of a micro-batch: its losses weigh by the whole micro-batch's counts.
  const int64_t whole = p.counts != nullptr ? p.total_tokens : 0;
  if (p.counts != nullptr) {
    MIMO_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(scratch.counts, p.counts, sizeof(int32_t) * c.experts,
                                              cudaMemcpyDeviceToDevice, s));
  }
  AuxFinishKernel<<<1, kFinishThreads, 0, s>>>(c, p.logits, p.cu_seqlens, scratch, p.tokens, whole,
                                               sequences, p.aux_coeff, p.z_coeff, p.losses);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (p.dlogits != nullptr && p.tokens > 0) {
    AuxGradientKernel<<<Blocks(p.tokens), kThreads, 0, s>>>(
        c, p.logits, p.scores, p.cu_seqlens, sequences, scratch, p.tokens, whole, p.aux_coeff,
        p.z_coeff, p.loss_grad, p.dlogits);
    MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
