// The KIND_SELFTEST job: every collective on every group of the rank, then the seed properties
// across ranks.
#include "worker/selftest.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/collective_check.h"
#include "common/status_macros.h"
#include "worker/seed_check.h"

namespace mimo::worker {
namespace {

// A buffer of `space` (host memory when null), freed on destruction.
class Buffer {
 public:
  Buffer(comm::BufferSpace* space, size_t bytes) : space_(space), host_(space ? 0 : bytes) {
    if (space_ != nullptr) {
      absl::StatusOr<void*> allocated = space_->Allocate(bytes);
      if (allocated.ok()) {
        data_ = *allocated;
      } else {
        status_ = allocated.status();
      }
    } else {
      data_ = host_.data();
    }
  }
  ~Buffer() {
    if (space_ != nullptr && data_ != nullptr) space_->Free(data_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  const absl::Status& status() const { return status_; }
  void* data() { return data_; }
  absl::Status CopyIn(const void* host, size_t bytes) {
    if (space_ != nullptr) return space_->CopyIn(data_, host, bytes);
    std::memcpy(data_, host, bytes);
    return absl::OkStatus();
  }
  absl::Status CopyOut(void* host, size_t bytes) {
    if (space_ != nullptr) return space_->CopyOut(host, data_, bytes);
    std::memcpy(host, data_, bytes);
    return absl::OkStatus();
  }

 private:
  comm::BufferSpace* const space_;
  std::vector<char> host_;
  void* data_ = nullptr;
  absl::Status status_;
};

// Each member's SeedRecord, all-gathered over the group of `comm`.
absl::StatusOr<std::vector<SeedRecord>> GatherSeeds(comm::Communicator& comm,
                                                    comm::BufferSpace* space,
                                                    const SeedRecord& mine) {
  const std::array<int64_t, SeedRecord::kPackedSize> packed = mine.Pack();
  const size_t bytes = sizeof(packed);
  std::vector<int64_t> all(static_cast<size_t>(comm.size()) * SeedRecord::kPackedSize);
  Buffer in(space, bytes);
  Buffer out(space, bytes * comm.size());
  MIMO_RETURN_IF_ERROR(in.status());
  MIMO_RETURN_IF_ERROR(out.status());
  MIMO_RETURN_IF_ERROR(in.CopyIn(packed.data(), bytes));
  MIMO_RETURN_IF_ERROR(
      comm.AllGather(in.data(), out.data(), packed.size(), comm::DataType::kInt64));
  MIMO_RETURN_IF_ERROR(out.CopyOut(all.data(), bytes * comm.size()));
  std::vector<SeedRecord> records;
  for (int i = 0; i < comm.size(); ++i) {
    records.push_back(SeedRecord::Unpack(
        absl::MakeConstSpan(all).subspan(i * SeedRecord::kPackedSize, SeedRecord::kPackedSize)));
  }
  return records;
}

absl::Status InGroup(const comm::GroupSpec& group, const absl::Status& status) {
  return absl::Status(status.code(),
                      absl::StrCat("selftest: group ", DescribeGroup(group.kind, group.members),
                                   ": ", status.message()));
}

}  // namespace

absl::Status RunSelftest(const v1::Assignment& assignment, comm::ProcessGroups& groups,
                         comm::BufferSpace* space, const SelftestLog& log,
                         const SelftestStopped& stopped) {
  const absl::Time start = absl::Now();
  const v1::RankAssignment& rank = assignment.rank();
  const bool random_init = assignment.spec().training().data_parallel_random_init();
  log(absl::StrCat("selftest: rank ", rank.rank(), " of ", assignment.world_size(), ", module ",
                   rank.module(), ", ", groups.groups().size(), " groups"));

  if (absl::Status s = CheckOwnSeeds(rank, JobSeed(assignment.spec()), random_init); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("selftest: ", s.message()));
  }
  log(absl::StrCat(
      "selftest: own seeds ok (base ", rank.seeds().base(), ", tensor_parallel ",
      rank.seeds().tensor_parallel(), ", data_parallel ", rank.seeds().data_parallel(),
      rank.seeds().has_expert() ? absl::StrCat(", expert ", rank.seeds().expert()) : "", ")"));

  // spec.selftest.iterations rounds (a soak test of the interconnect); each group is logged in
  // the first round, later rounds once each.
  const int rounds = std::max(1, assignment.spec().selftest().iterations());
  for (int round = 1; round <= rounds; ++round) {
    const absl::Time round_start = absl::Now();
    for (const comm::GroupSpec& group : groups.groups()) {
      if (stopped && stopped()) {
        return absl::CancelledError(
            absl::StrCat("selftest: stopped in round ", round, " of ", rounds));
      }
      comm::Communicator* comm = groups.Get(group.kind);
      if (comm == nullptr) {
        return InGroup(group, absl::InternalError("no communicator was built for it"));
      }
      if (absl::Status s = comm::CheckCollectives(*comm, rank.rank(), group.kind, space); !s.ok()) {
        return InGroup(
            group, rounds == 1 ? s
                               : absl::Status(s.code(), absl::StrCat("round ", round, " of ",
                                                                     rounds, ": ", s.message())));
      }
      if (round == 1) {
        log(absl::StrCat("selftest: group ", DescribeGroup(group.kind, group.members), " ok"));
      }
    }
    if (rounds > 1) {
      log(absl::StrCat(
          "selftest: collectives round ", round, " of ", rounds, " ok in ",
          absl::FormatDuration(absl::Trunc(absl::Now() - round_start, absl::Milliseconds(1)))));
    }
  }

  // Seed properties hold within a module; a link joins two modules, so it has none.
  absl::flat_hash_set<std::string> links;
  for (const v1::RankLink& link : rank.links()) links.insert(link.kind());
  const SeedRecord mine = SeedRecordOf(rank);
  for (const comm::GroupSpec& group : groups.groups()) {
    if (stopped && stopped()) return absl::CancelledError("selftest: stopped");
    if (links.contains(group.kind)) continue;
    comm::Communicator* comm = groups.Get(group.kind);
    absl::StatusOr<std::vector<SeedRecord>> records = GatherSeeds(*comm, space, mine);
    if (!records.ok()) return InGroup(group, records.status());
    if (absl::Status s = CheckGroupSeeds(group.kind, group.members, *records, random_init);
        !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("selftest: ", s.message()));
    }
    log(absl::StrCat("selftest: seeds over ", DescribeGroup(group.kind, group.members), " ok"));
  }

  const absl::Duration took = absl::Now() - start;
  log(absl::StrCat("selftest: passed: ", groups.groups().size(),
                   " groups, every collective and seed property checked in ",
                   absl::FormatDuration(absl::Trunc(took, absl::Milliseconds(1)))));
  return absl::OkStatus();
}

}  // namespace mimo::worker
