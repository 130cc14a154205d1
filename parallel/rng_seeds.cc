// Per-rank RNG seeds (Megatron's convention) and the RNG streams they key.
#include "parallel/rng_seeds.h"

namespace mimo::parallel {

RankSeeds ComputeRankSeeds(int64_t job_seed, bool data_parallel_random_init,
                           const DenseCoords& dense, const std::optional<ExpertCoords>& expert) {
  RankSeeds seeds;
  seeds.base = job_seed + 100 * int64_t{dense.pp};
  if (data_parallel_random_init) seeds.base += 10 * int64_t{dense.dp};
  seeds.tensor_parallel = seeds.base + 2718 + dense.tp;
  seeds.data_parallel = seeds.base;
  if (expert) seeds.expert = seeds.base + 1024 + 100 * int64_t{expert->ep} + expert->expt_tp;
  return seeds;
}

}  // namespace mimo::parallel
