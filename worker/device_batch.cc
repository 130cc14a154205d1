// UploadMicroBatch: each host array into a tensor of the ops' device, floats rounded to bf16
// (by the ops' Cast, after the copy) where the model computes in bf16.
#include "worker/device_batch.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mimo::worker {
namespace {

using kernels::DType;
using kernels::Tensor;

absl::StatusOr<Tensor> Ints(kernels::Ops& ops, const std::vector<int32_t>& v) {
  MIMO_ASSIGN_OR_RETURN(Tensor t, Tensor::Empty({static_cast<int64_t>(v.size())}, DType::kI32,
                                                ops.allocator(), ops.stream()));
  if (!v.empty()) MIMO_RETURN_IF_ERROR(ops.CopyFromHost(t.data(), v.data(), t.nbytes()));
  return t;
}

absl::StatusOr<Tensor> Floats(kernels::Ops& ops, const std::vector<float>& v,
                              const kernels::Shape& shape, DType dtype) {
  MIMO_ASSIGN_OR_RETURN(Tensor t, Tensor::Empty(shape, dtype, ops.allocator(), ops.stream()));
  if (static_cast<int64_t>(v.size()) != t.numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat("UploadMicroBatch: ", v.size(), " values for ", t.ToString()));
  }
  if (v.empty()) return t;
  if (dtype == DType::kF32) {
    MIMO_RETURN_IF_ERROR(ops.CopyFromHost(t.data(), v.data(), t.nbytes()));
    return t;
  }
  // Rounded by the ops' Cast (on the device for a GPU: a host loop over a micro-batch's images,
  // 9.6M values at 64 images of 224 px, kept the GPU idle for milliseconds).
  MIMO_ASSIGN_OR_RETURN(Tensor f32,
                        Tensor::Empty(shape, DType::kF32, ops.allocator(), ops.stream()));
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(f32.data(), v.data(), f32.nbytes()));
  MIMO_RETURN_IF_ERROR(
      ops.Cast({.from = DType::kF32, .to = dtype, .x = f32.data(), .y = t.data(), .n = t.numel()}));
  return t;
}

}  // namespace

absl::StatusOr<DeviceBatch> UploadMicroBatch(kernels::Ops& ops, const data::HostMicroBatch& host,
                                             const MimoModelConfig& config, int context_size,
                                             int context_rank) {
  const DType dtype = config.language.transformer.dtype;
  DeviceBatch out;
  out.labelled = host.labelled;
  MIMO_ASSIGN_OR_RETURN(PackedSequences seqs, PackedSequences::CreateSplit(
                                                  ops, host.lengths, context_size, context_rank));
  out.sequences = std::make_unique<PackedSequences>(std::move(seqs));
  MimoBatch& b = out.batch;
  if (context_size == 1) {
    MIMO_ASSIGN_OR_RETURN(b.text.tokens, Ints(ops, host.tokens));
    MIMO_ASSIGN_OR_RETURN(b.text.labels, Ints(ops, host.labels));
  } else {
    std::vector<int32_t> tokens, labels;
    for (const int64_t t : parallel::GlobalTokensOf(out.sequences->runs())) {
      tokens.push_back(host.tokens[t]);
      labels.push_back(host.labels[t]);
    }
    MIMO_ASSIGN_OR_RETURN(b.text.tokens, Ints(ops, tokens));
    MIMO_ASSIGN_OR_RETURN(b.text.labels, Ints(ops, labels));
  }
  if (config.vision.has_value() && host.num_images > 0) {
    const ModalityEncoderConfig& v = *config.vision;
    MIMO_ASSIGN_OR_RETURN(
        b.vision.input,
        Floats(ops, host.images, {host.num_images, v.num_channels, v.image_size, v.image_size},
               dtype));
    b.vision_positions = host.vision_positions;
  }
  if (config.audio.has_value() && !host.audio_frames.empty()) {
    const int64_t bins = config.audio->num_mel_bins;
    MIMO_ASSIGN_OR_RETURN(
        b.audio.input,
        Floats(ops, host.audio, {static_cast<int64_t>(host.audio.size()) / bins, bins}, dtype));
    b.audio.frames = host.audio_frames;
    b.audio_positions = host.audio_positions;
  }
  return out;
}

}  // namespace mimo::worker
