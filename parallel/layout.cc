// Validates a LayoutSpec and resolves it into concrete module rank ranges (dp and offsets set).
#include "parallel/layout.h"

#include <algorithm>
#include <numeric>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mimo::parallel {
namespace {

constexpr int64_t kMaxSeed = int64_t{1} << 62;
// Megatron's expert seed is base + 1024 + 100*ep_rank + expt_tp_rank: distinct only while
// expt_tp_rank < 100.
constexpr int kMaxEtp = 100;

// "rank 3" or "ranks 2..5" for the half-open range [lo, hi).
std::string Ranks(int64_t lo, int64_t hi) {
  if (hi - lo == 1) return absl::StrCat("rank ", lo);
  return absl::StrCat("ranks ", lo, "..", hi - 1);
}

// Ranks(lo, hi) followed by the verb agreeing with it: "rank 3 is", "ranks 2..5 are".
std::string RanksAre(int64_t lo, int64_t hi) {
  return absl::StrCat(Ranks(lo, hi), hi - lo == 1 ? " is" : " are");
}

std::string Range(const ResolvedModule& m) {
  return absl::StrCat("'", m.name, "' [", m.rank_offset, ",", m.rank_end(), ")");
}

class Validator {
 public:
  explicit Validator(const LayoutSpec& spec) : spec_(spec) {}

  absl::StatusOr<ResolvedLayout> Run(std::vector<LayoutViolation>* out) {
    CheckModulesAndNames();
    CheckSizes();
    FindLanguage();
    CheckEncodersDense();
    CheckTpPowerOfTwo();
    ComputeDense();
    DeriveDataParallel();
    ComputeCounts();
    CheckExpertFactorization();
    CheckTiling();
    CheckDataParallelPairs();
    if (out != nullptr) *out = violations_;
    if (!violations_.empty()) return ViolationsToStatus(violations_);

    ResolvedLayout layout;
    layout.world_size = world_;
    layout.language_index = language_;
    for (size_t i = 0; i < n(); ++i) layout.modules.push_back(Resolved(i));
    return layout;
  }

 private:
  const ModuleParallelism& mod(size_t i) const { return spec_.modules[i]; }
  size_t n() const { return spec_.modules.size(); }
  std::string Name(size_t i) const { return absl::StrCat("'", mod(i).name, "'"); }

  void Add(int module, std::string field, std::string message) {
    violations_.push_back({module, std::move(field), std::move(message)});
  }

  void CheckModulesAndNames() {
    if (n() == 0) {
      Add(-1, "modules", "the layout has no modules: it needs at least the language module");
    }
    if (spec_.world_size && (*spec_.world_size <= 0 || *spec_.world_size > kMaxWorldSize)) {
      Add(-1, "world_size",
          absl::StrCat("world_size must be in [1, ", kMaxWorldSize, "], got ", *spec_.world_size));
    }
    if (spec_.seed < 0 || spec_.seed > kMaxSeed) {
      Add(-1, "seed", absl::StrCat("seed must be in [0, 2^62], got ", spec_.seed));
    }
    absl::flat_hash_map<std::string, size_t> first;
    for (size_t i = 0; i < n(); ++i) {
      if (mod(i).name.empty()) {
        Add(i, "name", absl::StrCat("module #", i, " has an empty name"));
        continue;
      }
      auto [it, inserted] = first.emplace(mod(i).name, i);
      if (!inserted) {
        Add(i, "name",
            absl::StrCat("module ", Name(i), " is given twice (modules #", it->second, " and #", i,
                         ")"));
      }
    }
  }

  void CheckSizes() {
    ok_.assign(n(), true);
    for (size_t i = 0; i < n(); ++i) {
      const ModuleParallelism& m = mod(i);
      const std::pair<const char*, std::optional<int>> sizes[] = {
          {"tp", m.tp}, {"cp", m.cp},   {"pp", m.pp},  {"dp", m.dp},
          {"ep", m.ep}, {"etp", m.etp}, {"vpp", m.vpp}};
      for (const auto& [field, value] : sizes) {
        if (!value) continue;
        if (*value <= 0 || *value > kMaxWorldSize) {
          Add(i, field,
              absl::StrCat("module ", Name(i), ": ", field, " must be in [1, ", kMaxWorldSize,
                           "], got ", *value));
          ok_[i] = false;
        }
      }
      if (m.rank_offset && (*m.rank_offset < 0 || *m.rank_offset >= kMaxWorldSize)) {
        Add(i, "rank_offset",
            absl::StrCat("module ", Name(i), ": rank_offset must be in [0, ", kMaxWorldSize,
                         "), got ", *m.rank_offset));
        ok_[i] = false;
      }
    }
  }

