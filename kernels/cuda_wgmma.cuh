// PTX wrappers for Hopper's warpgroup MMA (wgmma): shared-memory matrix descriptors of the
// 128-byte-swizzled layout, the bf16 m64n256k16 product with fp32 accumulators, and the fences
// and waits around it. The instructions exist only in sm_90a code: elsewhere they compile as
// traps (MIMO_SM90A), and launchers must not choose them (kernels/grouped_gemm.cu asks).
#pragma once

#include <cstdint>

namespace mimo::kernels {

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MIMO_SM90A(...) __trap()
#else
#define MIMO_SM90A(...) __VA_ARGS__
#endif

// The 128-byte swizzle: in every 1024-byte-aligned block of eight 128-byte lines, the 16-byte
// chunk c of line l is stored at chunk c ^ l. Byte offset of chunk `chunk` (0-7) of line `line`
// (0-7) in such a block.
__device__ __forceinline__ uint32_t Swizzle128(int line, int chunk) {
  return static_cast<uint32_t>(line * 128 + ((chunk ^ line) * 16));
}

// Descriptor of an operand stored m/n-contiguous ("MN-major") with the 128-byte swizzle: atoms of
// 64 (m or n) x 8 (k) bf16, one 128-byte line per k, each atom 1024-byte aligned; `start` is the
// shared-memory address of the first atom, `mn_stride` the bytes from one atom to the next along
// m/n (the descriptor's leading byte offset), `k_stride` the bytes from one 8-deep atom to the
// next along k (its stride byte offset).
__device__ __forceinline__ uint64_t MnMajorSw128Desc(uint32_t start, uint32_t mn_stride,
                                                     uint32_t k_stride) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((start & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>((mn_stride & 0x3FFFF) >> 4) << 16;
  d |= static_cast<uint64_t>((k_stride & 0x3FFFF) >> 4) << 32;
  d |= uint64_t{1} << 62;  // 128-byte swizzle; base offset 0 (atoms 1024-byte aligned).
  return d;
}

// Makes this thread's earlier generic-proxy writes to shared memory (st.shared, cp.async) visible
// to the async proxy that wgmma reads operands through; a barrier must follow before other
// threads' wgmma.
__device__ __forceinline__ void FenceProxyAsyncShared() {
  MIMO_SM90A(asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"));
}

// Orders this warpgroup's register accesses before the wgmma that follow (before the first of a
// batch, and whenever the accumulators were touched by other instructions).
__device__ __forceinline__ void WgmmaFence() {
  MIMO_SM90A(asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"));
}

__device__ __forceinline__ void WgmmaCommit() {
  MIMO_SM90A(asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"));
}

// Waits until at most N of this warpgroup's committed wgmma groups are in flight. `acc` is named
// so the compiler keeps the accumulators' registers live across the wait.
template <int N>
__device__ __forceinline__ void WgmmaWait(float (&acc)[128]) {
  MIMO_SM90A(asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"));
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(acc[i])::"memory");
}

// acc (64 x 256, fp32) += a (64 x 16) . b (16 x 256), bf16, both stored m/n-contiguous (the
// transpose bits set) as `desc_a` / `desc_b` describe. Accumulator i of lane l in warp w of the
// warpgroup is row 16 w + l / 4 + 8 ((i / 2) % 2), column 8 (i / 4) + 2 (l % 4) + i % 2.
__device__ __forceinline__ void WgmmaM64N256K16MnMajor(float (&acc)[128], uint64_t desc_a,
                                                       uint64_t desc_b) {
  MIMO_SM90A(asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, "
      "%111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, "
      "%126, %127}, "
      "%128, %129, p, 1, 1, 1, 1;\n"
      "}\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3]), "+f"(acc[4]), "+f"(acc[5]),
        "+f"(acc[6]), "+f"(acc[7]), "+f"(acc[8]), "+f"(acc[9]), "+f"(acc[10]), "+f"(acc[11]),
        "+f"(acc[12]), "+f"(acc[13]), "+f"(acc[14]), "+f"(acc[15]), "+f"(acc[16]), "+f"(acc[17]),
        "+f"(acc[18]), "+f"(acc[19]), "+f"(acc[20]), "+f"(acc[21]), "+f"(acc[22]), "+f"(acc[23]),
        "+f"(acc[24]), "+f"(acc[25]), "+f"(acc[26]), "+f"(acc[27]), "+f"(acc[28]), "+f"(acc[29]),
        "+f"(acc[30]), "+f"(acc[31]), "+f"(acc[32]), "+f"(acc[33]), "+f"(acc[34]), "+f"(acc[35]),
        "+f"(acc[36]), "+f"(acc[37]), "+f"(acc[38]), "+f"(acc[39]), "+f"(acc[40]), "+f"(acc[41]),
        "+f"(acc[42]), "+f"(acc[43]), "+f"(acc[44]), "+f"(acc[45]), "+f"(acc[46]), "+f"(acc[47]),
        "+f"(acc[48]), "+f"(acc[49]), "+f"(acc[50]), "+f"(acc[51]), "+f"(acc[52]), "+f"(acc[53]),
        "+f"(acc[54]), "+f"(acc[55]), "+f"(acc[56]), "+f"(acc[57]), "+f"(acc[58]), "+f"(acc[59]),
        "+f"(acc[60]), "+f"(acc[61]), "+f"(acc[62]), "+f"(acc[63]), "+f"(acc[64]), "+f"(acc[65]),
        "+f"(acc[66]), "+f"(acc[67]), "+f"(acc[68]), "+f"(acc[69]), "+f"(acc[70]), "+f"(acc[71]),
        "+f"(acc[72]), "+f"(acc[73]), "+f"(acc[74]), "+f"(acc[75]), "+f"(acc[76]), "+f"(acc[77]),
        "+f"(acc[78]), "+f"(acc[79]), "+f"(acc[80]), "+f"(acc[81]), "+f"(acc[82]), "+f"(acc[83]),
        "+f"(acc[84]), "+f"(acc[85]), "+f"(acc[86]), "+f"(acc[87]), "+f"(acc[88]), "+f"(acc[89]),
        "+f"(acc[90]), "+f"(acc[91]), "+f"(acc[92]), "+f"(acc[93]), "+f"(acc[94]), "+f"(acc[95]),
        "+f"(acc[96]), "+f"(acc[97]), "+f"(acc[98]), "+f"(acc[99]), "+f"(acc[100]), "+f"(acc[101]),
        "+f"(acc[102]), "+f"(acc[103]), "+f"(acc[104]), "+f"(acc[105]), "+f"(acc[106]),
        "+f"(acc[107]), "+f"(acc[108]), "+f"(acc[109]), "+f"(acc[110]), "+f"(acc[111]),
        "+f"(acc[112]), "+f"(acc[113]), "+f"(acc[114]), "+f"(acc[115]), "+f"(acc[116]),
        "+f"(acc[117]), "+f"(acc[118]), "+f"(acc[119]), "+f"(acc[120]), "+f"(acc[121]),
        "+f"(acc[122]), "+f"(acc[123]), "+f"(acc[124]), "+f"(acc[125]), "+f"(acc[126]),
        "+f"(acc[127])
      : "l"(desc_a), "l"(desc_b), "r"(1)));
}

}  // namespace mimo::kernels
