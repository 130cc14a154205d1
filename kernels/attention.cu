// Attention over packed variable-length sequences, forward and backward: the CUDA kernels.
// bf16 runs FlashAttention-2-style tiles on the tensor cores (mma.sync m16n8k16, fp32
// accumulators, an online softmax in registers, cp.async double buffering), f32 runs fp32 FMA
// tiles; neither forms a (seqlen, seqlen) matrix. The backward recomputes P from lse: one block
// per (key tile, kv head, sequence) loops over the query tiles of every query head of its group,
// keeps dK and dV in registers and adds dQ into an fp32 workspace with atomics; a last kernel
// scales and converts dQ. Causal tiles above the diagonal are skipped.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/cuda_elements.cuh"
#include "kernels/cuda_launch.h"
#include "kernels/cuda_status.h"

namespace mimo::kernels {
namespace {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kMaxHeadDim = 256;
// The smallest query tile of any kernel here: bounds the grid's second dimension.
constexpr int kMinBlockM = 32;

struct FwdArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  const int32_t* cu_seqlens;
  int total, heads, kv_heads, group, head_dim;
  float scale;
};

struct BwdArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* dout;
  void* dk;
  void* dv;
  const float* lse;
  const float* row_sums;  // D = rowsum(dout * out), (heads, total).
  float* dq_accum;        // (total, heads, head_dim), zeroed, unscaled.
  const int32_t* cu_seqlens;
  int total, heads, kv_heads, group, head_dim;
  float scale;
};

// ---------------------------------------------------------------------------------------------
// PTX wrappers: asynchronous copies, shared-memory matrix loads and the bf16 tensor-core MMA.
// cp.async and the bf16 MMA need sm_80: older targets compile them as traps, and the launchers
// refuse bf16 on such devices.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define MIMO_ATTENTION_SM80(...) __trap()
#else
#define MIMO_ATTENTION_SM80(...) __VA_ARGS__
#endif

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes from global to shared memory; zeros (and no read) when !valid.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  MIMO_ATTENTION_SM80(asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst),
                                   "l"(src), "r"(valid ? 16 : 0)));
}

__device__ __forceinline__ void CpAsync4(uint32_t dst, const void* src, bool valid) {
  MIMO_ATTENTION_SM80(asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst),
                                   "l"(src), "r"(valid ? 4 : 0)));
}

__device__ __forceinline__ void CpAsyncCommit() {
  MIMO_ATTENTION_SM80(asm volatile("cp.async.commit_group;\n" ::));
}

// Waits until at most N of this thread's committed copy groups are still in flight.
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  MIMO_ATTENTION_SM80(asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"));
}

// Four 8x8 b16 matrices; lane i gives the address of row i % 8 of matrix i / 8.
__device__ __forceinline__ void LdMatrix(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void LdMatrixTrans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a b for a 16x16 bf16 tile a (row major), a 16x8 tile b (column major) and fp32 c. With
// g = lane / 4 and t = lane % 4: a holds (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..);
// b holds (k 2t..2t+1, n g), (k 2t+8.., n g); c holds (g, 2t..2t+1), (g+8, 2t..2t+1).
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  MIMO_ATTENTION_SM80(
      asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
          "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)));
}

// Two floats as a bf16 pair, `lo` in the low half (the lower column).
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &v, sizeof(r));
  return r;
}

// The fragments of two adjacent 16x8 fp32 tiles (columns 16j .. 16j + 15) as one 16x16 bf16 A
// fragment: accumulators feed the next product without shared memory.
__device__ __forceinline__ void AccumulatorsToA(uint32_t (&a)[4], const float (&c0)[4],
                                                const float (&c1)[4]) {
  a[0] = PackBf16(c0[0], c0[1]);
  a[1] = PackBf16(c0[2], c0[3]);
  a[2] = PackBf16(c1[0], c1[1]);
  a[3] = PackBf16(c1[2], c1[3]);
}

__device__ __forceinline__ void AtomicAdd2(float* p, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(x, y));
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

// Copies a tile of kRows rows of kD bf16 (row r at src + r * stride) into shared memory rows of
// kD + 8 (the padding spreads ldmatrix rows over the banks), zero-filling rows >= valid_rows and
// columns >= head_dim (head_dim a multiple of 8). `any` is a readable address for skipped copies.
template <int kRows, int kD, int kThreads>
__device__ __forceinline__ void LoadTile(bf16* dst, const bf16* src, int64_t stride, int valid_rows,
                                         int head_dim, const void* any) {
  constexpr int kChunks = kD / 8, kTotal = kRows * kChunks;
#pragma unroll
  for (int it = 0; it < (kTotal + kThreads - 1) / kThreads; ++it) {
    const int i = it * kThreads + static_cast<int>(threadIdx.x);
    if (kTotal % kThreads == 0 || i < kTotal) {
      const int r = i / kChunks, c = i % kChunks;
      const bool ok = r < valid_rows && c * 8 < head_dim;
      CpAsync16(SmemAddr(dst + r * (kD + 8) + c * 8), ok ? src + r * stride + c * 8 : any, ok);
    }
  }
}

// Copies rows [0, rows) of a staged bf16 tile (row stride kD + 8) to global memory, 16 bytes at
// a time, columns < head_dim; `lane`/`lanes` split the work.
template <int kD>
__device__ __forceinline__ void StoreTile(bf16* dst, int64_t stride, const bf16* src, int rows,
                                          int head_dim, int lane, int lanes) {
  const int chunks = head_dim / 8;
  for (int i = lane; i < rows * chunks; i += lanes) {
    const int r = i / chunks, c = i % chunks;
    *reinterpret_cast<uint4*>(dst + r * stride + c * 8) =
        *reinterpret_cast<const uint4*>(src + r * (kD + 8) + c * 8);
  }
}

// ---------------------------------------------------------------------------------------------
// bf16 forward. A block takes kBlockM queries of one head and sequence; warp w owns query rows
// [w * kWarpM * 16, (w + 1) * kWarpM * 16) and streams kBlockN-key tiles of K and V through
// double-buffered shared memory; with kQRegs it keeps its Q fragments in registers instead of
// rereading them for every tile. Shared memory: Q (kBlockM rows), K and V (2 x kBlockN rows each),
// rows of kD + 8 bf16; the grid is (heads x sequences, query tiles), longest causal rows first.

template <int kD, int kBlockM, int kBlockN, int kWarps>
struct FwdTile {
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kWarpM = kBlockM / (16 * kWarps);
  static constexpr int kStride = kD + 8;
  static constexpr int kSmemBytes = (kBlockM + 4 * kBlockN) * kStride * 2;
  static_assert(kD % 16 == 0 && kBlockN % 16 == 0 && kWarpM * 16 * kWarps == kBlockM);
};

