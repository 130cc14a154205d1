// The bridge between modules on their own ranks (parallel/bridge.h) as a trainer holds it: the
// ends of its links, floats and rows sent and received over them, and their check.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "comm/communicator.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace mimo::worker {

// The part of the MIMO model a rank computes.
enum class ModelPart {
  kWhole,     // Every module (one rank, or data-parallel replicas of the whole model).
  kLanguage,  // The language model; the encoders' embeddings arrive over links.
  kVision,    // The vision encoder and its projector; its embeddings leave over links.
  kAudio,     // The audio encoder and its projector.
};

// One end of a bridge link (parallel/bridge.h) that this rank holds.
struct BridgeEnd {
  ModelPart encoder = ModelPart::kVision;  // kVision or kAudio: whose embeddings travel on it.
  int peer_replica = 0;                    // The data-parallel replica at the other end...
  int peer_dp = 1;                         // ... of the other module, which has this many.
  comm::Communicator* group = nullptr;     // Two members, the encoder end at rank 0. Not owned.
};

// One float to or from the other end of `link`, through a buffer of the ops' memory (what the
// communicator reads).
absl::Status SendFloat(kernels::Ops& ops, const BridgeEnd& link, float value);
absl::StatusOr<float> RecvFloat(kernels::Ops& ops, const BridgeEnd& link);

// Rows [row, row + rows) of `t` (rows, width; bf16 or f32) to or from the other end of `link`.
absl::Status SendRows(const BridgeEnd& link, const kernels::Tensor& t, int64_t row, int64_t rows);
absl::Status RecvRows(const BridgeEnd& link, const kernels::Tensor& t, int64_t row, int64_t rows);

// Sorts `links` (of the `encoder` named, seen from its side or the language side) by peer
// replica and checks they are the ones the layout pairs replica `own` of `own_dp` with.
absl::Status CheckLinks(std::vector<BridgeEnd>& links, absl::string_view encoder, bool encoder_side,
                        int own, int own_dp, int64_t micro_batch_size);

}  // namespace mimo::worker