  void FindLanguage() {
    std::vector<std::string> names;
    for (size_t i = 0; i < n(); ++i) {
      if (mod(i).name == spec_.language) {
        language_ = static_cast<int>(i);
        return;
      }
      names.push_back(absl::StrCat("'", mod(i).name, "'"));
    }
    Add(-1, "language",
        absl::StrCat("no module is named '", spec_.language,
                     "', the language module (name another with --language); the modules are ",
                     names.empty() ? "none" : absl::StrJoin(names, ", ")));
  }

  void CheckEncodersDense() {
    for (size_t i = 0; i < n(); ++i) {
      if (static_cast<int>(i) == language_) continue;
      for (const auto& [field, value] :
           {std::pair{"ep", mod(i).ep}, std::pair{"etp", mod(i).etp}}) {
        if (value != 1) {
          Add(i, field,
              absl::StrCat("module ", Name(i), " is an encoder and must be dense: ", field, "=",
                           value, " (only the language module '", spec_.language,
                           "' takes ep and etp)"));
        }
      }
      if (mod(i).vpp != 1) {
        Add(i, "vpp",
            absl::StrCat("module ", Name(i), " is an encoder: vpp=", mod(i).vpp,
                         " (only the language module '", spec_.language,
                         "' takes interleaved pipeline stages)"));
      }
    }
    for (size_t i = 0; i < n(); ++i) {
      // An encoder's vpp is refused above.
      if (static_cast<int>(i) == language_ && mod(i).vpp > 1 && mod(i).pp < 2) {
        Add(i, "vpp",
            absl::StrCat("module ", Name(i), ": vpp=", mod(i).vpp,
                         " interleaves pipeline stages and needs pp > 1, got pp=", mod(i).pp));
      }
    }
  }

  void CheckTpPowerOfTwo() {
    for (size_t i = 0; i < n(); ++i) {
      const int tp = mod(i).tp;
      if (tp > 0 && (tp & (tp - 1)) != 0) {
        Add(i, "tp", absl::StrCat("module ", Name(i), ": tp=", tp, " is not a power of two"));
      }
    }
  }

  void ComputeDense() {
    dense_.assign(n(), 0);
    for (size_t i = 0; i < n(); ++i) {
      if (!ok_[i]) continue;
      const ModuleParallelism& m = mod(i);
      // Stepwise: each size may itself be near the limit, and three of them overflow int64.
      int64_t dense = m.tp;
      for (const int size : {m.cp, m.pp}) {
        if (dense <= kMaxWorldSize) dense *= size;
      }
      if (dense > kMaxWorldSize) {
        Add(i, "",
            absl::StrCat("module ", Name(i), ": tp*cp*pp = ", m.tp, "*", m.cp, "*", m.pp,
                         " exceeds the largest world (", kMaxWorldSize, ")"));
        ok_[i] = false;
        continue;
      }
      dense_[i] = static_cast<int>(dense);
    }
  }

  std::string DenseText(size_t i) const {
    return absl::StrCat("tp*cp*pp = ", mod(i).tp, "*", mod(i).cp, "*", mod(i).pp, " = ", dense_[i]);
  }

  void DeriveDataParallel() {
    DeriveDataParallelAndOffsets();
    for (auto& offset : offset_) offset = offset.value_or(0);
  }