template <int kD, int kBlockM, int kBlockN, int kWarps, bool kQRegs, bool kCausal>
__global__ void __launch_bounds__(kWarps * 32) FwdMmaKernel(const FwdArgs a) {
  using Tile = FwdTile<kD, kBlockM, kBlockN, kWarps>;
  constexpr int kThreads = Tile::kThreads, kWarpM = Tile::kWarpM, kStride = Tile::kStride;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* s_q = reinterpret_cast<bf16*>(smem);
  bf16* s_k = s_q + kBlockM * kStride;
  bf16* s_v = s_k + 2 * kBlockN * kStride;

  const int seq = blockIdx.x / a.heads, h = blockIdx.x % a.heads;
  const int start = a.cu_seqlens[seq], seqlen = a.cu_seqlens[seq + 1] - start;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * kBlockM;  // Longest causal rows first.
  if (m0 >= seqlen) return;
  const int hk = h / a.group;
  const int n_end = kCausal ? min(seqlen, m0 + kBlockM) : seqlen;
  const int n_blocks = (n_end + kBlockN - 1) / kBlockN;
  const int64_t q_stride = static_cast<int64_t>(a.heads) * a.head_dim;
  const int64_t kv_stride = static_cast<int64_t>(a.kv_heads) * a.head_dim;
  const bf16* q = static_cast<const bf16*>(a.q) + (start + m0) * q_stride + h * a.head_dim;
  const bf16* k = static_cast<const bf16*>(a.k) + start * kv_stride + hk * a.head_dim;
  const bf16* v = static_cast<const bf16*>(a.v) + start * kv_stride + hk * a.head_dim;

  LoadTile<kBlockM, kD, kThreads>(s_q, q, q_stride, seqlen - m0, a.head_dim, a.q);
  LoadTile<kBlockN, kD, kThreads>(s_k, k, kv_stride, seqlen, a.head_dim, a.k);
  LoadTile<kBlockN, kD, kThreads>(s_v, v, kv_stride, seqlen, a.head_dim, a.v);
  CpAsyncCommit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int warp_row0 = warp * kWarpM * 16;
  const float scale_log2 = a.scale * kLog2e;
  float acc[kWarpM][kD / 8][4];
  float row_max[kWarpM][2], row_sum[kWarpM][2];                   // Scores in log2 units, scaled.
  uint32_t q_frag[kQRegs ? kWarpM : 1][kQRegs ? kD / 16 : 1][4];  // kQRegs: Q read once.
#pragma unroll
  for (int mt = 0; mt < kWarpM; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][dt][e] = 0.0f;
    }
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * kBlockN;
    if (nb + 1 < n_blocks) {
      const int next = (nb + 1) & 1;
      LoadTile<kBlockN, kD, kThreads>(s_k + next * kBlockN * kStride,
                                      k + (n0 + kBlockN) * kv_stride, kv_stride,
                                      seqlen - n0 - kBlockN, a.head_dim, a.k);
      LoadTile<kBlockN, kD, kThreads>(s_v + next * kBlockN * kStride,
                                      v + (n0 + kBlockN) * kv_stride, kv_stride,
                                      seqlen - n0 - kBlockN, a.head_dim, a.v);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    if constexpr (kQRegs) {
      if (nb == 0) {
#pragma unroll
        for (int mt = 0; mt < kWarpM; ++mt) {
#pragma unroll
          for (int kk = 0; kk < kD / 16; ++kk) {
            LdMatrix(q_frag[mt][kk], SmemAddr(s_q + (warp_row0 + mt * 16 + lane % 16) * kStride +
                                              kk * 16 + (lane / 16) * 8));
          }
        }
      }
    }
    const bf16* s_kb = s_k + (nb & 1) * kBlockN * kStride;
    const bf16* s_vb = s_v + (nb & 1) * kBlockN * kStride;
    // A causal tile wholly above this warp's rows contributes nothing.
    if (!kCausal || n0 <= m0 + warp_row0 + kWarpM * 16 - 1) {
      float s[kWarpM][kBlockN / 8][4];
#pragma unroll
      for (int mt = 0; mt < kWarpM; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
        }
      }
      // S = Q K^T.
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        uint32_t qa[kWarpM][4];
#pragma unroll
        for (int mt = 0; mt < kWarpM; ++mt) {
          if constexpr (kQRegs) {
#pragma unroll
            for (int e = 0; e < 4; ++e) qa[mt][e] = q_frag[mt][kk][e];
          } else {
            LdMatrix(qa[mt], SmemAddr(s_q + (warp_row0 + mt * 16 + lane % 16) * kStride + kk * 16 +
                                      (lane / 16) * 8));
          }
        }
#pragma unroll
        for (int nn = 0; nn < kBlockN / 16; ++nn) {
          uint32_t kb[4];
          LdMatrix(kb, SmemAddr(s_kb + (nn * 16 + (lane / 16) * 8 + lane % 8) * kStride + kk * 16 +
                                ((lane / 8) % 2) * 8));
#pragma unroll
          for (int mt = 0; mt < kWarpM; ++mt) {
            Mma(s[mt][2 * nn], qa[mt], kb[0], kb[1]);
            Mma(s[mt][2 * nn + 1], qa[mt], kb[2], kb[3]);
          }
        }
      }
      // Scale to log2 units; mask keys past the sequence and, causal, after the query.
      const bool mask = n0 + kBlockN > seqlen || (kCausal && n0 + kBlockN - 1 > m0 + warp_row0);
#pragma unroll
      for (int mt = 0; mt < kWarpM; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][nt][e] *= scale_log2;
            if (mask) {
              const int row = m0 + warp_row0 + mt * 16 + g + (e / 2) * 8;
              const int col = n0 + nt * 8 + 2 * t + e % 2;
              if (col >= seqlen || (kCausal && col > row)) s[mt][nt][e] = -INFINITY;
            }
          }
        }
      }
      // Online softmax: rows g and g + 8 of each m tile live in the 4 lanes of a quad.
#pragma unroll
      for (int mt = 0; mt < kWarpM; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float mx = row_max[mt][half];
#pragma unroll
          for (int nt = 0; nt < kBlockN / 8; ++nt) {
            mx = fmaxf(mx, fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]));
          }
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float base = mx == -INFINITY ? 0.0f : mx;
          const float alpha = exp2f(row_max[mt][half] - base);
          row_max[mt][half] = mx;
          float sum = 0.0f;
#pragma unroll
          for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float p = exp2f(s[mt][nt][2 * half + e] - base);
              s[mt][nt][2 * half + e] = p;
              sum += p;
            }
          }
          row_sum[mt][half] = row_sum[mt][half] * alpha + sum;
