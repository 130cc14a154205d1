// Property tests of BuildRankPlan over swept layouts: tiling, groups, views, embeddings, seeds.
#include <algorithm>
#include <array>
#include <cstdint>
#include <iterator>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "parallel/grid_view.h"
#include "parallel/layout.h"
#include "parallel/module_parallelism.h"
#include "parallel/rank_plan.h"
#include "parallel/rng_seeds.h"

namespace mimo::parallel {

// Readable failure messages for the plan's value types (found by gtest through ADL).
void PrintTo(const DenseCoords& c, std::ostream* os) {
  *os << "{tp=" << c.tp << " cp=" << c.cp << " dp=" << c.dp << " pp=" << c.pp << "}";
}
void PrintTo(const ExpertCoords& c, std::ostream* os) {
  *os << "{expt_tp=" << c.expt_tp << " ep=" << c.ep << " expt_dp=" << c.expt_dp << " pp=" << c.pp
      << "}";
}
void PrintTo(const RankSeeds& s, std::ostream* os) {
  *os << "{base=" << s.base << " tensor_parallel=" << s.tensor_parallel
      << " data_parallel=" << s.data_parallel << " expert=";
  if (s.expert) {
    *os << *s.expert;
  } else {
    *os << "none";
  }
  *os << "}";
}

namespace {

constexpr int kMaxWorld = 64;
constexpr absl::string_view kLanguage = "language";

// One module's sizes; encoders keep ep = etp = 1.
struct Factors {
  int tp = 1, cp = 1, pp = 1, dp = 1, ep = 1, etp = 1;
};

std::vector<int> Divisors(int n) {
  std::vector<int> out;
  for (int d = 1; d <= n; ++d) {
    if (n % d == 0) out.push_back(d);
  }
  return out;
}

// Every (tp, cp, pp, dp) with tp a power of two and tp*cp*pp*dp = n.
std::vector<Factors> DenseFactorizations(int n) {
  std::vector<Factors> out;
  for (int tp = 1; n % tp == 0; tp *= 2) {
    for (int cp : Divisors(n / tp)) {
      for (int pp : Divisors(n / tp / cp)) {
        out.push_back({.tp = tp, .cp = cp, .pp = pp, .dp = n / tp / cp / pp});
      }
    }
  }
  return out;
}

// Every dense factorization of n with every (ep, etp) such that etp*ep divides tp*cp*dp.
std::vector<Factors> LanguageFactorizations(int n) {
  std::vector<Factors> out;
  for (const Factors& f : DenseFactorizations(n)) {
    const int tcd = f.tp * f.cp * f.dp;
    for (int etp : Divisors(tcd)) {
      for (int ep : Divisors(tcd / etp)) {
        Factors g = f;
        g.ep = ep;
        g.etp = etp;
        out.push_back(g);
      }
    }
  }
  return out;
}

// The factorizations of 0..kMaxWorld ranks, built once.
const std::vector<Factors>& Factorizations(int n, bool language) {
  static const auto* tables = [] {
    auto* t = new std::array<std::vector<std::vector<Factors>>, 2>();
    for (int ranks = 0; ranks <= kMaxWorld; ++ranks) {
      (*t)[0].push_back(ranks == 0 ? std::vector<Factors>() : DenseFactorizations(ranks));
      (*t)[1].push_back(ranks == 0 ? std::vector<Factors>() : LanguageFactorizations(ranks));
    }
    return t;
  }();
  return (*tables)[language ? 1 : 0][n];
}

int Size(const ModuleParallelism& m) { return m.tp * m.cp * m.pp * *m.dp; }
int ExptDp(const ModuleParallelism& m) { return m.tp * m.cp * *m.dp / (m.etp * m.ep); }

std::string Describe(const LayoutSpec& spec) {
  std::string out = absl::StrCat("layout world_size=", *spec.world_size, " seed=", spec.seed,
                                 " data_parallel_random_init=", spec.data_parallel_random_init);
  for (const ModuleParallelism& m : spec.modules) {
    absl::StrAppend(&out, " | ", m.name, " [", *m.rank_offset, ",", *m.rank_offset + Size(m),
                    ") tp=", m.tp, " cp=", m.cp, " pp=", m.pp, " dp=", *m.dp, " ep=", m.ep,
                    " etp=", m.etp);
  }
  return out;
}

// Each encoder's dp and the language module's nest (encoders' with each other's need not).
bool DataParallelSizesNest(const LayoutSpec& spec) {
  for (size_t a = 0; a < spec.modules.size(); ++a) {
    for (size_t b = a + 1; b < spec.modules.size(); ++b) {
      if (spec.modules[a].name != spec.language && spec.modules[b].name != spec.language) continue;
      const int x = *spec.modules[a].dp, y = *spec.modules[b].dp;
      if (x % y != 0 && y % x != 0) return false;
    }
  }
  return true;
}

// The groups a view of `shape` (offset 0) should have for `mask`, found by brute force: ranks
// bucketed by their coordinates outside the mask, buckets ordered by lowest rank, members by
// their masked coordinates compared from the last masked dim to the first (earliest fastest).
struct Enumeration {
  std::vector<std::vector<int>> groups;
  std::vector<int> group_of;  // Per rank.
};

Enumeration BruteForce(const std::array<int, 4>& shape, GridView::DimMask mask) {
  const int size = shape[0] * shape[1] * shape[2] * shape[3];
  const auto masked = [mask](int dim) { return (mask >> dim & 1) != 0; };
  std::vector<std::array<int, 4>> coords;
  std::map<std::array<int, 4>, std::vector<int>> buckets;
  std::array<int, 4> counter = {0, 0, 0, 0};
  for (int r = 0; r < size; ++r) {
    coords.push_back(counter);
    std::array<int, 4> key = counter;
    for (int d = 0; d < 4; ++d) {
      if (masked(d)) key[d] = -1;
    }
    buckets[key].push_back(r);
    for (int d = 0; d < 4 && ++counter[d] == shape[d]; ++d) counter[d] = 0;
  }
  Enumeration e;
  for (auto& [key, ranks] : buckets) e.groups.push_back(std::move(ranks));
  std::sort(e.groups.begin(), e.groups.end(), [](const auto& a, const auto& b) {
    return *std::min_element(a.begin(), a.end()) < *std::min_element(b.begin(), b.end());
  });
  for (std::vector<int>& group : e.groups) {
    std::sort(group.begin(), group.end(), [&](int a, int b) {
      for (int d = 3; d >= 0; --d) {
        if (masked(d) && coords[a][d] != coords[b][d]) return coords[a][d] < coords[b][d];
      }
      return false;
    });
  }
  e.group_of.assign(size, -1);
  for (size_t g = 0; g < e.groups.size(); ++g) {
    for (int r : e.groups[g]) e.group_of[r] = static_cast<int>(g);
  }
  return e;
}

const Enumeration& Oracle(const std::array<int, 4>& shape, GridView::DimMask mask) {
  static auto* cache = new std::map<std::pair<std::array<int, 4>, GridView::DimMask>, Enumeration>;
  auto [it, inserted] = cache->try_emplace({shape, mask});
  if (inserted) it->second = BruteForce(shape, mask);
  return it->second;
}

// A group kind, the view it comes from and its dims there. Dense view dims: tp=bit 0, cp=1, dp=2,
// pp=3; expert view dims: expt_tp=bit 0, ep=1, expt_dp=2, pp=3.
struct KindDims {
  GroupKind kind;
  bool expert;
  GridView::DimMask mask;
};
constexpr KindDims kKinds[] = {
    {GroupKind::kTp, false, 0b0001},       {GroupKind::kCp, false, 0b0010},
    {GroupKind::kDp, false, 0b0100},       {GroupKind::kPp, false, 0b1000},
    {GroupKind::kDpCp, false, 0b0110},     {GroupKind::kTpCp, false, 0b0011},
    {GroupKind::kTpPp, false, 0b1001},     {GroupKind::kTpDpCp, false, 0b0111},
    {GroupKind::kTpCpDpPp, false, 0b1111}, {GroupKind::kEp, true, 0b0010},
    {GroupKind::kExptTp, true, 0b0001},    {GroupKind::kExptDp, true, 0b0100},
    {GroupKind::kExptTpEp, true, 0b0011},  {GroupKind::kExptTpEpPp, true, 0b1011},
};
// Every kind but embd and pos_embd, which CheckEmbeddingGroups covers.
static_assert(std::size(kKinds) + 2 == kNumGroupKinds);

// Success when `got` lists `want` shifted by `offset`, in order.
::testing::AssertionResult SameRanks(absl::Span<const int> got, absl::Span<const int> want,
                                     int offset = 0) {
  bool same = got.size() == want.size();
  for (size_t i = 0; same && i < got.size(); ++i) same = got[i] == want[i] + offset;
  if (same) return ::testing::AssertionSuccess();
  std::vector<int> shifted;
  for (int r : want) shifted.push_back(r + offset);
  return ::testing::AssertionFailure()
         << "got [" << absl::StrJoin(got, ",") << "], want [" << absl::StrJoin(shifted, ",") << "]";
}

// SameRanks for two spans, quick when they view the same memory.
::testing::AssertionResult SameGroup(absl::Span<const int> got, absl::Span<const int> want) {
  if (got.data() == want.data() && got.size() == want.size()) return ::testing::AssertionSuccess();
  return SameRanks(got, want);
}

void CheckTiling(const LayoutSpec& spec, const RankPlan& plan) {
  ASSERT_EQ(plan.world_size(), *spec.world_size);
  ASSERT_EQ(plan.seed(), spec.seed);
  ASSERT_EQ(plan.modules().size(), spec.modules.size());
  ASSERT_EQ(plan.language().config().name, kLanguage);
  std::vector<int> owner(plan.world_size(), -1);
  for (size_t i = 0; i < spec.modules.size(); ++i) {
    const ModuleParallelism& m = spec.modules[i];
    const ResolvedModule& c = plan.modules()[i].config();
    ASSERT_EQ(c.name, m.name);
    ASSERT_EQ(c.spec_index, static_cast<int>(i));
    ASSERT_EQ(c.is_language, m.name == kLanguage);
    ASSERT_EQ(c.rank_offset, *m.rank_offset);
    ASSERT_EQ(c.size(), Size(m));
    ASSERT_EQ((std::array{c.tp, c.cp, c.pp, c.dp, c.ep, c.etp}),
              (std::array{m.tp, m.cp, m.pp, *m.dp, m.ep, m.etp}));
    for (int r = c.rank_offset; r < c.rank_end(); ++r) {
      ASSERT_LT(r, plan.world_size()) << c.name << " runs past the world";
      ASSERT_EQ(owner[r], -1) << "rank " << r << " is in two modules";
      owner[r] = static_cast<int>(i);
    }
  }
  for (int r = 0; r < plan.world_size(); ++r) {
    ASSERT_NE(owner[r], -1) << "rank " << r << " is in no module";
    ASSERT_EQ(plan.rank(r).module, owner[r]) << "rank " << r;
    ASSERT_EQ(&plan.module_of(r), &plan.modules()[owner[r]]) << "rank " << r;
  }
}

void CheckViews(const ModuleParallelism& m, const ModulePlan& mp) {
  const GridView& dense = mp.dense_view();
  ASSERT_EQ(dense.shape(), std::vector<int>({m.tp, m.cp, *m.dp, m.pp}));
  ASSERT_EQ(dense.dim_names(), std::vector<std::string>({"tp", "cp", "dp", "pp"}));
  ASSERT_EQ(dense.rank_offset(), *m.rank_offset);
  ASSERT_EQ(dense.size(), Size(m));
  const GridView* expert = mp.expert_view();
  if (m.name != kLanguage) {
    ASSERT_EQ(expert, nullptr) << m.name;
    return;
  }
  ASSERT_NE(expert, nullptr);
  ASSERT_EQ(expert->shape(), std::vector<int>({m.etp, m.ep, ExptDp(m), m.pp}));
  ASSERT_EQ(expert->dim_names(), std::vector<std::string>({"expt_tp", "ep", "expt_dp", "pp"}));
  ASSERT_EQ(expert->rank_offset(), dense.rank_offset());
  ASSERT_EQ(expert->size(), dense.size());
  const std::vector<std::vector<int>> expert_pp = expert->RankEnum(expert->Mask({"pp"}).value());
  const std::vector<absl::Span<const int>> dense_pp = mp.Groups(GroupKind::kPp);
  ASSERT_EQ(expert_pp.size(), dense_pp.size());
  for (size_t g = 0; g < dense_pp.size(); ++g) {
    ASSERT_TRUE(SameRanks(expert_pp[g], dense_pp[g])) << "expert vs dense pp group " << g;
  }
}

void CheckGroups(const ModuleParallelism& m, const ModulePlan& mp, const KindDims& k) {
  const absl::string_view kind = GroupKindName(k.kind);
  const int offset = *m.rank_offset, size = Size(m);
  if (k.expert && m.name != kLanguage) {
    ASSERT_TRUE(mp.Groups(k.kind).empty()) << m.name << " has " << kind << " groups";
    for (int r = offset; r < offset + size; ++r) {
      ASSERT_TRUE(mp.Group(r, k.kind).empty()) << m.name << " rank " << r << " has " << kind;
    }
    return;
  }
  const std::array<int, 4> shape =
      k.expert ? std::array{m.etp, m.ep, ExptDp(m), m.pp} : std::array{m.tp, m.cp, *m.dp, m.pp};
  int group_size = 1;
  for (int d = 0; d < 4; ++d) {
    if (k.mask >> d & 1) group_size *= shape[d];
  }
  const Enumeration& want = Oracle(shape, k.mask);
  const std::vector<absl::Span<const int>> groups = mp.Groups(k.kind);
  ASSERT_EQ(groups.size(), static_cast<size_t>(size / group_size)) << kind;
  std::vector<int> count(size, 0);
  for (size_t g = 0; g < groups.size(); ++g) {
    ASSERT_EQ(groups[g].size(), static_cast<size_t>(group_size)) << kind << " group " << g;
    for (int r : groups[g]) {
      if (r < offset || r >= offset + size) FAIL() << kind << " group " << g << " has " << r;
      ++count[r - offset];
    }
    if (g > 0) {
      ASSERT_LT(*std::min_element(groups[g - 1].begin(), groups[g - 1].end()),
                *std::min_element(groups[g].begin(), groups[g].end()))
          << kind << " groups " << g - 1 << " and " << g << " are out of order";
    }
    ASSERT_TRUE(SameRanks(groups[g], want.groups[g], offset)) << kind << " group " << g;
  }
  for (int i = 0; i < size; ++i) {
    if (count[i] != 1) {
      FAIL() << "rank " << offset + i << " is in " << count[i] << " " << kind << " groups";
    }
    // groups[] matches the oracle, whose group_of[i] holds rank i: so does the rank's group.
    ASSERT_TRUE(SameGroup(mp.Group(offset + i, k.kind), groups[want.group_of[i]]))
        << kind << " group of rank " << offset + i;
  }
}

// embd: the first and last ranks of each pp group (one rank when pp = 1), seen only by those
// ranks; pos_embd: the first rank of each pp group, seen only by it.
void CheckEmbeddingGroups(const ModuleParallelism& m, const ModulePlan& mp) {
  const std::vector<absl::Span<const int>> pp_groups = mp.Groups(GroupKind::kPp);
  const std::vector<absl::Span<const int>> embd = mp.Groups(GroupKind::kEmbd);
  const std::vector<absl::Span<const int>> pos = mp.Groups(GroupKind::kPosEmbd);
  ASSERT_EQ(embd.size(), pp_groups.size());
  ASSERT_EQ(pos.size(), pp_groups.size());
  const int ends_size = m.pp == 1 ? 1 : 2;
  for (size_t g = 0; g < pp_groups.size(); ++g) {
    const int ends[2] = {pp_groups[g].front(), pp_groups[g].back()};
    ASSERT_TRUE(SameRanks(embd[g], absl::Span<const int>(ends, ends_size))) << "embd group " << g;
    ASSERT_TRUE(SameRanks(pos[g], absl::Span<const int>(ends, 1))) << "pos_embd group " << g;
  }
  const int stage_size = m.tp * m.cp * *m.dp;
  for (int i = 0; i < Size(m); ++i) {
    const int r = *m.rank_offset + i;
    const int stage = i / stage_size;
    const absl::Span<const int> pp_group = mp.Group(r, GroupKind::kPp);
    const int ends[2] = {pp_group.front(), pp_group.back()};
    const absl::Span<const int> e = mp.Group(r, GroupKind::kEmbd);
    if (stage == 0 || stage == m.pp - 1) {
      ASSERT_TRUE(SameRanks(e, absl::Span<const int>(ends, ends_size))) << "embd of rank " << r;
    } else {
      ASSERT_TRUE(e.empty()) << "middle stage rank " << r << " has an embd group";
    }
    const absl::Span<const int> p = mp.Group(r, GroupKind::kPosEmbd);
    if (stage == 0) {
      ASSERT_TRUE(SameRanks(p, absl::Span<const int>(ends, 1))) << "pos_embd of rank " << r;
    } else {
      ASSERT_TRUE(p.empty()) << "stage " << stage << " rank " << r << " has a pos_embd group";
    }
  }
}

void CheckCoordinatesAndSeeds(const LayoutSpec& spec, const ModuleParallelism& m,
                              const ModulePlan& mp, const RankPlan& plan) {
  const bool language = m.name == kLanguage;
  const int tcd = m.tp * m.cp * *m.dp, ee = m.etp * m.ep;
  for (int i = 0; i < Size(m); ++i) {
    const int r = *m.rank_offset + i;
    const RankAssignment& a = plan.rank(r);
    const DenseCoords dense = {
        .tp = i % m.tp, .cp = i / m.tp % m.cp, .dp = i / (m.tp * m.cp) % *m.dp, .pp = i / tcd};
    ASSERT_EQ(a.dense, dense) << "rank " << r;
    ASSERT_EQ(mp.dense_view().RankAt({dense.tp, dense.cp, dense.dp, dense.pp}), r);
    std::optional<ExpertCoords> expert;
    if (language) {
      expert = ExpertCoords{.expt_tp = i % m.etp,
                            .ep = i / m.etp % m.ep,
                            .expt_dp = i / ee % (tcd / ee),
                            .pp = i / tcd};
      ASSERT_EQ(
          mp.expert_view()->RankAt({expert->expt_tp, expert->ep, expert->expt_dp, expert->pp}), r);
    }
    ASSERT_EQ(a.expert, expert) << "rank " << r;
    RankSeeds seeds;
    seeds.base = spec.seed + 100 * dense.pp + (spec.data_parallel_random_init ? 10 * dense.dp : 0);
    seeds.tensor_parallel = seeds.base + 2718 + dense.tp;
    seeds.data_parallel = seeds.base;
    if (language) seeds.expert = seeds.base + 1024 + 100 * expert->ep + expert->expt_tp;
    ASSERT_EQ(a.seeds, seeds) << "rank " << r;
  }
}

// A rank's key and value within a scope, for OneToOne.
struct Labeled {
  int scope;
  int key;
  int64_t value;
  int rank;
};

// Success when, within each scope, ranks with equal keys have equal values and ranks with
// different keys have different values.
::testing::AssertionResult OneToOne(std::vector<Labeled> items, absl::string_view what) {
  std::sort(items.begin(), items.end(), [](const Labeled& a, const Labeled& b) {
    return std::tie(a.scope, a.key, a.value) < std::tie(b.scope, b.key, b.value);
  });
  for (size_t i = 1; i < items.size(); ++i) {
    const Labeled& a = items[i - 1];
    const Labeled& b = items[i];
    if (a.scope == b.scope && a.key == b.key && a.value != b.value) {
      return ::testing::AssertionFailure()
             << what << ": ranks " << a.rank << " and " << b.rank
             << " should share a seed but have " << a.value << " and " << b.value;
    }
  }
  std::sort(items.begin(), items.end(), [](const Labeled& a, const Labeled& b) {
    return std::tie(a.scope, a.value, a.key) < std::tie(b.scope, b.value, b.key);
  });
  for (size_t i = 1; i < items.size(); ++i) {
    const Labeled& a = items[i - 1];
    const Labeled& b = items[i];
    if (a.scope == b.scope && a.value == b.value && a.key != b.key) {
      return ::testing::AssertionFailure() << what << ": ranks " << a.rank << " and " << b.rank
                                           << " should have different seeds but share " << a.value;
    }
  }
  return ::testing::AssertionSuccess();
}

// Seed properties that follow from Megatron's convention: tp peers differ; one pp stage shares
// its data-parallel seed (or, with data-parallel random init, each of its dp ranks has its own);
// within a stage (and dp rank, with random init) the expert seed tells expert shards apart and
// is shared by expert-data-parallel replicas.
void CheckSeedProperties(const LayoutSpec& spec, const ModuleParallelism& m, const ModulePlan& mp,
                         const RankPlan& plan) {
  const bool random_init = spec.data_parallel_random_init;
  const bool language = m.name == kLanguage;
  std::vector<Labeled> tensor, data, base, expert;
  for (std::vector<Labeled>* v : {&tensor, &data, &base, &expert}) v->reserve(Size(m));
  const std::vector<absl::Span<const int>> tp_groups = mp.Groups(GroupKind::kTp);
  for (size_t g = 0; g < tp_groups.size(); ++g) {
    for (int r : tp_groups[g]) {
      tensor.push_back({static_cast<int>(g), r, plan.rank(r).seeds.tensor_parallel, r});
    }
  }
  for (int r = *m.rank_offset; r < *m.rank_offset + Size(m); ++r) {
    const RankAssignment& a = plan.rank(r);
    const int dp_key = random_init ? a.dense.dp : 0;
    data.push_back({a.dense.pp, dp_key, a.seeds.data_parallel, r});
    base.push_back({a.dense.pp, dp_key, a.seeds.base, r});
    if (language) {
      const int scope = random_init ? a.dense.pp * kMaxWorld + a.dense.dp : a.dense.pp;
      expert.push_back({scope, a.expert->ep * kMaxWorld + a.expert->expt_tp, *a.seeds.expert, r});
    }
  }
  ASSERT_TRUE(OneToOne(std::move(tensor), "tensor-parallel seeds within a tp group"));
  ASSERT_TRUE(OneToOne(std::move(data), "data-parallel seeds within a pp stage"));
  ASSERT_TRUE(OneToOne(std::move(base), "base seeds within a pp stage"));
  ASSERT_TRUE(OneToOne(std::move(expert), "expert seeds of (ep, expt_tp) within a pp stage"));
}

void CheckPlan(const LayoutSpec& spec, const RankPlan& plan) {
  ASSERT_NO_FATAL_FAILURE(CheckTiling(spec, plan));
  for (size_t i = 0; i < spec.modules.size(); ++i) {
    const ModuleParallelism& m = spec.modules[i];
    const ModulePlan& mp = plan.modules()[i];
    SCOPED_TRACE(absl::StrCat("module ", m.name));
    ASSERT_NO_FATAL_FAILURE(CheckViews(m, mp));
    for (const KindDims& k : kKinds) ASSERT_NO_FATAL_FAILURE(CheckGroups(m, mp, k));
    ASSERT_NO_FATAL_FAILURE(CheckEmbeddingGroups(m, mp));
    ASSERT_NO_FATAL_FAILURE(CheckCoordinatesAndSeeds(spec, m, mp, plan));
    ASSERT_NO_FATAL_FAILURE(CheckSeedProperties(spec, m, mp, plan));
  }
}

// What a sweep saw.
struct Counts {
  int planned = 0;   // Valid layouts whose plans passed every check.
  int rejected = 0;  // Layouts with non-nesting dp sizes, correctly refused.
};

// Plans `spec` and checks it, or checks that it is refused when its dp sizes do not nest.
void CheckLayout(const LayoutSpec& spec, Counts* counts) {
  SCOPED_TRACE(Describe(spec));
  const absl::StatusOr<RankPlan> plan = BuildRankPlan(spec);
  if (!DataParallelSizesNest(spec)) {
    ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument) << plan.status();
    ++counts->rejected;
    return;
  }
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_NO_FATAL_FAILURE(CheckPlan(spec, *plan));
  ++counts->planned;
}

// One step of a small deterministic hash, for the sampled picks.
uint32_t Mix(uint32_t h, int v) {
  h ^= static_cast<uint32_t>(v) + 0x9e3779b9u + (h << 6) + (h >> 2);
  return h * 0x85ebca6bu;
}

struct SweepOptions {
  int num_modules = 2;
  int language_slot = 0;  // Position of the language module in the spec.
  // Ranges follow the spec order, or the reverse of it (the last module at rank 0).
  bool reverse_placement = false;
  int max_world = kMaxWorld;
  // Up to this world size every language factorization is tried; above it, a spread-out
  // deterministic sample of `language_sample` of them per split.
  int full_language_until = 0;
  int language_sample = 1;
  int64_t seed = 1234;
  bool data_parallel_random_init = false;
};

// Every way to write `total` as an ordered sum of n positive parts.
std::vector<std::vector<int>> Compositions(int total, int n) {
  if (n == 1) return {{total}};
  std::vector<std::vector<int>> out;
  for (int first = 1; first + n - 1 <= total; ++first) {
    for (std::vector<int>& rest : Compositions(total - first, n - 1)) {
      rest.insert(rest.begin(), first);
      out.push_back(std::move(rest));
    }
  }
  return out;
}

// For every world size and every split of it into contiguous module ranges, plans layouts with
// the language module's factorizations (all or a sample) and, for each encoder, one of three
// deterministic picks (its first and last factorization and a hashed one), rotating per layout.
// Stops at the first failing layout.
Counts Sweep(const SweepOptions& options) {
  Counts counts;
  const int n = options.num_modules;
  for (int world = n; world <= options.max_world; ++world) {
    for (const std::vector<int>& parts : Compositions(world, n)) {
      uint32_t hash = Mix(0, world);
      for (int p : parts) hash = Mix(hash, p);
      const std::vector<Factors>& languages =
          Factorizations(parts[options.language_slot], /*language=*/true);
      const int count = static_cast<int>(languages.size());
      const int tries =
          world <= options.full_language_until ? count : std::min(count, options.language_sample);
      for (int t = 0; t < tries; ++t) {
        const int li = tries == count ? t : static_cast<int>((hash + t * (count / tries)) % count);
        LayoutSpec spec;
        spec.world_size = world;
        spec.seed = options.seed;
        spec.data_parallel_random_init = options.data_parallel_random_init;
        int encoder = 0;
        for (int j = 0; j < n; ++j) {
          int offset = 0;
          for (int i = 0; i < n; ++i) {
            if (options.reverse_placement ? i > j : i < j) offset += parts[i];
          }
          Factors f;
          std::string name;
          if (j == options.language_slot) {
            f = languages[li];
            name = std::string(kLanguage);
          } else {
            const std::vector<Factors>& encoders = Factorizations(parts[j], /*language=*/false);
            const int size = static_cast<int>(encoders.size());
            const int picks[3] = {0, size - 1, static_cast<int>(Mix(hash, j) % size)};
            f = encoders[picks[(t + j) % 3]];
            name = encoder++ == 0 ? "vision" : "audio";
          }
          spec.modules.push_back({.name = name,
                                  .tp = f.tp,
                                  .cp = f.cp,
                                  .pp = f.pp,
                                  .dp = f.dp,
                                  .ep = f.ep,
                                  .etp = f.etp,
                                  .rank_offset = offset});
        }
        CheckLayout(spec, &counts);
        if (::testing::Test::HasFailure()) return counts;
      }
    }
  }
  return counts;
}

// Every language factorization of every world size, at rank 0.
TEST(RankPlanPropertyTest, LanguageModuleAlone) {
  const Counts counts = Sweep({.num_modules = 1, .full_language_until = kMaxWorld});
  EXPECT_EQ(counts.planned, 17490);
  EXPECT_EQ(counts.rejected, 0);
}

// Every split; every language factorization up to 24 ranks, eight per split above.
TEST(RankPlanPropertyTest, EncoderThenLanguage) {
  const Counts counts = Sweep(
      {.num_modules = 2, .language_slot = 1, .full_language_until = 24, .language_sample = 8});
  EXPECT_GT(counts.planned, 25000);
  EXPECT_GT(counts.rejected, 5000);
}

TEST(RankPlanPropertyTest, LanguageThenEncoder) {
  const Counts counts = Sweep({.num_modules = 2, .language_slot = 0, .language_sample = 4});
  EXPECT_GT(counts.planned, 6000);
  EXPECT_GT(counts.rejected, 1000);
}

TEST(RankPlanPropertyTest, TwoEncodersThenLanguage) {
  const Counts counts = Sweep({.num_modules = 3, .language_slot = 2});
  EXPECT_GT(counts.planned, 25000);
  EXPECT_GT(counts.rejected, 15000);
}

TEST(RankPlanPropertyTest, LanguageBetweenEncoders) {
  const Counts counts = Sweep({.num_modules = 3, .language_slot = 1, .max_world = 40});
  EXPECT_GT(counts.planned, 4500);
  EXPECT_GT(counts.rejected, 3000);
}

TEST(RankPlanPropertyTest, LanguageBeforeEncoders) {
  const Counts counts = Sweep({.num_modules = 3, .language_slot = 0, .max_world = 40});
  EXPECT_GT(counts.planned, 8000);
  EXPECT_GT(counts.rejected, 1000);
}

TEST(RankPlanPropertyTest, RankOrderDiffersFromSpecOrder) {
  const Counts two = Sweep(
      {.num_modules = 2, .language_slot = 0, .reverse_placement = true, .language_sample = 4});
  EXPECT_GT(two.planned, 6000);
  const Counts three =
      Sweep({.num_modules = 3, .language_slot = 1, .reverse_placement = true, .max_world = 24});
  EXPECT_GT(three.planned, 1000);
}

TEST(RankPlanPropertyTest, DataParallelRandomInitWithLargeSeed) {
  const int64_t seed = (int64_t{1} << 40) + 7;
  const Counts two = Sweep({.num_modules = 2,
                            .language_slot = 1,
                            .language_sample = 4,
                            .seed = seed,
                            .data_parallel_random_init = true});
  EXPECT_GT(two.planned, 5500);
  const Counts three = Sweep({.num_modules = 3,
                              .language_slot = 2,
                              .max_world = 32,
                              .seed = seed,
                              .data_parallel_random_init = true});
  EXPECT_GT(three.planned, 3000);
}

TEST(RankPlanPropertyTest, ZeroSeed) {
  const Counts counts = Sweep({.num_modules = 2, .language_slot = 1, .seed = 0});
  EXPECT_GT(counts.planned, 1000);
}

}  // namespace
}  // namespace mimo::parallel
