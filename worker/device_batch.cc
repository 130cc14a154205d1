// UploadMicroBatch: each host array into a tensor of the ops' device, the samples' images and
// audio copied from the samples, floats rounded to bf16 (by the ops' Cast, after the copy) where
// the model computes in bf16.
#include "worker/device_batch.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
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

// The spans, one after another, into a new tensor of `shape`: copied to the device one by one
// (each sample's values from where the sample holds them: no packed host copy first).
absl::StatusOr<Tensor> Floats(kernels::Ops& ops, const std::vector<absl::Span<const float>>& parts,
                              const kernels::Shape& shape, DType dtype) {
  int64_t values = 0;
  for (const absl::Span<const float> part : parts) values += static_cast<int64_t>(part.size());
  MIMO_ASSIGN_OR_RETURN(Tensor t, Tensor::Empty(shape, dtype, ops.allocator(), ops.stream()));
  if (values != t.numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat("UploadMicroBatch: ", values, " values for ", t.ToString()));
  }
  if (values == 0) return t;
  auto copy = [&](Tensor& to) -> absl::Status {
    float* at = to.data<float>();
    for (const absl::Span<const float> part : parts) {
      MIMO_RETURN_IF_ERROR(ops.CopyFromHost(at, part.data(), part.size() * sizeof(float)));
      at += part.size();
    }
    return absl::OkStatus();
  };
  if (dtype == DType::kF32) {
    MIMO_RETURN_IF_ERROR(copy(t));
    return t;
  }
  // Rounded by the ops' Cast (on the device for a GPU: a host loop over a micro-batch's images,
  // 9.6M values at 64 images of 224 px, kept the GPU idle for milliseconds).
  MIMO_ASSIGN_OR_RETURN(Tensor f32,
                        Tensor::Empty(shape, DType::kF32, ops.allocator(), ops.stream()));
  MIMO_RETURN_IF_ERROR(copy(f32));
  MIMO_RETURN_IF_ERROR(
      ops.Cast({.from = DType::kF32, .to = dtype, .x = f32.data(), .y = t.data(), .n = t.numel()}));
  return t;
}

}  // namespace

absl::StatusOr<DeviceBatch> UploadMicroBatch(kernels::Ops& ops, const data::HostMicroBatch& host,
                                             const std::vector<data::Sample>& samples,
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
    std::vector<absl::Span<const float>> images;
    for (const data::Sample& s : samples) {
      if (!s.image.empty()) images.push_back(s.image);
    }
    if (static_cast<int64_t>(images.size()) != host.num_images) {
      return absl::InvalidArgumentError(absl::StrCat("UploadMicroBatch: ", images.size(),
                                                     " samples with an image for a batch of ",
                                                     host.num_images));
    }
    MIMO_ASSIGN_OR_RETURN(
        b.vision.input,
        Floats(ops, images, {host.num_images, v.num_channels, v.image_size, v.image_size}, dtype));
    b.vision_positions = host.vision_positions;
  }
  if (config.audio.has_value() && !host.audio_frames.empty()) {
    const int64_t bins = config.audio->num_mel_bins;
    std::vector<absl::Span<const float>> clips;
    int64_t frames = 0;
    for (const data::Sample& s : samples) {
      if (s.audio_frames == 0) continue;
      const size_t c = clips.size();
      if (c >= host.audio_frames.size() || s.audio_frames != host.audio_frames[c]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "UploadMicroBatch: clip ", c, " of the samples has ", s.audio_frames,
            " frames where the batch packed ",
            c < host.audio_frames.size() ? absl::StrCat(host.audio_frames[c]) : "no clip"));
      }
      if (static_cast<int64_t>(s.audio.size()) != s.audio_frames * bins) {
        return absl::InvalidArgumentError(
            absl::StrCat("UploadMicroBatch: a clip of ", s.audio.size(), " values for ",
                         s.audio_frames, " frames of ", bins, " mel bins"));
      }
      clips.push_back(s.audio);
      frames += s.audio_frames;
    }
    if (clips.size() != host.audio_frames.size()) {
      return absl::InvalidArgumentError(absl::StrCat("UploadMicroBatch: ", clips.size(),
                                                     " samples with audio for a batch of ",
                                                     host.audio_frames.size(), " clips"));
    }
    MIMO_ASSIGN_OR_RETURN(b.audio.input, Floats(ops, clips, {frames, bins}, dtype));
    b.audio.frames = host.audio_frames;
    b.audio_positions = host.audio_positions;
  }
  return out;
}

}  // namespace mimo::worker