#pragma unroll
          for (int dt = 0; dt < kD / 8; ++dt) {
            acc[mt][dt][2 * half] *= alpha;
            acc[mt][dt][2 * half + 1] *= alpha;
          }
        }
      }
      // O += P V, P straight from the accumulators.
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t pa[kWarpM][4];
#pragma unroll
        for (int mt = 0; mt < kWarpM; ++mt) {
          AccumulatorsToA(pa[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
        }
#pragma unroll
        for (int dn = 0; dn < kD / 16; ++dn) {
          uint32_t vb[4];
          LdMatrixTrans(
              vb, SmemAddr(s_vb + (kk * 16 + lane % 16) * kStride + dn * 16 + (lane / 16) * 8));
#pragma unroll
          for (int mt = 0; mt < kWarpM; ++mt) {
            Mma(acc[mt][2 * dn], pa[mt], vb[0], vb[1]);
            Mma(acc[mt][2 * dn + 1], pa[mt], vb[2], vb[3]);
          }
        }
      }
    }
    __syncthreads();  // The buffer just read is the next prefetch's target.
  }

  // Normalize, stage this warp's rows in its own part of s_q, and store them 16 bytes at a time.
#pragma unroll
  for (int mt = 0; mt < kWarpM; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float l = row_sum[mt][half];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = 1.0f / l;
      const int r = warp_row0 + mt * 16 + g + half * 8;
#pragma unroll
      for (int dt = 0; dt < kD / 8; ++dt) {
        *reinterpret_cast<uint32_t*>(s_q + r * kStride + dt * 8 + 2 * t) =
            PackBf16(acc[mt][dt][2 * half] * inv, acc[mt][dt][2 * half + 1] * inv);
      }
      if (t == 0 && m0 + r < seqlen) {
        a.lse[static_cast<int64_t>(h) * a.total + start + m0 + r] =
            (row_max[mt][half] + log2f(l)) * kLn2;
      }
    }
  }
  __syncwarp();
  const int rows = min(kWarpM * 16, seqlen - m0 - warp_row0);
  StoreTile<kD>(static_cast<bf16*>(a.out) + (start + m0 + warp_row0) * q_stride + h * a.head_dim,
                q_stride, s_q + warp_row0 * kStride, rows, a.head_dim, lane, 32);
}

// ---------------------------------------------------------------------------------------------
// bf16 backward. A block takes kBlockN keys of one kv head and sequence (K and V stay in shared
// memory) and loops over the kBlockM-query tiles of each query head of the group, Q, dO, lse and
// D double-buffered. Warp w owns keys [16 (w / kSplitD), +16) and dims [kDW (w % kSplitD), +kDW)
// of dK and dV (kSplitD = 2 halves the accumulators for kD = 256, recomputing S and dP per half):
// it computes S^T = K Q^T and dP^T = V dO^T, then P^T and dS^T in registers, adds P^T dO to dV and
// dS^T Q to dK, and writes dS^T to shared memory; then the warps split dQ += dS K by
// (16-query tile, dims) and add it to the fp32 workspace.

template <int kD, int kBlockM, int kWarps, int kSplitD>
struct BwdTile {
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockN = 16 * kWarps / kSplitD;
  static constexpr int kDW = kD / kSplitD;
  static constexpr int kStride = kD + 8;
  static constexpr int kDsStride = kBlockM + 8;
  static constexpr int kQTiles = kBlockM / 16;
  static constexpr int kDParts = kWarps / kQTiles;
  static constexpr int kDQ = kD / kDParts;
  static constexpr int kSmemBytes =
      (2 * kBlockN + 4 * kBlockM) * kStride * 2 + kBlockN * kDsStride * 2 + 4 * kBlockM * 4;
  static_assert(kD % 16 == 0 && kDW % 16 == 0 && kDQ % 16 == 0 && kBlockM % 16 == 0);
  static_assert(kDParts * kQTiles == kWarps && kDQ * kDParts == kD);
};

