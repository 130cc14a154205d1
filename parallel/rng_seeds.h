// Per-rank RNG seeds (Megatron's convention) and the RNG streams they key.
#pragma once

#include <cstdint>
#include <optional>

#include "common/philox.h"

namespace mimo::parallel {

// A rank's coordinates in its module's dense view (tp, cp, dp, pp).
struct DenseCoords {
  int tp = 0, cp = 0, dp = 0, pp = 0;
  bool operator==(const DenseCoords&) const = default;
};

// A language rank's coordinates in the expert view (expt_tp, ep, expt_dp, pp).
struct ExpertCoords {
  int expt_tp = 0, ep = 0, expt_dp = 0, pp = 0;
  bool operator==(const ExpertCoords&) const = default;
};

// Megatron's seeds, from the rank's real coordinates in its own module:
//   base            = job_seed + 100*pp_rank (+ 10*dp_rank with data-parallel random init)
//   tensor_parallel = base + 2718 + tp_rank
//   data_parallel   = base
//   expert          = base + 1024 + 100*ep_rank + expt_tp_rank (language ranks only)
// Within one pipeline stage (and, with data-parallel random init, one dp rank), ranks holding
// different expert shards get different expert seeds while expert-data-parallel replicas share
// theirs (etp <= 100 is enforced for this). Beyond that scope Megatron's values can coincide:
// +100 per stage equals +100 per ep rank, and +10*dp_rank reaches +100 once dp >= 10.
struct RankSeeds {
  int64_t base = 0;
  int64_t tensor_parallel = 0;
  int64_t data_parallel = 0;
  std::optional<int64_t> expert;
  bool operator==(const RankSeeds&) const = default;
};

RankSeeds ComputeRankSeeds(int64_t job_seed, bool data_parallel_random_init,
                           const DenseCoords& dense, const std::optional<ExpertCoords>& expert);

// What a stream's numbers are for. Megatron's seed values of different kinds can be equal
// (2718 + tp_rank == 1024 + 100*ep_rank + expt_tp_rank for tp_rank = 6, ep_rank = 17), so a
// stream is keyed by (seed, kind), never by the seed alone.
enum class RngStreamKind : uint32_t {
  kTensorParallel = 1,  // Weights sharded across the tp group, dropout in tp regions.
  kDataParallel = 2,    // Weights replicated across tp; sequence-parallel dropout.
  kExpert = 3,          // Expert weights sharded across ep / expt_tp.
};

// A counter-based stream: block i is Philox4x32-10 with key = the 64-bit seed and
// counter = (i low, i high, substream, kind). (seed, kind, substream) -> stream is injective, so
// equal seed values of different kinds never yield the same numbers.
class RngStream {
 public:
  RngStream(int64_t seed, RngStreamKind kind, uint32_t substream = 0)
      : key_{static_cast<uint32_t>(static_cast<uint64_t>(seed)),
             static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32)},
        substream_(substream),
        kind_(static_cast<uint32_t>(kind)) {}

  // 128 random bits, the `index`-th block of the stream.
  PhiloxCounter Block(uint64_t index) const {
    return Philox4x32(
        {static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), substream_, kind_},
        key_);
  }

 private:
  PhiloxKey key_;
  uint32_t substream_;
  uint32_t kind_;
};

}  // namespace mimo::parallel
