// Planner throughput: BuildRankPlan on large worlds (target: 65,536 ranks well under a second).
#include <benchmark/benchmark.h>

#include "parallel/rank_plan.h"

namespace mimo::parallel {
namespace {

// Three modules in the proportions of a large MIMO job: a quarter of the world for each encoder,
// half for an expert-parallel language model with tp=8, pp=4.
LayoutSpec MimoWorld(int world) {
  const int quarter = world / 4;
  LayoutSpec spec;
  spec.world_size = world;
  spec.modules = {
      {.name = "vision", .tp = 4, .dp = quarter / 4, .rank_offset = 0},
      {.name = "audio", .tp = 2, .dp = quarter / 2, .rank_offset = quarter},
      {.name = "language",
       .tp = 8,
       .pp = 4,
       .dp = (2 * quarter) / 32,
       .ep = 8,
       .rank_offset = 2 * quarter},
  };
  return spec;
}

void BM_BuildRankPlan(benchmark::State& state) {
  const LayoutSpec spec = MimoWorld(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    absl::StatusOr<RankPlan> plan = BuildRankPlan(spec);
    if (!plan.ok()) {
      state.SkipWithError(std::string(plan.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(plan->rank(plan->world_size() - 1));
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.counters["ranks"] = static_cast<double>(state.range(0));
}
BENCHMARK(BM_BuildRankPlan)
    ->RangeMultiplier(4)
    ->Range(1024, 1 << 20)
    ->Unit(benchmark::kMillisecond);

// Looking up every rank's groups of every kind, as a launcher building communicators would.
void BM_AllGroupLookups(benchmark::State& state) {
  const absl::StatusOr<RankPlan> plan = BuildRankPlan(MimoWorld(static_cast<int>(state.range(0))));
  if (!plan.ok()) {
    state.SkipWithError(std::string(plan.status().message()).c_str());
    return;
  }
  for (auto _ : state) {
    size_t total = 0;
    for (int r = 0; r < plan->world_size(); ++r) {
      for (int k = 0; k < kNumGroupKinds; ++k)
        total += plan->Group(r, static_cast<GroupKind>(k)).size();
    }
    benchmark::DoNotOptimize(total);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_AllGroupLookups)->Arg(65536)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace mimo::parallel

BENCHMARK_MAIN();