template <int kD, int kBlockM, int kWarps, int kSplitD, bool kCausal>
__global__ void __launch_bounds__(kWarps * 32, 1) BwdMmaKernel(const BwdArgs a) {
  using Tile = BwdTile<kD, kBlockM, kWarps, kSplitD>;
  constexpr int kThreads = Tile::kThreads, kBlockN = Tile::kBlockN, kDW = Tile::kDW;
  constexpr int kStride = Tile::kStride, kDsStride = Tile::kDsStride, kDQ = Tile::kDQ;
  constexpr int kDParts = Tile::kDParts;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* s_k = reinterpret_cast<bf16*>(smem);
  bf16* s_v = s_k + kBlockN * kStride;
  bf16* s_q = s_v + kBlockN * kStride;        // [2][kBlockM][kStride]
  bf16* s_do = s_q + 2 * kBlockM * kStride;   // [2][kBlockM][kStride]
  bf16* s_ds = s_do + 2 * kBlockM * kStride;  // dS^T: [kBlockN][kDsStride]
  float* s_lse = reinterpret_cast<float*>(s_ds + kBlockN * kDsStride);  // [2][kBlockM]
  float* s_rs = s_lse + 2 * kBlockM;                                    // [2][kBlockM]

  const int seq = blockIdx.x / a.kv_heads, hk = blockIdx.x % a.kv_heads;
  const int start = a.cu_seqlens[seq], seqlen = a.cu_seqlens[seq + 1] - start;
  const int n0 = blockIdx.y * kBlockN;
  if (n0 >= seqlen) return;
  const int64_t q_stride = static_cast<int64_t>(a.heads) * a.head_dim;
  const int64_t kv_stride = static_cast<int64_t>(a.kv_heads) * a.head_dim;
  const int64_t kv_offset = (start + n0) * kv_stride + hk * a.head_dim;
  LoadTile<kBlockN, kD, kThreads>(s_k, static_cast<const bf16*>(a.k) + kv_offset, kv_stride,
                                  seqlen - n0, a.head_dim, a.k);
  LoadTile<kBlockN, kD, kThreads>(s_v, static_cast<const bf16*>(a.v) + kv_offset, kv_stride,
                                  seqlen - n0, a.head_dim, a.v);

  const int m_first = kCausal ? n0 / kBlockM : 0;
  const int m_count = (seqlen + kBlockM - 1) / kBlockM - m_first;
  const int iterations = a.group * m_count;
  auto head_of = [&](int it) { return hk * a.group + it / m_count; };
  auto m0_of = [&](int it) { return (m_first + it % m_count) * kBlockM; };
  auto load_queries = [&](int it, int buf) {
    const int h = head_of(it), m0 = m0_of(it);
    const int64_t offset = (start + m0) * q_stride + h * a.head_dim;
    LoadTile<kBlockM, kD, kThreads>(s_q + buf * kBlockM * kStride,
                                    static_cast<const bf16*>(a.q) + offset, q_stride, seqlen - m0,
                                    a.head_dim, a.q);
    LoadTile<kBlockM, kD, kThreads>(s_do + buf * kBlockM * kStride,
                                    static_cast<const bf16*>(a.dout) + offset, q_stride,
                                    seqlen - m0, a.head_dim, a.dout);
    for (int i = threadIdx.x; i < kBlockM; i += kThreads) {
      const bool ok = m0 + i < seqlen;
      const int64_t row = static_cast<int64_t>(h) * a.total + start + m0 + i;
      CpAsync4(SmemAddr(s_lse + buf * kBlockM + i), ok ? a.lse + row : a.lse, ok);
      CpAsync4(SmemAddr(s_rs + buf * kBlockM + i), ok ? a.row_sums + row : a.row_sums, ok);
    }
  };
  load_queries(0, 0);
  CpAsyncCommit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int key_tile = warp / kSplitD, d_part = warp % kSplitD;
  const int q_tile = warp / kDParts, dq_part = warp % kDParts;
  const float scale_log2 = a.scale * kLog2e;
  float acc_dk[kDW / 8][4], acc_dv[kDW / 8][4];
#pragma unroll
  for (int dt = 0; dt < kDW / 8; ++dt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[dt][e] = acc_dv[dt][e] = 0.0f;
  }

  for (int it = 0; it < iterations; ++it) {
    const int buf = it & 1, h = head_of(it), m0 = m0_of(it);
    if (it + 1 < iterations) {
      load_queries(it + 1, buf ^ 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const bf16* s_qb = s_q + buf * kBlockM * kStride;
    const bf16* s_dob = s_do + buf * kBlockM * kStride;
    const float* s_lseb = s_lse + buf * kBlockM;
    const float* s_rsb = s_rs + buf * kBlockM;
    const int key0 = n0 + key_tile * 16;
    if (!kCausal || key0 <= m0 + kBlockM - 1) {
      float st[kBlockM / 8][4], dpt[kBlockM / 8][4];
#pragma unroll
      for (int nt = 0; nt < kBlockM / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.0f;
      }
      // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys.
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        uint32_t ka[4], va[4];
        const int a_off = (key_tile * 16 + lane % 16) * kStride + kk * 16 + (lane / 16) * 8;
        LdMatrix(ka, SmemAddr(s_k + a_off));
        LdMatrix(va, SmemAddr(s_v + a_off));
#pragma unroll
        for (int nn = 0; nn < kBlockM / 16; ++nn) {
          const int b_off =
              (nn * 16 + (lane / 16) * 8 + lane % 8) * kStride + kk * 16 + ((lane / 8) % 2) * 8;
          uint32_t qb[4], ob[4];
          LdMatrix(qb, SmemAddr(s_qb + b_off));
          Mma(st[2 * nn], ka, qb[0], qb[1]);
          Mma(st[2 * nn + 1], ka, qb[2], qb[3]);
          LdMatrix(ob, SmemAddr(s_dob + b_off));
          Mma(dpt[2 * nn], va, ob[0], ob[1]);
          Mma(dpt[2 * nn + 1], va, ob[2], ob[3]);
        }
      }
      // P^T = exp(scale S^T - lse), dS^T = P^T (dP^T - D); masked entries are 0.
      const bool mask =
          m0 + kBlockM > seqlen || n0 + kBlockN > seqlen || (kCausal && key0 + 15 > m0);
#pragma unroll
      for (int nt = 0; nt < kBlockM / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = nt * 8 + 2 * t + e % 2;
          float p = exp2f(st[nt][e] * scale_log2 - s_lseb[qi] * kLog2e);
          if (mask) {
            const int key = key0 + g + (e / 2) * 8, query = m0 + qi;
            if (query >= seqlen || key >= seqlen || (kCausal && key > query)) p = 0.0f;
          }
          st[nt][e] = p;
          dpt[nt][e] = p * (dpt[nt][e] - s_rsb[qi]);
        }
      }
      // dV += P^T dO, dK += dS^T Q over this warp's dims.
#pragma unroll
      for (int kq = 0; kq < kBlockM / 16; ++kq) {
        uint32_t pa[4], da[4];
        AccumulatorsToA(pa, st[2 * kq], st[2 * kq + 1]);
        AccumulatorsToA(da, dpt[2 * kq], dpt[2 * kq + 1]);
#pragma unroll
        for (int dn = 0; dn < kDW / 16; ++dn) {
          const int off =
              (kq * 16 + lane % 16) * kStride + d_part * kDW + dn * 16 + (lane / 16) * 8;
          uint32_t ob[4], qb[4];
          LdMatrixTrans(ob, SmemAddr(s_dob + off));
          Mma(acc_dv[2 * dn], pa, ob[0], ob[1]);
          Mma(acc_dv[2 * dn + 1], pa, ob[2], ob[3]);
          LdMatrixTrans(qb, SmemAddr(s_qb + off));
          Mma(acc_dk[2 * dn], da, qb[0], qb[1]);
          Mma(acc_dk[2 * dn + 1], da, qb[2], qb[3]);
        }
      }
      if (d_part == 0) {
#pragma unroll
        for (int nt = 0; nt < kBlockM / 8; ++nt) {
          bf16* row = s_ds + (key_tile * 16 + g) * kDsStride + nt * 8 + 2 * t;
          *reinterpret_cast<uint32_t*>(row) = PackBf16(dpt[nt][0], dpt[nt][1]);
          *reinterpret_cast<uint32_t*>(row + 8 * kDsStride) = PackBf16(dpt[nt][2], dpt[nt][3]);
        }
      }
    } else if (d_part == 0) {  // Causal: these keys follow every query of the tile.
      for (int i = lane; i < 16 * kBlockM / 2; i += 32) {
        *reinterpret_cast<uint32_t*>(s_ds + (key_tile * 16 + i / (kBlockM / 2)) * kDsStride +
                                     2 * (i % (kBlockM / 2))) = 0u;
      }
    }
    __syncthreads();
    // dQ += dS K for 16 queries and kDQ dims, added to the unscaled fp32 accumulators.
    const int query0 = m0 + q_tile * 16;
    if (query0 < seqlen && (!kCausal || query0 + 15 >= n0)) {
      float acc_dq[kDQ / 8][4];
#pragma unroll
      for (int dt = 0; dt < kDQ / 8; ++dt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dq[dt][e] = 0.0f;
      }
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t sa[4];
        LdMatrixTrans(sa, SmemAddr(s_ds + (kk * 16 + (lane / 16) * 8 + lane % 8) * kDsStride +
                                   q_tile * 16 + ((lane / 8) % 2) * 8));
#pragma unroll
        for (int dn = 0; dn < kDQ / 16; ++dn) {
          uint32_t kb[4];
          LdMatrixTrans(kb, SmemAddr(s_k + (kk * 16 + lane % 16) * kStride + dq_part * kDQ +
                                     dn * 16 + (lane / 16) * 8));
          Mma(acc_dq[2 * dn], sa, kb[0], kb[1]);
          Mma(acc_dq[2 * dn + 1], sa, kb[2], kb[3]);
        }
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int query = query0 + g + half * 8;
        if (query >= seqlen) continue;
        float* row = a.dq_accum + (start + query) * q_stride + h * a.head_dim;
#pragma unroll
        for (int dt = 0; dt < kDQ / 8; ++dt) {
          const int col = dq_part * kDQ + dt * 8 + 2 * t;
          if (col < a.head_dim)
            AtomicAdd2(row + col, acc_dq[dt][2 * half], acc_dq[dt][2 * half + 1]);
        }
      }
    }
    __syncthreads();  // s_ds and the buffer just read are rewritten next.
  }

  // dK (scaled) and dV through the K and V tiles, then 16-byte stores.
