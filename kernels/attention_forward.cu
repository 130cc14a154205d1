// Attention forward on the GPU. bf16 runs FlashAttention-2-style tiles on the tensor cores
// (mma.sync m16n8k16, fp32 accumulators, an online softmax in registers, cp.async double
// buffering), f32 runs fp32 FMA tiles; neither forms a (seqlen, seqlen) matrix. Causal tiles above
// the diagonal are skipped.
#include "kernels/attention_cuda.cuh"

namespace mimo::kernels {
namespace {

using namespace attention_internal;  // NOLINT: this op's own helpers.

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
// f32: fp32 FMA forward.

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

// ---------------------------------------------------------------------------------------------
// Launchers.

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

}  // namespace mimo::kernels
