// The seed properties of docs/layout.md, checked on what the ranks of one group hold.
#include "worker/seed_check.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mimo::worker {
namespace {

constexpr int64_t kDefaultJobSeed = 1234;

// "rank 5 (tp 1, dp 0, pp 0, ep 1, expt_tp 0)".
std::string Who(const SeedRecord& r) {
  std::string out = absl::StrCat("rank ", r.rank, " (tp ", r.tp, ", dp ", r.dp, ", pp ", r.pp);
  if (r.expert) absl::StrAppend(&out, ", ep ", r.ep, ", expt_tp ", r.expt_tp);
  return out + ")";
}

absl::Status Violation(absl::string_view kind, absl::Span<const int> members, const SeedRecord& a,
                       const SeedRecord& b, absl::string_view what) {
  return absl::FailedPreconditionError(absl::StrCat(
      "seeds over group ", DescribeGroup(kind, members), ": ", Who(a), " and ", Who(b), " ", what));
}

}  // namespace

std::array<int64_t, SeedRecord::kPackedSize> SeedRecord::Pack() const {
  return {rank, base, tensor_parallel, data_parallel, expert ? 1 : 0, expert.value_or(0), tp, dp,
          pp,   ep,   expt_tp};
}

SeedRecord SeedRecord::Unpack(absl::Span<const int64_t> p) {
  SeedRecord r;
  r.rank = static_cast<int>(p[0]);
  r.base = p[1];
  r.tensor_parallel = p[2];
  r.data_parallel = p[3];
  if (p[4] != 0) r.expert = p[5];
  r.tp = static_cast<int>(p[6]);
  r.dp = static_cast<int>(p[7]);
  r.pp = static_cast<int>(p[8]);
  r.ep = static_cast<int>(p[9]);
  r.expt_tp = static_cast<int>(p[10]);
  return r;
}

SeedRecord SeedRecordOf(const v1::RankAssignment& rank) {
  SeedRecord r;
  r.rank = rank.rank();
  r.base = rank.seeds().base();
  r.tensor_parallel = rank.seeds().tensor_parallel();
  r.data_parallel = rank.seeds().data_parallel();
  if (rank.seeds().has_expert()) r.expert = rank.seeds().expert();
  r.tp = rank.dense().tp();
  r.dp = rank.dense().dp();
  r.pp = rank.dense().pp();
  if (rank.has_expert()) {
    r.ep = rank.expert().ep();
    r.expt_tp = rank.expert().expt_tp();
  }
  return r;
}

int64_t JobSeed(const v1::JobSpec& spec) {
  return spec.training().seed() == 0 ? kDefaultJobSeed : spec.training().seed();
}

absl::Status CheckOwnSeeds(const v1::RankAssignment& rank, int64_t job_seed,
                           bool data_parallel_random_init) {
  const SeedRecord r = SeedRecordOf(rank);
  int64_t base = job_seed + 100 * int64_t{r.pp};
  if (data_parallel_random_init) base += 10 * int64_t{r.dp};
  auto mismatch = [&](absl::string_view seed, int64_t held, int64_t expected) {
    return absl::FailedPreconditionError(absl::StrCat(
        "seeds of ", Who(r), ": ", seed, " seed is ", held, ", but job seed ", job_seed,
        data_parallel_random_init ? " with data-parallel random init" : "", " gives ", expected));
  };
  if (r.base != base) return mismatch("base", r.base, base);
  if (r.tensor_parallel != base + 2718 + r.tp) {
    return mismatch("tensor_parallel", r.tensor_parallel, base + 2718 + r.tp);
  }
  if (r.data_parallel != base) return mismatch("data_parallel", r.data_parallel, base);
  if (rank.has_expert() != r.expert.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("seeds of ", Who(r), ": ", rank.has_expert() ? "a language" : "an encoder",
                     " rank ", r.expert ? "has" : "lacks", " an expert seed"));
  }
  if (r.expert) {
    const int64_t expert = base + 1024 + 100 * int64_t{r.ep} + r.expt_tp;
    if (*r.expert != expert) return mismatch("expert", *r.expert, expert);
  }
  return absl::OkStatus();
}

absl::Status CheckGroupSeeds(absl::string_view kind, absl::Span<const int> members,
                             const std::vector<SeedRecord>& records,
                             bool data_parallel_random_init) {
  for (size_t i = 0; i < records.size(); ++i) {
    if (i < members.size() && records[i].rank != members[i]) {
      return absl::FailedPreconditionError(
          absl::StrCat("seeds over group ", DescribeGroup(kind, members), ": member ", i,
                       " is rank ", members[i], " but rank ", records[i].rank, " answered"));
    }
  }
  for (size_t i = 0; i < records.size(); ++i) {
    for (size_t j = i + 1; j < records.size(); ++j) {
      const SeedRecord& a = records[i];
      const SeedRecord& b = records[j];
      if (a.expert.has_value() != b.expert.has_value()) {
        return Violation(kind, members, a, b,
                         "are of different modules: only one has an expert seed");
      }
      const bool same_stage = a.pp == b.pp;
      const bool same_dp = a.dp == b.dp;
      const bool same_scope = same_stage && (!data_parallel_random_init || same_dp);
      const std::string dp_seeds = absl::StrCat("(", a.data_parallel, ", ", b.data_parallel, ")");
      if (same_scope) {
        const std::string scope = data_parallel_random_init
                                      ? absl::StrCat("stage ", a.pp, " and dp rank ", a.dp)
                                      : absl::StrCat("stage ", a.pp);
        if (a.data_parallel != b.data_parallel || a.base != b.base) {
          return Violation(kind, members, a, b,
                           absl::StrCat("share ", scope, " but have different data_parallel ",
                                        "seeds ", dp_seeds));
        }
        const bool same_tp_seed = a.tensor_parallel == b.tensor_parallel;
        if (same_tp_seed != (a.tp == b.tp)) {
          return Violation(kind, members, a, b,
                           absl::StrCat("share ", scope, " ",
                                        a.tp == b.tp ? "and tp rank but have different"
                                                     : "but not the tp rank, "
                                                       "yet have equal",
                                        " tensor_parallel seeds (", a.tensor_parallel, ", ",
                                        b.tensor_parallel, ")"));
        }
        if (a.expert) {
          const bool same_shard = a.ep == b.ep && a.expt_tp == b.expt_tp;
          if ((*a.expert == *b.expert) != same_shard) {
            return Violation(
                kind, members, a, b,
                absl::StrCat("share ", scope, " ",
                             same_shard ? "and expert shard but have different"
                                        : "but hold different expert shards, yet have equal",
                             " expert seeds (", *a.expert, ", ", *b.expert, ")"));
          }
        }
      } else if (a.data_parallel == b.data_parallel) {
        // Out of scope the values may coincide only when both the stage and the dp rank differ.
        const bool must_differ = !data_parallel_random_init || same_stage || same_dp;
        if (must_differ) {
          return Violation(
              kind, members, a, b,
              absl::StrCat(same_stage ? "differ in dp rank" : "differ in stage",
                           data_parallel_random_init ? " with data-parallel random init" : "",
                           " but share the data_parallel seed ", a.data_parallel));
        }
      }
    }
  }
  return absl::OkStatus();
}

std::string DescribeGroup(absl::string_view kind, absl::Span<const int> members) {
  return absl::StrCat(kind, " [", absl::StrJoin(members, ","), "]");
}

}  // namespace mimo::worker