#pragma unroll
  for (int dt = 0; dt < kDW / 8; ++dt) {
    const int r = key_tile * 16 + g, c = d_part * kDW + dt * 8 + 2 * t;
    *reinterpret_cast<uint32_t*>(s_k + r * kStride + c) =
        PackBf16(acc_dk[dt][0] * a.scale, acc_dk[dt][1] * a.scale);
    *reinterpret_cast<uint32_t*>(s_k + (r + 8) * kStride + c) =
        PackBf16(acc_dk[dt][2] * a.scale, acc_dk[dt][3] * a.scale);
    *reinterpret_cast<uint32_t*>(s_v + r * kStride + c) = PackBf16(acc_dv[dt][0], acc_dv[dt][1]);
    *reinterpret_cast<uint32_t*>(s_v + (r + 8) * kStride + c) =
        PackBf16(acc_dv[dt][2], acc_dv[dt][3]);
  }
  __syncthreads();
  const int rows = min(kBlockN, seqlen - n0);
  StoreTile<kD>(static_cast<bf16*>(a.dk) + kv_offset, kv_stride, s_k, rows, a.head_dim, threadIdx.x,
                kThreads);
  StoreTile<kD>(static_cast<bf16*>(a.dv) + kv_offset, kv_stride, s_v, rows, a.head_dim, threadIdx.x,
                kThreads);
}

// ---------------------------------------------------------------------------------------------
// f32: fp32 FMA kernels for any head_dim up to 256, kFmaTile queries by kFmaTile keys.

constexpr int kFmaTile = 32;
constexpr int kFmaThreads = 256;
constexpr int kFmaWarps = kFmaThreads / 32;
constexpr int kFmaRowsPerWarp = kFmaTile / kFmaWarps;  // 4
constexpr int kFmaDimsPerLane = kMaxHeadDim / 32;      // Output columns per lane (forward).
constexpr int kFmaDimsPerThread = kMaxHeadDim / 8;     // Columns per thread (backward).

size_t FwdFmaSmemBytes(int head_dim) {
  return sizeof(float) * (kFmaTile * (3 * head_dim + 1) + kFmaWarps * kFmaRowsPerWarp * kFmaTile);
}

