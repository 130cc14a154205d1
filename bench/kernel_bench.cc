// Times the CUDA ops on fixed shapes, the same cases bench/torch_kernels.py times in PyTorch.
//
//   kernel_bench [--list] [--filter SUBSTRING] [--iters K]
//
// --list prints the cases (one JSON object per line: name, kind, shape, work) for the PyTorch
// side. Otherwise each case is captured K times into a CUDA graph, the graph launched once to warm
// up and 5 times timed with events; one JSON line per case: the median milliseconds per call and
// the rate (TFLOP/s for products, GB/s of the bytes the op must move for the others).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/bfloat16.h"
#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/attention_cudnn.h"
#include "kernels/cross_entropy.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"

namespace mimo::kernels {
namespace {

void Check(const absl::Status& status, const std::string& what) {
  if (!status.ok()) {
    std::fprintf(stderr, "kernel_bench: %s: %s\n", what.c_str(), status.ToString().c_str());
    std::exit(1);
  }
}

void CheckCuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "kernel_bench: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Device memory for one case, freed with it.
class Buffers {
 public:
  ~Buffers() {
    for (void* p : owned_) cudaFree(p);
  }
  // `bytes` of device memory holding small values (uniform in [-1, 1) as bf16 or f32 bits are
  // not needed: a pattern that is finite in both dtypes).
  void* Get(size_t bytes) {
    void* p = nullptr;
    CheckCuda(cudaMalloc(&p, std::max<size_t>(bytes, 16)), "cudaMalloc");
    CheckCuda(cudaMemset(p, 0x3c, bytes), "cudaMemset");  // 0x3c3c: 0.0115 in bf16; f32 ~0.0115.
    owned_.push_back(p);
    return p;
  }

