// A host micro-batch (data/micro_batch.h) moved to a device as the MIMO model's batch: ids and
// labels as int32 tensors, images and audio frames in the compute dtype, the packed sequences.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "data/micro_batch.h"
#include "data/sample.h"
#include "kernels/ops.h"
#include "mimo/mimo_model.h"
#include "mimo/packed_sequences.h"

namespace mimo::worker {

struct DeviceBatch {
  std::unique_ptr<PackedSequences> sequences;
  MimoBatch batch;
  int64_t labelled = 0;  // Tokens with a label.
};

// `host` is `samples` packed (data::PackSamples) with `config`'s image_tokens and
// frames_per_token; the images and audio are copied from the samples. `config` gives the image
// shape and which encoders exist: a model without a vision (audio) encoder gets none of the
// micro-batch's images (audio). InvalidArgument when the samples' media do not match the batch
// (the count of images or clips, a clip's values against its frames) or the model's shapes. With
// context parallelism (context_size > 1; the sequences padded to multiples of 2 context_size) the
// sequences, tokens and labels are those of member context_rank (PackedSequences::CreateSplit); the
// images, audio and their placeholders' positions stay the whole micro-batch's.
absl::StatusOr<DeviceBatch> UploadMicroBatch(kernels::Ops& ops, const data::HostMicroBatch& host,
                                             const std::vector<data::Sample>& samples,
                                             const MimoModelConfig& config, int context_size = 1,
                                             int context_rank = 0);

}  // namespace mimo::worker