// Warp w owns query rows 4w .. 4w + 3; lane j scores key j of the tile and owns output columns
// lane + 32c.
template <bool kCausal>
__global__ void __launch_bounds__(kFmaThreads) FwdFmaKernel(const FwdArgs a) {
  extern __shared__ float fsmem[];
  const int hd = a.head_dim;
  float* s_q = fsmem;                      // [32][hd]
  float* s_k = s_q + kFmaTile * hd;        // [32][hd + 1]
  float* s_v = s_k + kFmaTile * (hd + 1);  // [32][hd]
  float* s_p = s_v + kFmaTile * hd;        // [warps][4][32]

  const int seq = blockIdx.x / a.heads, h = blockIdx.x % a.heads;
  const int start = a.cu_seqlens[seq], seqlen = a.cu_seqlens[seq + 1] - start;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * kFmaTile;
  if (m0 >= seqlen) return;
  const int hk = h / a.group;
  const int64_t q_stride = static_cast<int64_t>(a.heads) * hd;
  const int64_t kv_stride = static_cast<int64_t>(a.kv_heads) * hd;
  const float* q = static_cast<const float*>(a.q) + (start + m0) * q_stride + h * hd;
  const float* k = static_cast<const float*>(a.k) + start * kv_stride + hk * hd;
  const float* v = static_cast<const float*>(a.v) + start * kv_stride + hk * hd;
  for (int i = threadIdx.x; i < kFmaTile * hd; i += kFmaThreads) {
    const int r = i / hd, c = i % hd;
    s_q[i] = m0 + r < seqlen ? q[r * q_stride + c] : 0.0f;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* p_warp = s_p + warp * kFmaRowsPerWarp * kFmaTile;
  float o[kFmaRowsPerWarp][kFmaDimsPerLane], row_max[kFmaRowsPerWarp], row_sum[kFmaRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kFmaRowsPerWarp; ++r) {
#pragma unroll
    for (int c = 0; c < kFmaDimsPerLane; ++c) o[r][c] = 0.0f;
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
  }
  const int n_end = kCausal ? min(seqlen, m0 + kFmaTile) : seqlen;
  for (int n0 = 0; n0 < n_end; n0 += kFmaTile) {
    __syncthreads();
    for (int i = threadIdx.x; i < kFmaTile * hd; i += kFmaThreads) {
      const int r = i / hd, c = i % hd;
      const bool ok = n0 + r < seqlen;
      s_k[r * (hd + 1) + c] = ok ? k[(n0 + r) * kv_stride + c] : 0.0f;
      s_v[i] = ok ? v[(n0 + r) * kv_stride + c] : 0.0f;
    }
    __syncthreads();
    float s[kFmaRowsPerWarp] = {};
    for (int d = 0; d < hd; ++d) {
      const float kv = s_k[lane * (hd + 1) + d];
#pragma unroll
      for (int r = 0; r < kFmaRowsPerWarp; ++r) {
        s[r] = fmaf(s_q[(warp * kFmaRowsPerWarp + r) * hd + d], kv, s[r]);
      }
    }
    const int col = n0 + lane;
#pragma unroll
    for (int r = 0; r < kFmaRowsPerWarp; ++r) {
      const int row = m0 + warp * kFmaRowsPerWarp + r;
      const bool ok = col < seqlen && (!kCausal || col <= row);
      const float x = ok ? s[r] * a.scale : -INFINITY;
      float mx = x;
      for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      mx = fmaxf(mx, row_max[r]);
      const float base = mx == -INFINITY ? 0.0f : mx;
      const float alpha = expf(row_max[r] - base);
      const float p = ok ? expf(x - base) : 0.0f;
      float sum = p;
      for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      row_max[r] = mx;
      row_sum[r] = row_sum[r] * alpha + sum;
      p_warp[r * kFmaTile + lane] = p;
#pragma unroll
      for (int c = 0; c < kFmaDimsPerLane; ++c) o[r][c] *= alpha;
    }
    __syncwarp();
    const int keys = min(kFmaTile, n_end - n0);
    for (int j = 0; j < keys; ++j) {
#pragma unroll
      for (int c = 0; c < kFmaDimsPerLane; ++c) {
        if (c * 32 + lane < hd) {
          const float vv = s_v[j * hd + c * 32 + lane];
#pragma unroll
          for (int r = 0; r < kFmaRowsPerWarp; ++r) {
            o[r][c] = fmaf(p_warp[r * kFmaTile + j], vv, o[r][c]);
          }
        }
      }
    }
    __syncwarp();
  }
  float* out = static_cast<float*>(a.out);
#pragma unroll
  for (int r = 0; r < kFmaRowsPerWarp; ++r) {
    const int row = m0 + warp * kFmaRowsPerWarp + r;
    if (row >= seqlen) continue;
    const float inv = 1.0f / row_sum[r];
#pragma unroll
    for (int c = 0; c < kFmaDimsPerLane; ++c) {
      if (c * 32 + lane < hd)
        out[(start + row) * q_stride + h * hd + c * 32 + lane] = o[r][c] * inv;
    }
    if (lane == 0) {
      a.lse[static_cast<int64_t>(h) * a.total + start + row] = row_max[r] + logf(row_sum[r]);
    }
  }
}

size_t BwdFmaSmemBytes(int head_dim) {
  return sizeof(float) *
         (4 * kFmaTile * (head_dim + 1) + 2 * kFmaTile * (kFmaTile + 1) + 2 * kFmaTile);
}

// A block takes 32 keys of one kv head and sequence. Per 32-query tile: thread (i = tid / 8,
// j = tid % 8 + 8n) forms P and dS; then thread (key tid / 8, dims tid % 8 + 8m) adds to dK and
// dV, and thread (query tid / 8, the same dims) adds its dQ to the workspace.
template <bool kCausal>
__global__ void __launch_bounds__(kFmaThreads) BwdFmaKernel(const BwdArgs a) {
  extern __shared__ float fsmem[];
  const int hd = a.head_dim, ld = hd + 1;
  float* s_k = fsmem;                 // [32][hd + 1]
  float* s_v = s_k + kFmaTile * ld;   // [32][hd + 1]
  float* s_q = s_v + kFmaTile * ld;   // [32][hd + 1]
  float* s_do = s_q + kFmaTile * ld;  // [32][hd + 1]
  float* s_p = s_do + kFmaTile * ld;  // [32][33], query-major.
  float* s_ds = s_p + kFmaTile * (kFmaTile + 1);
  float* s_lse = s_ds + kFmaTile * (kFmaTile + 1);
  float* s_rs = s_lse + kFmaTile;

  const int seq = blockIdx.x / a.kv_heads, hk = blockIdx.x % a.kv_heads;
  const int start = a.cu_seqlens[seq], seqlen = a.cu_seqlens[seq + 1] - start;
  const int n0 = blockIdx.y * kFmaTile;
  if (n0 >= seqlen) return;
  const int64_t q_stride = static_cast<int64_t>(a.heads) * hd;
  const int64_t kv_stride = static_cast<int64_t>(a.kv_heads) * hd;
  const int64_t kv_offset = (start + n0) * kv_stride + hk * hd;
  for (int i = threadIdx.x; i < kFmaTile * hd; i += kFmaThreads) {
    const int r = i / hd, c = i % hd;
    const bool ok = n0 + r < seqlen;
    s_k[r * ld + c] = ok ? static_cast<const float*>(a.k)[kv_offset + r * kv_stride + c] : 0.0f;
    s_v[r * ld + c] = ok ? static_cast<const float*>(a.v)[kv_offset + r * kv_stride + c] : 0.0f;
  }
  const int row8 = threadIdx.x / 8, col8 = threadIdx.x % 8;
  float dk[kFmaDimsPerThread], dv[kFmaDimsPerThread];
#pragma unroll
  for (int m = 0; m < kFmaDimsPerThread; ++m) dk[m] = dv[m] = 0.0f;
  const int m_first = kCausal ? n0 : 0;
  for (int h = hk * a.group; h < (hk + 1) * a.group; ++h) {
    for (int m0 = m_first; m0 < seqlen; m0 += kFmaTile) {
      __syncthreads();
      const int64_t q_offset = (start + m0) * q_stride + h * hd;
      for (int i = threadIdx.x; i < kFmaTile * hd; i += kFmaThreads) {
        const int r = i / hd, c = i % hd;
        const bool ok = m0 + r < seqlen;
        const int64_t at = q_offset + r * q_stride + c;
        s_q[r * ld + c] = ok ? static_cast<const float*>(a.q)[at] : 0.0f;
        s_do[r * ld + c] = ok ? static_cast<const float*>(a.dout)[at] : 0.0f;
      }
      if (threadIdx.x < kFmaTile) {
        const bool ok = m0 + static_cast<int>(threadIdx.x) < seqlen;
        const int64_t row =
            static_cast<int64_t>(h) * a.total + start + m0 + static_cast<int>(threadIdx.x);
        s_lse[threadIdx.x] = ok ? a.lse[row] : 0.0f;
        s_rs[threadIdx.x] = ok ? a.row_sums[row] : 0.0f;
      }
      __syncthreads();
      {
        float s[4] = {}, dp[4] = {};
        for (int d = 0; d < hd; ++d) {
          const float qv = s_q[row8 * ld + d], ov = s_do[row8 * ld + d];
#pragma unroll
          for (int n = 0; n < 4; ++n) {
            s[n] = fmaf(qv, s_k[(col8 + 8 * n) * ld + d], s[n]);
            dp[n] = fmaf(ov, s_v[(col8 + 8 * n) * ld + d], dp[n]);
          }
        }
        const int query = m0 + row8;
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          const int key = n0 + col8 + 8 * n;
          const bool ok = query < seqlen && key < seqlen && (!kCausal || key <= query);
          const float p = ok ? expf(s[n] * a.scale - s_lse[row8]) : 0.0f;
          s_p[row8 * (kFmaTile + 1) + col8 + 8 * n] = p;
          s_ds[row8 * (kFmaTile + 1) + col8 + 8 * n] = p * (dp[n] - s_rs[row8]);
        }
      }
      __syncthreads();
      for (int i = 0; i < kFmaTile; ++i) {
        const float p = s_p[i * (kFmaTile + 1) + row8], ds = s_ds[i * (kFmaTile + 1) + row8];
#pragma unroll
        for (int m = 0; m < kFmaDimsPerThread; ++m) {
          const int d = col8 + 8 * m;
          if (d < hd) {
            dv[m] = fmaf(p, s_do[i * ld + d], dv[m]);
            dk[m] = fmaf(ds, s_q[i * ld + d], dk[m]);
          }
        }
      }
      if (m0 + row8 < seqlen) {
        float* dq = a.dq_accum + (start + m0 + row8) * q_stride + h * hd;
#pragma unroll 4
        for (int m = 0; m < kFmaDimsPerThread; ++m) {
          const int d = col8 + 8 * m;
          if (d >= hd) break;
          float sum = 0.0f;
          for (int j = 0; j < kFmaTile; ++j) {
            sum = fmaf(s_ds[row8 * (kFmaTile + 1) + j], s_k[j * ld + d], sum);
          }
          atomicAdd(dq + d, sum);
        }
      }
    }
  }
  if (n0 + row8 < seqlen) {
    float* dk_row = static_cast<float*>(a.dk) + kv_offset + row8 * kv_stride;
    float* dv_row = static_cast<float*>(a.dv) + kv_offset + row8 * kv_stride;
#pragma unroll
    for (int m = 0; m < kFmaDimsPerThread; ++m) {
      const int d = col8 + 8 * m;
      if (d < hd) {
        dk_row[d] = dk[m] * a.scale;
        dv_row[d] = dv[m];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward pre- and post-processing.

// The dot product of two 16-byte vectors of the type of the last argument.
__device__ __forceinline__ float Dot16(uint4 a, uint4 b, float) {
  return __uint_as_float(a.x) * __uint_as_float(b.x) + __uint_as_float(a.y) * __uint_as_float(b.y) +
         __uint_as_float(a.z) * __uint_as_float(b.z) + __uint_as_float(a.w) * __uint_as_float(b.w);
}

__device__ __forceinline__ float Dot16(uint4 a, uint4 b, bf16) {
  const uint32_t xa[4] = {a.x, a.y, a.z, a.w}, xb[4] = {b.x, b.y, b.z, b.w};
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __nv_bfloat162 va, vb;
    memcpy(&va, &xa[i], 4);
    memcpy(&vb, &xb[i], 4);
    const float2 fa = __bfloat1622float2(va), fb = __bfloat1622float2(vb);
    sum = fmaf(fa.x, fb.x, fmaf(fa.y, fb.y, sum));
  }
  return sum;
}

// D[h][t] = sum over d of dout * out, one warp per (token, head) row with 16-byte loads; also
// zeroes the row's fp32 dq accumulators.
template <typename T>
__global__ void BwdPrepareKernel(const T* __restrict__ dout, const T* __restrict__ out,
                                 float* __restrict__ row_sums, float* __restrict__ dq_accum,
                                 int64_t rows, int heads, int64_t total, int head_dim) {
  constexpr int kPer = 16 / sizeof(T);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int lane = threadIdx.x % 32;
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; r < rows;
       r += warps) {
    float sum = 0.0f;
    for (int c = lane; c < head_dim / kPer; c += 32) {
      sum += Dot16(*reinterpret_cast<const uint4*>(dout + r * head_dim + c * kPer),
                   *reinterpret_cast<const uint4*>(out + r * head_dim + c * kPer), T());
    }
    for (int c = lane; c < head_dim / 4; c += 32) {
      *reinterpret_cast<float4*>(dq_accum + r * head_dim + c * 4) = make_float4(0, 0, 0, 0);
    }
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) row_sums[(r % heads) * total + r / heads] = sum;
  }
}

__device__ __forceinline__ void Put4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void Put4(bf16* p, float4 v) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 u;
  memcpy(&u.x, &lo, 4);
  memcpy(&u.y, &hi, 4);
  *reinterpret_cast<uint2*>(p) = u;
}