  // `n` bf16 values uniform in [-1, 1) (products are measured on random operands, as torch's
  // are: constant ones switch fewer bits and would run at higher clocks).
  void* RandomBF16(int64_t n) {
    std::mt19937 random(n);
    std::uniform_real_distribution<float> dist(-1, 1);
    std::vector<uint16_t> host(n);
    for (uint16_t& v : host) v = FloatToBFloat16(dist(random));
    void* p = Get(n * 2);
    CheckCuda(cudaMemcpy(p, host.data(), n * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
    return p;
  }

 private:
  std::vector<void*> owned_;
};

// One benchmark case: what it is (for both sides) and how to run it here.
struct Case {
  std::string name;
  std::string kind;  // What torch_kernels.py runs: gemm, copy, rmsnorm, ...
  std::vector<int64_t> shape;
  double work = 0;  // FLOPs (products) or bytes that must move (the others).
  bool flops = false;
  // Sets up buffers, returns the call to time.
  std::function<std::function<void(cudaStream_t)>(Buffers&)> setup;
};

constexpr int64_t kBF16 = 2, kF32 = 4;

Case GemmCase(const std::string& name, int64_t m, int64_t n, int64_t k, bool transpose_b,
              CublasLt* blas) {
  return Case{.name = name,
              .kind = "gemm",
              .shape = {m, n, k, transpose_b ? 1 : 0},
              .work = 2.0 * m * n * k,
              .flops = true,
              .setup = [=](Buffers& b) {
                const GemmParams p{.ab_dtype = DType::kBF16,
                                   .d_dtype = DType::kBF16,
                                   .a = b.RandomBF16(m * k),
                                   .b = b.RandomBF16(k * n),
                                   .d = b.Get(m * n * kBF16),
                                   .transpose_b = transpose_b,
                                   .m = m,
                                   .n = n,
                                   .k = k};
                return std::function<void(cudaStream_t)>(
                    [=](cudaStream_t s) { Check(blas->Gemm(p, s), "Gemm"); });
              }};
}

std::vector<Case> Cases(CublasLt* blas, CudnnAttention* cudnn) {
  std::vector<Case> cases;
  // Copy bandwidth: the floor the bandwidth-bound ops are measured against.
  constexpr int64_t kCopyBytes = int64_t{1} << 30;
  cases.push_back({.name = "copy_1GiB",
                   .kind = "copy",
                   .shape = {kCopyBytes},
                   .work = 2.0 * kCopyBytes,
                   .setup = [](Buffers& b) {
                     void* src = b.Get(kCopyBytes);
                     void* dst = b.Get(kCopyBytes);
                     return std::function<void(cudaStream_t)>([=](cudaStream_t s) {
                       CheckCuda(cudaMemcpyAsync(dst, src, kCopyBytes, cudaMemcpyDeviceToDevice, s),
                                 "cudaMemcpyAsync");
                     });
                   }});
  cases.push_back(GemmCase("gemm_8192^3", 8192, 8192, 8192, false, blas));
  // Linear layers y = x w^T (m tokens, n out, k in) of the models in examples/: hidden 64, 4
  // heads (2 query groups, head dim 16), ffn 128, 4 experts top-2, vocabulary 256, patch 3x8x8,
  // audio tokens of 4 frames x 40 mel bins. Tokens: the language model's micro-batch of 2 x 128
  // (256; 128 on a cp=2 member, its routed rows about 128 an expert, 64 with cp=2); an encoder
  // replica's samples are language dp x micro-batch / encoder dp: 32 tokens (2 images x 16
  // patches) in mimo-gpu-2 and -pp and on -cp's cp=2 members, 64 (4 images or clips, at most) in
  // the other mimo-cpu-8 examples. The audio encoder's attention and MLP products have the vision
  // encoder's shapes at 64 tokens, its linear projector the attention output's; the MLP projector
  // the encoder MLP's. "_tp2": the tensor-parallel examples' (tp=2) shards whose shapes appear
  // nowhere else; "_cp2": a context-parallel member's.
  const struct {
    const char* name;
    int64_t m, n, k;
  } layers[] = {
      {"gemm_lm_qkv", 256, 128, 64},
      {"gemm_lm_proj", 256, 64, 64},
      {"gemm_lm_expert_fc1", 128, 256, 64},
      {"gemm_lm_expert_fc2", 128, 64, 128},
      {"gemm_lm_router", 256, 4, 64},
      {"gemm_lm_output", 256, 256, 64},
      {"gemm_lm_proj_tp2", 256, 64, 32},
      {"gemm_lm_router_cp2", 128, 4, 64},
      {"gemm_lm_qkv_cp2", 128, 128, 64},
      {"gemm_lm_proj_cp2", 128, 64, 64},
      {"gemm_lm_expert_fc1_cp2", 64, 256, 64},
      {"gemm_lm_expert_fc2_cp2", 64, 64, 128},
      {"gemm_vit_patch", 32, 64, 192},
      {"gemm_vit_qkv", 32, 192, 64},
      {"gemm_vit_proj", 32, 64, 64},
      {"gemm_vit_fc1", 32, 128, 64},
      {"gemm_vit_fc2", 32, 64, 128},
      {"gemm_projector_fc1", 32, 128, 64},
      {"gemm_projector_fc2", 32, 64, 128},
      {"gemm_vit64_patch", 64, 64, 192},
      {"gemm_audio64_frames", 64, 64, 160},
      {"gemm_enc64_qkv", 64, 192, 64},
      {"gemm_enc64_proj", 64, 64, 64},
      {"gemm_enc64_fc1", 64, 128, 64},
      {"gemm_enc64_fc2", 64, 64, 128},
      {"gemm_vit64_qkv_tp2", 64, 96, 64},
      {"gemm_vit64_proj_tp2", 64, 64, 32},
      // A Llama-3-8B-sized layer at 8192 tokens, for scale.
      {"gemm_8b_qkv", 8192, 6144, 4096},
      {"gemm_8b_fc1", 8192, 28672, 4096},
      {"gemm_8b_fc2", 8192, 4096, 14336},
  };
  for (const auto& l : layers) cases.push_back(GemmCase(l.name, l.m, l.n, l.k, true, blas));

  constexpr int64_t kTokens = 16384, kHidden = 4096;
  cases.push_back({.name = "rmsnorm_fwd",
                   .kind = "rmsnorm",
                   .shape = {kTokens, kHidden},
                   .work = 2.0 * kTokens * kHidden * kBF16 + kHidden * kBF16 + kTokens * kF32,
                   .setup = [](Buffers& b) {
                     const RmsNormParams p{.dtype = DType::kBF16,
                                           .x = b.Get(kTokens * kHidden * kBF16),
                                           .weight = b.Get(kHidden * kBF16),
                                           .y = b.Get(kTokens * kHidden * kBF16),
                                           .rstd = static_cast<float*>(b.Get(kTokens * kF32)),
                                           .rows = kTokens,
                                           .cols = kHidden};
                     return std::function<void(cudaStream_t)>(
                         [=](cudaStream_t s) { Check(LaunchRmsNorm(p, s), "RmsNorm"); });
                   }});
  cases.push_back(
      {.name = "rmsnorm_bwd",
       .kind = "rmsnorm_bwd",
       .shape = {kTokens, kHidden},
       .work = 3.0 * kTokens * kHidden * kBF16 + kHidden * (kBF16 + kF32) + kTokens * kF32,
       .setup = [](Buffers& b) {
         const RmsNormBackwardParams p{
             .dtype = DType::kBF16,
             .dy = b.Get(kTokens * kHidden * kBF16),
             .x = b.Get(kTokens * kHidden * kBF16),
             .weight = b.Get(kHidden * kBF16),
             .rstd = static_cast<float*>(b.Get(kTokens * kF32)),
             .dx = b.Get(kTokens * kHidden * kBF16),
             .dweight = static_cast<float*>(b.Get(kHidden * kF32)),
             .rows = kTokens,
             .cols = kHidden,
             .workspace = b.Get(RmsNormBackwardWorkspaceBytes(kTokens, kHidden)),
             .workspace_bytes = RmsNormBackwardWorkspaceBytes(kTokens, kHidden)};
         return std::function<void(cudaStream_t)>(
             [=](cudaStream_t s) { Check(LaunchRmsNormBackward(p, s), "RmsNormBackward"); });
       }});
  constexpr int64_t kHeads = 32, kHeadDim = 128;
  cases.push_back({.name = "rope_fwd",
                   .kind = "rope",
                   .shape = {kTokens, kHeads, kHeadDim},
                   .work = 2.0 * kTokens * kHeads * kHeadDim * kBF16 + kTokens * 4,
                   .setup = [](Buffers& b) {
                     const int64_t n = kTokens * kHeads * kHeadDim;
                     auto* positions = static_cast<int32_t*>(b.Get(kTokens * 4));
                     CheckCuda(cudaMemset(positions, 0, kTokens * 4), "cudaMemset");
                     const RopeParams p{.dtype = DType::kBF16,
                                        .x = b.Get(n * kBF16),
                                        .y = b.Get(n * kBF16),
                                        .positions = positions,
                                        .tokens = kTokens,
                                        .heads = kHeads,
                                        .head_dim = kHeadDim,
                                        .rotary_dim = kHeadDim};
                     return std::function<void(cudaStream_t)>(
                         [=](cudaStream_t s) { Check(LaunchRope(p, s), "Rope"); });
                   }});
  constexpr int64_t kFfn = 14336;
  cases.push_back({.name = "swiglu_fwd",
                   .kind = "swiglu",
                   .shape = {kTokens / 2, kFfn},
                   .work = 3.0 * (kTokens / 2) * kFfn * kBF16,
                   .setup = [](Buffers& b) {
                     const SwigluParams p{.dtype = DType::kBF16,
                                          .x = b.Get((kTokens / 2) * 2 * kFfn * kBF16),
                                          .y = b.Get((kTokens / 2) * kFfn * kBF16),
                                          .rows = kTokens / 2,
                                          .cols = kFfn};
                     return std::function<void(cudaStream_t)>(
                         [=](cudaStream_t s) { Check(LaunchSwiglu(p, s), "Swiglu"); });
                   }});
  cases.push_back({.name = "swiglu_bwd",
                   .kind = "swiglu_bwd",
                   .shape = {kTokens / 2, kFfn},
                   .work = 5.0 * (kTokens / 2) * kFfn * kBF16,
                   .setup = [](Buffers& b) {
                     const SwigluBackwardParams p{.dtype = DType::kBF16,
                                                  .dy = b.Get((kTokens / 2) * kFfn * kBF16),
                                                  .x = b.Get((kTokens / 2) * 2 * kFfn * kBF16),
                                                  .dx = b.Get((kTokens / 2) * 2 * kFfn * kBF16),
                                                  .rows = kTokens / 2,
                                                  .cols = kFfn};
                     return std::function<void(cudaStream_t)>([=](cudaStream_t s) {
                       Check(LaunchSwigluBackward(p, s), "SwigluBackward");
                     });
                   }});
  constexpr int64_t kCeTokens = 4096, kVocab = 131072;
  cases.push_back(
      {.name = "cross_entropy_fwd",
       .kind = "cross_entropy",
       .shape = {kCeTokens, kVocab},
       .work = 1.0 * kCeTokens * kVocab * kBF16,
       .setup = [](Buffers& b) {
         auto* targets = static_cast<int32_t*>(b.Get(kCeTokens * 4));
         CheckCuda(cudaMemset(targets, 0, kCeTokens * 4), "cudaMemset");
         const CrossEntropyState state{
             .max = static_cast<float*>(b.Get(kCeTokens * kF32)),
             .sum = static_cast<float*>(b.Get(kCeTokens * kF32)),
             .target_logit = static_cast<float*>(b.Get(kCeTokens * kF32))};
         const CrossEntropyChunkParams chunk{.dtype = DType::kBF16,
                                             .logits = b.Get(kCeTokens * kVocab * kBF16),
                                             .targets = targets,
                                             .tokens = kCeTokens,
                                             .chunk = kVocab,
                                             .state = state};
         const CrossEntropyFinishParams finish{.targets = targets,
                                               .tokens = kCeTokens,
                                               .state = state,
                                               .loss = static_cast<float*>(b.Get(kCeTokens * kF32)),
                                               .lse = static_cast<float*>(b.Get(kCeTokens * kF32))};
         return std::function<void(cudaStream_t)>([=](cudaStream_t s) {
           Check(LaunchCrossEntropyInit(state, kCeTokens, s), "CrossEntropyInit");
           Check(LaunchCrossEntropyChunk(chunk, s), "CrossEntropyChunk");
           Check(LaunchCrossEntropyFinish(finish, s), "CrossEntropyFinish");
         });
       }});
  cases.push_back({.name = "cross_entropy_bwd",
                   .kind = "cross_entropy_bwd",
                   .shape = {kCeTokens, kVocab},
                   .work = 2.0 * kCeTokens * kVocab * kBF16,
                   .setup = [](Buffers& b) {
                     auto* targets = static_cast<int32_t*>(b.Get(kCeTokens * 4));
                     CheckCuda(cudaMemset(targets, 0, kCeTokens * 4), "cudaMemset");
                     const CrossEntropyBackwardParams p{
                         .dtype = DType::kBF16,
                         .logits = b.Get(kCeTokens * kVocab * kBF16),
                         .targets = targets,
                         .lse = static_cast<float*>(b.Get(kCeTokens * kF32)),
                         .dloss = static_cast<float*>(b.Get(kCeTokens * kF32)),
                         .dlogits = b.Get(kCeTokens * kVocab * kBF16),
                         .tokens = kCeTokens,
                         .chunk = kVocab};
                     return std::function<void(cudaStream_t)>([=](cudaStream_t s) {
                       Check(LaunchCrossEntropyBackward(p, s), "CrossEntropyBackward");
                     });
                   }});
  // Attention, bf16, in the packed layout (batch sequences of equal length), through cuDNN's
  // fused attention (what the CUDA Ops use for bf16) and through our own kernels
  // ("attention_own_"): issue 5's two causal shapes, then the language (causal) and vision
  // (bidirectional) attention of bench/specs/mimo-moe-1b.yaml at 64 samples (230 and 196 tokens:
  // cuDNN pads them to 256). FLOPs as FlashAttention counts them: forward 4 * b * h * s^2 * d,
  // halved when causal; backward 2.5x.
  for (const bool own : {false, true}) {
    for (const auto& [b, h, s, d, causal, backward] :
         {std::tuple<int64_t, int64_t, int64_t, int64_t, bool, bool>{4, 32, 4096, 128, true, false},
          {4, 32, 4096, 128, true, true},
          {8, 16, 2048, 64, true, false},
          {8, 16, 2048, 64, true, true},
          {64, 16, 230, 128, true, true},
          {64, 12, 196, 64, false, true}}) {
      const double forward_flops = 4.0 * b * h * s * s * d / (causal ? 2 : 1);
      cases.push_back(
          {.name = absl::StrCat("attention_", own ? "own_" : "", backward ? "fwd_bwd" : "fwd", "_b",
                                b, "h", h, "s", s, "d", d, causal ? "" : "_bidir"),
           .kind = backward ? "attention" : "attention_fwd",
           .shape = {b, h, s, d, causal ? 1 : 0},
           .work = backward ? 3.5 * forward_flops : forward_flops,
           .flops = true,
           .setup = [=](Buffers& buf) {
             const int64_t tokens = b * s, n = tokens * h * d;
             std::vector<int32_t> cu(b + 1);
             for (int64_t i = 0; i <= b; ++i) cu[i] = static_cast<int32_t>(i * s);
             auto* cu_seqlens = static_cast<int32_t*>(buf.Get(cu.size() * 4));
             CheckCuda(cudaMemcpy(cu_seqlens, cu.data(), cu.size() * 4, cudaMemcpyHostToDevice),
                       "cudaMemcpy");
             const AttentionParams f{.dtype = DType::kBF16,
                                     .q = buf.Get(n * kBF16),
                                     .k = buf.Get(n * kBF16),
                                     .v = buf.Get(n * kBF16),
                                     .out = buf.Get(n * kBF16),
                                     .lse = static_cast<float*>(buf.Get(h * tokens * kF32)),
                                     .cu_seqlens = cu_seqlens,
                                     .num_seqs = b,
                                     .total_tokens = tokens,
                                     .heads = h,
                                     .kv_heads = h,
                                     .head_dim = d,
                                     .max_seqlen = s,
                                     .scale = 1.0f / std::sqrt(static_cast<float>(d)),
                                     .causal = causal};
             AttentionBackwardParams g{.dtype = DType::kBF16,
                                       .dout = buf.Get(n * kBF16),
                                       .q = f.q,
                                       .k = f.k,
                                       .v = f.v,
                                       .out = f.out,
                                       .lse = f.lse,
                                       .dq = buf.Get(n * kBF16),
                                       .dk = buf.Get(n * kBF16),
                                       .dv = buf.Get(n * kBF16),
                                       .cu_seqlens = cu_seqlens,
                                       .num_seqs = b,
                                       .total_tokens = tokens,
                                       .heads = h,
                                       .kv_heads = h,
                                       .head_dim = d,
                                       .max_seqlen = s,
                                       .scale = f.scale,
                                       .causal = causal};
             if (own) {
               g.workspace_bytes = AttentionBackwardWorkspaceBytes(tokens, h, d);
               g.workspace = buf.Get(g.workspace_bytes);
               return std::function<void(cudaStream_t)>([=](cudaStream_t st) {
                 Check(LaunchAttention(f, st), "Attention");
                 if (backward) Check(LaunchAttentionBackward(g, st), "AttentionBackward");
               });
             }
             // The plans are made here, outside the timing.
             const absl::StatusOr<size_t> fwd_bytes = cudnn->ForwardWorkspaceBytes(f);
             Check(fwd_bytes.status(), "CudnnAttention forward plan");
             size_t bwd_bytes = 0;
             if (backward) {
               const absl::StatusOr<size_t> bytes = cudnn->BackwardWorkspaceBytes(g);
               Check(bytes.status(), "CudnnAttention backward plan");
               bwd_bytes = *bytes;
             }
             void* workspace = buf.Get(std::max(*fwd_bytes, bwd_bytes));
             const size_t workspace_bytes = std::max(*fwd_bytes, bwd_bytes);
             return std::function<void(cudaStream_t)>([=](cudaStream_t st) {
               Check(cudnn->Forward(f, workspace, workspace_bytes, st), "CudnnAttention forward");
               if (backward) {
                 Check(cudnn->Backward(g, workspace, workspace_bytes, st),
                       "CudnnAttention backward");
               }
             });
           }});
    }
  }
  // AdamW on 2^28 parameters with fp32 gradients: reads master, m, v, grad; writes master, m, v
  // and the bf16 model copy.
  constexpr int64_t kParams = int64_t{1} << 28;
  cases.push_back({.name = "adamw_2^28",
                   .kind = "adamw",
                   .shape = {kParams},
                   .work = (4.0 * kF32 + 3.0 * kF32 + kBF16) * kParams,
                   .setup = [](Buffers& b) {
                     const AdamWParams p{.n = kParams,
                                         .master = static_cast<float*>(b.Get(kParams * kF32)),
                                         .m = static_cast<float*>(b.Get(kParams * kF32)),
                                         .v = static_cast<float*>(b.Get(kParams * kF32)),
                                         .grad = b.Get(kParams * kF32),
                                         .grad_dtype = DType::kF32,
                                         .model = b.Get(kParams * kBF16),
                                         .lr = 1e-4f,
                                         .weight_decay = 0.1f};
                     return std::function<void(cudaStream_t)>(
                         [=](cudaStream_t s) { Check(LaunchAdamW(p, s), "AdamW"); });
                   }});
  return cases;
}

std::string ShapeJson(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Median milliseconds per call of `run`, captured `iters` times into a graph.
double TimeCase(const std::function<void(cudaStream_t)>& run, int iters) {
  cudaStream_t s = nullptr;
  CheckCuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  run(s);  // Plans, heuristics and lazy loading outside the capture.
  CheckCuda(cudaStreamSynchronize(s), "warm-up");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CheckCuda(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "BeginCapture");
  for (int i = 0; i < iters; ++i) run(s);
  CheckCuda(cudaStreamEndCapture(s, &graph), "EndCapture");
  CheckCuda(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  cudaEvent_t start, stop;
  CheckCuda(cudaEventCreate(&start), "cudaEventCreate");
  CheckCuda(cudaEventCreate(&stop), "cudaEventCreate");
  CheckCuda(cudaGraphLaunch(exec, s), "cudaGraphLaunch");
  std::vector<double> ms;
  for (int rep = 0; rep < 5; ++rep) {
    CheckCuda(cudaEventRecord(start, s), "cudaEventRecord");
    CheckCuda(cudaGraphLaunch(exec, s), "cudaGraphLaunch");
    CheckCuda(cudaEventRecord(stop, s), "cudaEventRecord");
    CheckCuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float elapsed = 0;
    CheckCuda(cudaEventElapsedTime(&elapsed, start, stop), "cudaEventElapsedTime");
    ms.push_back(elapsed / iters);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int Main(int argc, char** argv) {
  CLI::App app("Times the CUDA ops on the cases bench/torch_kernels.py times in PyTorch.");
  bool list = false;
  std::string filter;
  int iters = 20;
  app.add_flag("--list", list, "print the cases as JSON lines and exit");
  app.add_option("--filter", filter, "only cases whose name contains this");
  app.add_option("--iters", iters, "calls per timed graph")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  std::unique_ptr<CublasLt> blas;
  std::unique_ptr<CudnnAttention> cudnn;
  if (!list) {
    auto created = CublasLt::Create();
    Check(created.status(), "CublasLt::Create");
    blas = std::move(*created);
    auto attention = CudnnAttention::Create();
    if (attention.ok()) {
      cudnn = std::move(*attention);
    } else if (absl::IsUnimplemented(attention.status())) {
      std::fprintf(stderr, "kernel_bench: no cuDNN attention cases: %s\n",
                   std::string(attention.status().message()).c_str());
    } else {
      Check(attention.status(), "CudnnAttention::Create");
    }
  }
  for (const Case& c : Cases(blas.get(), cudnn.get())) {
    const bool needs_cudnn =
        c.name.starts_with("attention_") && !c.name.starts_with("attention_own_");
    if (!list && needs_cudnn && cudnn == nullptr) continue;
    if (!filter.empty() && c.name.find(filter) == std::string::npos) continue;
    if (list) {
      std::printf(
          "{\"name\": \"%s\", \"kind\": \"%s\", \"shape\": %s, \"work\": %.0f, \"flops\": %s}\n",
          c.name.c_str(), c.kind.c_str(), ShapeJson(c.shape).c_str(), c.work,
          c.flops ? "true" : "false");
      continue;
    }
    Buffers buffers;
    const double ms = TimeCase(c.setup(buffers), iters);
    const double rate = c.work / (ms * 1e-3) / (c.flops ? 1e12 : 1e9);
    std::printf("{\"name\": \"%s\", \"ms\": %.5f, \"%s\": %.1f}\n", c.name.c_str(), ms,
                c.flops ? "tflops" : "gbps", rate);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace mimo::kernels

int main(int argc, char** argv) { return mimo::kernels::Main(argc, argv); }