  void DeriveDataParallelAndOffsets() {
    dp_.assign(n(), std::nullopt);
    offset_.assign(n(), std::nullopt);
    std::vector<std::string> unset;
    for (size_t i = 0; i < n(); ++i) {
      dp_[i] = mod(i).dp;
      offset_[i] = mod(i).rank_offset;
      if (!mod(i).dp) unset.push_back(Name(i));
    }
    if (unset.empty()) return;
    const bool world_ok =
        spec_.world_size && *spec_.world_size > 0 && *spec_.world_size <= kMaxWorldSize;
    if (!world_ok) {
      for (size_t i = 0; i < n(); ++i) {
        if (!mod(i).dp) {
          Add(i, "dp",
              absl::StrCat("module ", Name(i), ": dp is unset and cannot be derived ",
                           "without a valid world_size"));
        }
        ok_[i] = false;  // Without the derivation no module's place is known.
      }
      return;
    }
    const int world = *spec_.world_size;
    if (n() == 1) {
      if (!ok_[0]) return;
      if (world % dense_[0] != 0) {
        Add(0, "dp",
            absl::StrCat("module ", Name(0), ": cannot derive dp: world_size ", world,
                         " is not divisible by ", DenseText(0)));
        ok_[0] = false;
        return;
      }
      dp_[0] = world / dense_[0];
      return;
    }
    if (world % static_cast<int>(n()) != 0) {
      Add(-1, "world_size",
          absl::StrCat("cannot derive dp (unset on ", absl::StrJoin(unset, ", "), "): world_size ",
                       world, " does not split evenly among ", n(), " modules"));
      ok_.assign(n(), false);  // Without the derivation no module's place is known.
      return;
    }
    const int share = world / static_cast<int>(n());
    for (size_t i = 0; i < n(); ++i) {
      offset_[i] = offset_[i].value_or(static_cast<int>(i) * share);
      if (!ok_[i]) continue;
      const std::string share_text =
          absl::StrCat(share, " ranks (world_size ", world, " / ", n(), " modules)");
      if (!mod(i).dp) {
        if (share % dense_[i] != 0) {
          Add(i, "dp",
              absl::StrCat("module ", Name(i), ": cannot derive dp: its share of ", share_text,
                           " is not divisible by ", DenseText(i)));
          ok_[i] = false;
          continue;
        }
        dp_[i] = share / dense_[i];
      } else if (int64_t{dense_[i]} * *mod(i).dp != share) {
        Add(i, "dp",
            absl::StrCat("module ", Name(i), ": dp=", *mod(i).dp, " gives ",
                         int64_t{dense_[i]} * *mod(i).dp, " ranks, but with dp unset on ",
                         absl::StrJoin(unset, ", "), " every module gets ", share_text));
        ok_[i] = false;
      }
    }
  }

  void ComputeCounts() {
    for (size_t i = 0; i < n(); ++i) {
      if (!ok_[i] || !dp_[i]) {
        ok_[i] = false;
        continue;
      }
      const int64_t count = int64_t{dense_[i]} * *dp_[i];
      const int64_t end = count + *offset_[i];
      if (end > kMaxWorldSize) {
        Add(i, "dp",
            absl::StrCat("module ", Name(i), ": ", DenseText(i), " times dp=", *dp_[i],
                         " from rank_offset ", *offset_[i], " ends at rank ", end,
                         ", past the largest world (", kMaxWorldSize, ")"));
        ok_[i] = false;
      }
    }
  }

  ResolvedModule Resolved(size_t i) const {
    const ModuleParallelism& m = mod(i);
    return ResolvedModule{.name = m.name,
                          .spec_index = static_cast<int>(i),
                          .is_language = static_cast<int>(i) == language_,
                          .tp = m.tp,
                          .cp = m.cp,
                          .pp = m.pp,
                          .dp = *dp_[i],
                          .ep = m.ep,
                          .etp = m.etp,
                          .vpp = m.vpp,
                          .rank_offset = *offset_[i]};
  }

  void CheckExpertFactorization() {
    if (language_ < 0 || !ok_[language_]) return;
    const ModuleParallelism& m = mod(language_);
    const int64_t tcd = int64_t{m.tp} * m.cp * *dp_[language_];
    const int64_t ee = int64_t{m.etp} * m.ep;
    if (tcd % ee != 0) {
      Add(language_, "ep",
          absl::StrCat("module ", Name(language_), ": tp*cp*dp = ", m.tp, "*", m.cp, "*",
                       *dp_[language_], " = ", tcd, " is not divisible by etp*ep = ", m.etp, "*",
                       m.ep, " = ", ee,
                       " (expert parallelism refactors the module's ranks and never enlarges "
                       "them)"));
    }
    if (m.etp > kMaxEtp) {
      Add(language_, "etp",
          absl::StrCat("module ", Name(language_), ": etp=", m.etp, " exceeds ", kMaxEtp,
                       ": with Megatron's expert seed (base + 1024 + 100*ep_rank + expt_tp_rank) "
                       "two expert shards would share a seed"));
    }
  }