// dq = scale * the accumulators, 4 elements at a time (n is a multiple of 8).
template <typename T>
__global__ void ScaleDqKernel(const float* __restrict__ accum, T* __restrict__ dq, int64_t n,
                              float scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n / 4;
       i += stride) {
    const float4 v = reinterpret_cast<const float4*>(accum)[i];
    Put4(dq + 4 * i, make_float4(v.x * scale, v.y * scale, v.z * scale, v.w * scale));
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers.

size_t Align(size_t n) { return (n + 255) / 256 * 256; }

template <typename Kernel>
absl::Status AllowSmem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    MIMO_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
  return absl::OkStatus();
}

// Host-side checks of what the CUDA kernels need beyond CheckAttention*.
absl::Status CheckCudaShape(const char* op, int64_t num_seqs, int64_t total_tokens, int64_t heads,
                            int64_t head_dim, int64_t max_seqlen,
                            std::initializer_list<std::pair<const void*, const char*>> tensors) {
  if (head_dim % 8 != 0 || head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": head_dim ", head_dim,
        " is not supported by the CUDA kernels (multiples of 8 up to 256: 8, 16, ..., 256)"));
  }
  if (total_tokens == 0) return absl::OkStatus();
  if (max_seqlen <= 0 || max_seqlen * num_seqs < total_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": max_seqlen ", max_seqlen, " is shorter than the mean sequence (",
                     total_tokens, " tokens in ", num_seqs, " sequences)"));
  }
  if ((max_seqlen + kMinBlockM - 1) / kMinBlockM > 65535 || heads * num_seqs > 0x7fffffff) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": the grid of max_seqlen ", max_seqlen,
                                                   ", ", heads, " heads and ", num_seqs,
                                                   " sequences is too large"));
  }
  for (const auto& [ptr, name] : tensors) {
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " is not 16-byte aligned"));
    }
  }
  return absl::OkStatus();
}

// InvalidArgument for bf16 on a device older than sm_80 (the tensor-core kernels need it).
absl::Status CheckBf16Device(const char* op, DType dtype) {
  if (dtype != DType::kBF16) return absl::OkStatus();
  int device = 0, major = 0;
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  MIMO_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": bf16 needs a device of compute capability 8.0 or newer"));
  }
  return absl::OkStatus();
}

FwdArgs MakeFwdArgs(const AttentionParams& p) {
  return FwdArgs{p.q,
                 p.k,
                 p.v,
                 p.out,
                 p.lse,
                 p.cu_seqlens,
                 static_cast<int>(p.total_tokens),
                 static_cast<int>(p.heads),
                 static_cast<int>(p.kv_heads),
                 static_cast<int>(p.heads / p.kv_heads),
                 static_cast<int>(p.head_dim),
                 p.scale};
}

