// What the Trainer's source files share (trainer.cc, trainer_language_step.cc,
// trainer_encoder_step.cc): the modules a rank holds and the encoders' indices and rows. Private
// to worker/.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "data/sample.h"
#include "mimo/language_model.h"
#include "mimo/mimo_model.h"
#include "mimo/modality_encoder.h"
#include "worker/bridge_link.h"
#include "worker/rank_modules.h"
#include "worker/trainer.h"

namespace mimo::worker {

namespace trainer_parts {

constexpr int kVision = 0, kAudio = 1;  // Indices of the encoders.

inline double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

inline const char* EncoderName(int x) { return x == kVision ? "vision" : "audio"; }
inline int EncoderIndex(ModelPart part) { return part == ModelPart::kVision ? kVision : kAudio; }
inline bool IsEncoder(ModelPart part) {
  return part == ModelPart::kVision || part == ModelPart::kAudio;
}

// The rows encoder `x` makes for each sample.
inline std::vector<int64_t> RowsPerSample(const MimoModelConfig& config, int x,
                                          const std::vector<data::Sample>& samples) {
  std::vector<int64_t> rows;
  for (const data::Sample& s : samples) {
    rows.push_back(x == kVision ? config.vision->max_tokens()
                                : s.audio_frames / config.audio->frames_per_token);
  }
  return rows;
}

// Sum of rows[i] over i in [begin, end).
inline int64_t SumRows(const std::vector<int64_t>& rows, int64_t begin, int64_t end) {
  int64_t sum = 0;
  for (int64_t i = begin; i < end; ++i) sum += rows[i];
  return sum;
}

// The copy of the shared word embeddings among a rank's language chunks (the first virtual
// stage's or the last's), or null.
inline Parameter* SharedEmbeddingsCopy(const std::vector<std::unique_ptr<LanguageModel>>& chunks) {
  for (const auto& chunk : chunks) {
    if (chunk->shared_embeddings_copy() != nullptr) return chunk->shared_embeddings_copy();
  }
  return nullptr;
}

}  // namespace trainer_parts

// The rank's modules (encoders, language chunks) and how its encoders and language replicas meet.
struct Trainer::Modules : RankModules {
  std::vector<BridgeEnd> links[2];  // Per encoder, by peer replica.
  int language_dp = 1;              // L.
  int encoder_dp[2] = {1, 1};       // E of each encoder.
};

}  // namespace mimo::worker
