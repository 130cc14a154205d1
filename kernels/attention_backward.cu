// Attention backward on the GPU: P is recomputed from lse; one block per (key tile, kv head,
// sequence) loops over the query tiles of every query head of its group, keeps dK and dV in
// registers and adds dQ into an fp32 workspace with atomics (or, deterministic, in key-tile order:
// AwaitTurn); a last kernel scales and converts dQ.
// bf16 on the tensor cores (mma.sync), f32 on fp32 FMA tiles. Causal tiles above the diagonal are
// skipped.
#include "kernels/attention_cuda.cuh"

namespace mimo::kernels {
namespace {

using namespace attention_internal;  // NOLINT: this op's own helpers.

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

template <int kD, int kBlockM, int kWarps, int kSplitD, bool kCausal, bool kOrdered>
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
    // dQ += dS K for 16 queries and kDQ dims, added to the unscaled fp32 accumulators: with
    // atomics, or (kOrdered) computed first and added once the lower key tiles have added theirs
    // to this query tile.
    const int query0 = m0 + q_tile * 16;
    const bool has_dq = query0 < seqlen && (!kCausal || query0 + 15 >= n0);
    float acc_dq[kDQ / 8][4];
    const auto compute_dq = [&] {
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
    };
    const auto add_dq = [&](auto add2) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int query = query0 + g + half * 8;
        if (query >= seqlen) continue;
        float* row = a.dq_accum + (start + query) * q_stride + h * a.head_dim;
#pragma unroll
        for (int dt = 0; dt < kDQ / 8; ++dt) {
          const int col = dq_part * kDQ + dt * 8 + 2 * t;
          if (col < a.head_dim) add2(row + col, acc_dq[dt][2 * half], acc_dq[dt][2 * half + 1]);
        }
      }
    };
    if constexpr (kOrdered) {
      if (has_dq) compute_dq();
      int* const turn = a.dq_turns + static_cast<int64_t>(start + m0) * a.heads + h;
      AwaitTurn(turn, static_cast<int>(blockIdx.y));
      if (has_dq) {
        add_dq([](float* p, float x, float y) {
          AddInTurn(p, x);
          AddInTurn(p + 1, y);
        });
      }
      PassTurn(turn, static_cast<int>(blockIdx.y) + 1);
    } else if (has_dq) {
      compute_dq();
      add_dq([](float* p, float x, float y) { AtomicAdd2(p, x, y); });
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
// f32: fp32 FMA backward.

size_t BwdFmaSmemBytes(int head_dim) {
  return sizeof(float) *
         (4 * kFmaTile * (head_dim + 1) + 2 * kFmaTile * (kFmaTile + 1) + 2 * kFmaTile);
}

// A block takes 32 keys of one kv head and sequence. Per 32-query tile: thread (i = tid / 8,
// j = tid % 8 + 8n) forms P and dS; then thread (key tid / 8, dims tid % 8 + 8m) adds to dK and
// dV, and thread (query tid / 8, the same dims) adds its dQ to the workspace.
template <bool kCausal, bool kOrdered>
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
      int* const turn =
          kOrdered ? a.dq_turns + static_cast<int64_t>(start + m0) * a.heads + h : nullptr;
      if constexpr (kOrdered) AwaitTurn(turn, static_cast<int>(blockIdx.y));
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
          if constexpr (kOrdered) {
            AddInTurn(dq + d, sum);
          } else {
            atomicAdd(dq + d, sum);
          }
        }
      }
      if constexpr (kOrdered) PassTurn(turn, static_cast<int>(blockIdx.y) + 1);
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

template <int kD, int kBlockM, int kWarps, int kSplitD>
absl::Status BackwardMma(const AttentionBackwardParams& p, const BwdArgs& args,
                         cudaStream_t stream) {
  using Tile = BwdTile<kD, kBlockM, kWarps, kSplitD>;
  auto kernel = p.deterministic
                    ? (p.causal ? BwdMmaKernel<kD, kBlockM, kWarps, kSplitD, true, true>
                                : BwdMmaKernel<kD, kBlockM, kWarps, kSplitD, false, true>)
                    : (p.causal ? BwdMmaKernel<kD, kBlockM, kWarps, kSplitD, true, false>
                                : BwdMmaKernel<kD, kBlockM, kWarps, kSplitD, false, false>);
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
  auto kernel = p.deterministic
                    ? (p.causal ? BwdFmaKernel<true, true> : BwdFmaKernel<false, true>)
                    : (p.causal ? BwdFmaKernel<true, false> : BwdFmaKernel<false, false>);
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
  int* turns = reinterpret_cast<int*>(reinterpret_cast<char*>(row_sums) +
                                      Align(static_cast<size_t>(rows) * sizeof(float)));
  if (p.deterministic) {
    MIMO_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(turns, 0, static_cast<size_t>(rows) * sizeof(int), stream));
  }
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
                     p.deterministic ? turns : nullptr,
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

size_t AttentionBackwardWorkspaceBytes(int64_t total_tokens, int64_t heads, int64_t head_dim) {
  if (total_tokens <= 0 || heads <= 0 || head_dim <= 0) return 0;
  return Align(static_cast<size_t>(total_tokens * heads * head_dim) * sizeof(float)) +
         Align(static_cast<size_t>(total_tokens * heads) * sizeof(float)) +
         Align(static_cast<size_t>(total_tokens * heads) * sizeof(int));
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