template <int kD, int kBlockM, int kBlockN, int kWarps, bool kQRegs>
absl::Status ForwardMma(const AttentionParams& p, cudaStream_t stream) {
  constexpr int kSmem = FwdTile<kD, kBlockM, kBlockN, kWarps>::kSmemBytes;
  auto kernel = p.causal ? FwdMmaKernel<kD, kBlockM, kBlockN, kWarps, kQRegs, true>
                         : FwdMmaKernel<kD, kBlockM, kBlockN, kWarps, kQRegs, false>;
  MIMO_RETURN_IF_ERROR(AllowSmem(kernel, kSmem));
  const dim3 grid(static_cast<unsigned>(p.heads * p.num_seqs),
                  static_cast<unsigned>((p.max_seqlen + kBlockM - 1) / kBlockM));
  kernel<<<grid, kWarps * 32, kSmem, stream>>>(MakeFwdArgs(p));
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status ForwardFma(const AttentionParams& p, cudaStream_t stream) {
  const size_t smem = FwdFmaSmemBytes(static_cast<int>(p.head_dim));
  auto kernel = p.causal ? FwdFmaKernel<true> : FwdFmaKernel<false>;
  MIMO_RETURN_IF_ERROR(AllowSmem(kernel, smem));
  const dim3 grid(static_cast<unsigned>(p.heads * p.num_seqs),
                  static_cast<unsigned>((p.max_seqlen + kFmaTile - 1) / kFmaTile));
  kernel<<<grid, kFmaThreads, smem, stream>>>(MakeFwdArgs(p));
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

template <int kD, int kBlockM, int kWarps, int kSplitD>
absl::Status BackwardMma(const AttentionBackwardParams& p, const BwdArgs& args,
                         cudaStream_t stream) {
  using Tile = BwdTile<kD, kBlockM, kWarps, kSplitD>;
  auto kernel = p.causal ? BwdMmaKernel<kD, kBlockM, kWarps, kSplitD, true>
                         : BwdMmaKernel<kD, kBlockM, kWarps, kSplitD, false>;
  MIMO_RETURN_IF_ERROR(AllowSmem(kernel, Tile::kSmemBytes));
  const dim3 grid(static_cast<unsigned>(p.kv_heads * p.num_seqs),
                  static_cast<unsigned>((p.max_seqlen + Tile::kBlockN - 1) / Tile::kBlockN));
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(args);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status BackwardFma(const AttentionBackwardParams& p, const BwdArgs& args,
                         cudaStream_t stream) {
  const size_t smem = BwdFmaSmemBytes(static_cast<int>(p.head_dim));
  auto kernel = p.causal ? BwdFmaKernel<true> : BwdFmaKernel<false>;
  MIMO_RETURN_IF_ERROR(AllowSmem(kernel, smem));
  const dim3 grid(static_cast<unsigned>(p.kv_heads * p.num_seqs),
                  static_cast<unsigned>((p.max_seqlen + kFmaTile - 1) / kFmaTile));
  kernel<<<grid, kFmaThreads, smem, stream>>>(args);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

template <typename T>
absl::Status Backward(const AttentionBackwardParams& p, cudaStream_t stream) {
  const int64_t n = p.total_tokens * p.heads * p.head_dim;
  auto* dq_accum = static_cast<float*>(p.workspace);
  auto* row_sums = reinterpret_cast<float*>(static_cast<char*>(p.workspace) +
                                            Align(static_cast<size_t>(n) * sizeof(float)));
  const int64_t rows = p.total_tokens * p.heads;
  BwdPrepareKernel<T><<<GridStrideBlocks(rows * 32), kThreadsPerBlock, 0, stream>>>(
      static_cast<const T*>(p.dout), static_cast<const T*>(p.out), row_sums, dq_accum, rows,
      static_cast<int>(p.heads), p.total_tokens, static_cast<int>(p.head_dim));
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const BwdArgs args{p.q,
                     p.k,
                     p.v,
                     p.dout,
                     p.dk,
                     p.dv,
                     p.lse,
                     row_sums,
                     dq_accum,
                     p.cu_seqlens,
                     static_cast<int>(p.total_tokens),
                     static_cast<int>(p.heads),
                     static_cast<int>(p.kv_heads),
                     static_cast<int>(p.heads / p.kv_heads),
                     static_cast<int>(p.head_dim),
                     p.scale};
  if constexpr (std::is_same_v<T, float>) {
    MIMO_RETURN_IF_ERROR(BackwardFma(p, args, stream));
  } else if (p.head_dim <= 32) {
    MIMO_RETURN_IF_ERROR((BackwardMma<32, 64, 8, 1>(p, args, stream)));
  } else if (p.head_dim <= 64) {
    MIMO_RETURN_IF_ERROR((BackwardMma<64, 64, 8, 1>(p, args, stream)));
  } else if (p.head_dim <= 96) {
    MIMO_RETURN_IF_ERROR((BackwardMma<96, 64, 8, 1>(p, args, stream)));
  } else if (p.head_dim <= 128) {
    MIMO_RETURN_IF_ERROR((BackwardMma<128, 64, 8, 1>(p, args, stream)));
  } else {
    MIMO_RETURN_IF_ERROR((BackwardMma<256, 32, 8, 2>(p, args, stream)));
  }
  ScaleDqKernel<T><<<GridStrideBlocks(n / 4), kThreadsPerBlock, 0, stream>>>(
      dq_accum, static_cast<T*>(p.dq), n, p.scale);
  MIMO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchAttention(const AttentionParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckAttention(p));
  MIMO_RETURN_IF_ERROR(CheckCudaShape("Attention", p.num_seqs, p.total_tokens, p.heads, p.head_dim,
                                      p.max_seqlen,
                                      {{p.q, "q"}, {p.k, "k"}, {p.v, "v"}, {p.out, "out"}}));
  if (p.total_tokens == 0) return absl::OkStatus();
  MIMO_RETURN_IF_ERROR(CheckBf16Device("Attention", p.dtype));
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kF32) return ForwardFma(p, s);
  // Tile shapes as measured fastest on an H100 (kQRegs where the registers allow).
  if (p.head_dim <= 32) return ForwardMma<32, 128, 128, 8, true>(p, s);
  if (p.head_dim <= 64) return ForwardMma<64, 128, 64, 8, true>(p, s);
  if (p.head_dim <= 96) return ForwardMma<96, 128, 32, 4, false>(p, s);
  if (p.head_dim <= 128) return ForwardMma<128, 128, 32, 4, false>(p, s);
  return ForwardMma<256, 64, 32, 4, false>(p, s);
}

size_t AttentionBackwardWorkspaceBytes(int64_t total_tokens, int64_t heads, int64_t head_dim) {
  if (total_tokens <= 0 || heads <= 0 || head_dim <= 0) return 0;
  return Align(static_cast<size_t>(total_tokens * heads * head_dim) * sizeof(float)) +
         Align(static_cast<size_t>(total_tokens * heads) * sizeof(float));
}

absl::Status LaunchAttentionBackward(const AttentionBackwardParams& p, StreamHandle stream) {
  MIMO_RETURN_IF_ERROR(CheckAttentionBackward(p));
  MIMO_RETURN_IF_ERROR(CheckCudaShape("AttentionBackward", p.num_seqs, p.total_tokens, p.heads,
                                      p.head_dim, p.max_seqlen,
                                      {{p.dout, "dout"},
                                       {p.q, "q"},
                                       {p.k, "k"},
                                       {p.v, "v"},
                                       {p.out, "out"},
                                       {p.dq, "dq"},
                                       {p.dk, "dk"},
                                       {p.dv, "dv"},
                                       {p.workspace, "workspace"}}));
  if (p.total_tokens == 0) return absl::OkStatus();
  const size_t needed = AttentionBackwardWorkspaceBytes(p.total_tokens, p.heads, p.head_dim);
  if (p.workspace == nullptr || p.workspace_bytes < needed) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionBackward: the workspace has ", p.workspace_bytes, " bytes, ",
                     p.total_tokens, " tokens of ", p.heads, " heads of ", p.head_dim,
                     " dims need ", needed, " (AttentionBackwardWorkspaceBytes)"));
  }
  MIMO_RETURN_IF_ERROR(CheckBf16Device("AttentionBackward", p.dtype));
  const auto s = static_cast<cudaStream_t>(stream);
  return p.dtype == DType::kF32 ? Backward<float>(p, s) : Backward<bf16>(p, s);
}

}  // namespace mimo::kernels