  void CheckTiling() {
    if (n() == 0) return;
    std::vector<ResolvedModule> placed;
    bool all_placed = true;
    int64_t total = 0;
    for (size_t i = 0; i < n(); ++i) {
      if (!ok_[i]) {
        all_placed = false;
        continue;
      }
      placed.push_back(Resolved(i));
      total += placed.back().size();
    }
    if (spec_.world_size) {
      if (*spec_.world_size <= 0 || *spec_.world_size > kMaxWorldSize) return;
      world_ = *spec_.world_size;
    } else if (all_placed && total <= kMaxWorldSize) {
      world_ = static_cast<int>(total);
    } else {
      return;
    }
    std::sort(placed.begin(), placed.end(), [](const ResolvedModule& a, const ResolvedModule& b) {
      return std::pair(a.rank_offset, a.spec_index) < std::pair(b.rank_offset, b.spec_index);
    });
    for (size_t a = 0; a < placed.size(); ++a) {
      for (size_t b = a + 1; b < placed.size(); ++b) {
        const int lo = std::max(placed[a].rank_offset, placed[b].rank_offset);
        const int hi = std::min(placed[a].rank_end(), placed[b].rank_end());
        if (lo < hi) {
          Add(placed[b].spec_index, "rank_offset",
              absl::StrCat("modules ", Range(placed[a]), " and ", Range(placed[b]), " overlap on ",
                           Ranks(lo, hi)));
        }
      }
    }
    for (const ResolvedModule& m : placed) {
      if (m.rank_end() > world_) {
        const int lo = std::max(m.rank_offset, world_);
        Add(m.spec_index, "rank_offset",
            absl::StrCat("module ", Range(m), " extends past world_size ", world_, " (",
                         Ranks(lo, m.rank_end()), m.rank_end() - lo == 1 ? " does" : " do",
                         " not exist)"));
      }
    }
    // Gaps can only be judged when every module has a known range.
    if (!all_placed) return;
    int covered = 0;
    const ResolvedModule* previous = nullptr;
    for (const ResolvedModule& m : placed) {
      if (m.rank_offset > covered && covered < world_) {
        const int hi = std::min(m.rank_offset, world_);
        Add(-1, "rank_offset",
            absl::StrCat(RanksAre(covered, hi), " not assigned to any module (a gap ",
                         previous ? absl::StrCat("between ", Range(*previous), " and ")
                                  : std::string("before "),
                         Range(m), ")"));
      }
      if (m.rank_end() > covered) {
        covered = m.rank_end();
        previous = &m;
      }
    }
    if (covered < world_) {
      Add(-1, "world_size",
          absl::StrCat("the modules cover ranks [0,", covered, ") but world_size is ", world_, ": ",
                       RanksAre(covered, world_), " not assigned to any module"));
    }
  }

  // Embeddings travel between each encoder and the language model only: encoders' dp need not
  // nest with each other's.
  void CheckDataParallelPairs() {
    for (size_t a = 0; a < n(); ++a) {
      for (size_t b = a + 1; b < n(); ++b) {
        if (static_cast<int>(a) != language_ && static_cast<int>(b) != language_) continue;
        if (!dp_[a] || !dp_[b] || *dp_[a] <= 0 || *dp_[b] <= 0) continue;
        if (*dp_[a] % *dp_[b] != 0 && *dp_[b] % *dp_[a] != 0) {
          Add(b, "dp",
              absl::StrCat("modules ", Name(a), " (dp=", *dp_[a], ") and ", Name(b),
                           " (dp=", *dp_[b],
                           "): neither dp divides the other, but routing "
                           "encoder activations to language data-parallel ranks needs one to "
                           "divide the other"));
        }
      }
    }
  }

  const LayoutSpec& spec_;
  std::vector<LayoutViolation> violations_;
  std::vector<bool> ok_;                    // Module i's sizes are valid and its range is known.
  std::vector<int> dense_;                  // tp*cp*pp of module i (0 when unknown).
  std::vector<std::optional<int>> dp_;      // Given or derived dp.
  std::vector<std::optional<int>> offset_;  // Given or derived rank_offset.
  int language_ = -1;
  int world_ = 0;
};

}  // namespace

absl::StatusOr<ResolvedLayout> ResolveLayout(const LayoutSpec& spec,
                                             std::vector<LayoutViolation>* violations) {
  return Validator(spec).Run(violations);
}

}  // namespace mimo::parallel
