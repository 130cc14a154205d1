// The CPU Ops: every call runs the op's CPU twin.
#include <cstring>
#include <memory>

#include "kernels/ops.h"

namespace mimo::kernels {
namespace {

// Every CPU op is done when it returns.
class DoneEvent final : public Event {
 public:
  absl::Status Wait() override { return absl::OkStatus(); }
};

class CpuOps final : public Ops {
 public:
  Device device() const override { return Device::Cpu(); }
  Allocator& allocator() override { return allocator_; }
  StreamHandle stream() const override { return nullptr; }
  absl::Status Synchronize() override { return absl::OkStatus(); }
  absl::StatusOr<std::unique_ptr<Event>> RecordEvent() override {
    return std::make_unique<DoneEvent>();
  }
  absl::Status UseDeviceOnThisThread() override { return absl::OkStatus(); }

  absl::Status CopyFromHost(void* dst, const void* host, size_t bytes) override {
    return Copy(dst, host, bytes);
  }
  absl::Status CopyToHost(void* host, const void* src, size_t bytes) override {
    return Copy(host, src, bytes);
  }
  absl::Status Copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    if (dst == nullptr || src == nullptr) {
      return absl::InvalidArgumentError("Ops::Copy: null buffer");
    }
    std::memmove(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status SetZero(void* dst, size_t bytes) override {
    if (bytes == 0) return absl::OkStatus();
    if (dst == nullptr) return absl::InvalidArgumentError("Ops::SetZero: null buffer");
    std::memset(dst, 0, bytes);
    return absl::OkStatus();
  }

  absl::Status Add(const AddParams& p) override { return AddCpu(p); }
  absl::Status Cast(const CastParams& p) override { return CastCpu(p); }
  absl::Status Embedding(const EmbeddingParams& p) override { return EmbeddingCpu(p); }
  absl::Status EmbeddingBackward(const EmbeddingBackwardParams& p) override {
    return EmbeddingBackwardCpu(p);
  }
  absl::Status RmsNorm(const RmsNormParams& p) override { return RmsNormCpu(p); }
  absl::Status RmsNormBackward(const RmsNormBackwardParams& p) override {
    return RmsNormBackwardCpu(p);
  }
  absl::Status LayerNorm(const LayerNormParams& p) override { return LayerNormCpu(p); }
  absl::Status LayerNormBackward(const LayerNormBackwardParams& p) override {
    return LayerNormBackwardCpu(p);
  }
  absl::Status Gemm(const GemmParams& p) override { return GemmCpu(p); }
  absl::Status GemmBatch(absl::Span<const GemmParams> problems) override {
    return GemmBatchCpu(problems);
  }
  absl::Status GroupedGemm(const GroupedGemmParams& p) override { return GroupedGemmCpu(p); }
  absl::Status Linear(const LinearParams& p) override { return LinearCpu(p); }
  absl::Status LinearBackward(const LinearBackwardParams& p) override {
    return LinearBackwardCpu(p);
  }
  absl::Status Rope(const RopeParams& p) override { return RopeCpu(p); }
  absl::Status Attention(const AttentionParams& p) override { return AttentionCpu(p); }
  absl::Status AttentionBackward(const AttentionBackwardParams& p) override {
    return AttentionBackwardCpu(p);
  }
  absl::Status AttentionMerge(const AttentionMergeParams& p) override {
    return AttentionMergeCpu(p);
  }
  absl::Status Swiglu(const SwigluParams& p) override { return SwigluCpu(p); }
  absl::Status SwigluBackward(const SwigluBackwardParams& p) override {
    return SwigluBackwardCpu(p);
  }
  absl::Status Gelu(const GeluParams& p) override { return GeluCpu(p); }
  absl::Status GeluBackward(const GeluBackwardParams& p) override { return GeluBackwardCpu(p); }
  absl::Status Dropout(const DropoutParams& p) override { return DropoutCpu(p); }
  absl::Status Patchify(const PatchifyParams& p) override { return PatchifyCpu(p); }
  absl::Status CrossEntropyInit(const CrossEntropyState& s, int64_t tokens) override {
    return CrossEntropyInitCpu(s, tokens);
  }
  absl::Status CrossEntropyChunk(const CrossEntropyChunkParams& p) override {
    return CrossEntropyChunkCpu(p);
  }
  absl::Status CrossEntropyFinish(const CrossEntropyFinishParams& p) override {
    return CrossEntropyFinishCpu(p);
  }
  absl::Status CrossEntropyBackward(const CrossEntropyBackwardParams& p) override {
    return CrossEntropyBackwardCpu(p);
  }
  absl::Status AdamW(const AdamWParams& p) override { return AdamWCpu(p); }
  absl::Status MoeRouter(const MoeRouterParams& p) override { return MoeRouterCpu(p); }
  absl::Status MoeRouterBackward(const MoeRouterBackwardParams& p) override {
    return MoeRouterBackwardCpu(p);
  }
  absl::Status MoeAuxLoss(const MoeAuxLossParams& p) override { return MoeAuxLossCpu(p); }
  absl::Status MoeCapacityDrop(const MoeCapacityDropParams& p) override {
    return MoeCapacityDropCpu(p);
  }
  absl::Status MoePermuteMap(const MoePermuteMapParams& p) override { return MoePermuteMapCpu(p); }
  absl::Status MoePermute(const MoePermuteParams& p) override { return MoePermuteCpu(p); }
  absl::Status MoePermuteBackward(const MoePermuteBackwardParams& p) override {
    return MoePermuteBackwardCpu(p);
  }
  absl::Status MoeUnpermute(const MoeUnpermuteParams& p) override { return MoeUnpermuteCpu(p); }
  absl::Status MoeUnpermuteBackward(const MoeUnpermuteBackwardParams& p) override {
    return MoeUnpermuteBackwardCpu(p);
  }
  absl::Status SumSquares(const SumSquaresParams& p) override { return SumSquaresCpu(p); }

 private:
  CpuAllocator allocator_;
};

}  // namespace

std::unique_ptr<Ops> NewCpuOps() { return std::make_unique<CpuOps>(); }

}  // namespace mimo::kernels
