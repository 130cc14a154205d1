// MoE routing: the CUDA kernels. One thread per token runs the same per-token arithmetic as the
// CPU twin (moe_router_math.h); the per-expert counts are integer atomics and the losses'
// reductions run in a fixed order, so every result is reproducible bit for bit.
#include <cuda_runtime_api.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
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

__global__ void RouterBackwardKernel(RouterConfig c, const float* __restrict__ dprobs,
                                     const float* __restrict__ scores,
                                     const int32_t* __restrict__ indices,
                                     float* __restrict__ dlogits, int64_t tokens) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  router::Backward(c, dprobs + t * c.top_k, scores + t * c.experts, indices + t * c.top_k,
                   dlogits + t * c.experts);
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
  RouterKernel<<<Blocks(p.tokens), kThreads, 0, s>>>(p.config, p.logits, p.expert_bias, p.scores,
                                                     p.indices, p.probs, p.tokens_per_expert,
                                                     p.tokens);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchMoeRouterBackward(const MoeRouterBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckMoeRouterBackward(p));
  if (p.tokens == 0) return absl::OkStatus();
  RouterBackwardKernel<<<Blocks(p.tokens), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p.config, p.dprobs, p.scores, p.indices, p.dlogits, p.tokens);
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
