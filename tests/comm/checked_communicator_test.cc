// CheckedCommunicator: what reaches an implementation's Do* methods, and the exact messages of bad
// arguments and of calls after Abort() from a fake, Gloo and the one-member LocalCommunicator.
#include "comm/checked_communicator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/gloo_communicator.h"
#include "comm/in_memory_store.h"
#include "comm/local_communicator.h"
#include "comm/process_groups.h"
#include "tests/comm/bad_calls.h"
#include "tests/comm/run_ranks.h"

namespace mimo::comm {
namespace {

using ::testing::ElementsAre;

// Member 1 of the group test [4,5,6]: records the calls that reach its Do* methods, as "NAME" or
// "NAME totals SEND/RECV" for AllToAll, and fails CheckUsable with `unusable`.
class RecordingCommunicator : public CheckedCommunicator {
 public:
  RecordingCommunicator() : CheckedCommunicator(MemberDescription("test", {4, 5, 6}, 1)) {}

  int rank() const override { return 1; }
  int size() const override { return 3; }
  void Abort() override {}

  using CheckedCommunicator::AbortedError;
  using CheckedCommunicator::BrokenError;
  using CheckedCommunicator::FailedError;

  absl::Status unusable;
  std::vector<std::string> checked;  // The names CheckUsable was asked about.
  std::vector<std::string> calls;

 private:
  absl::Status CheckUsable(absl::string_view name) override {
    checked.emplace_back(name);
    return unusable;
  }
  absl::Status Record(absl::string_view name) {
    calls.emplace_back(name);
    return absl::OkStatus();
  }
  absl::Status DoAllReduce(absl::string_view name, void*, size_t, DataType, ReduceOp) override {
    return Record(name);
  }
  absl::Status DoReduceScatter(absl::string_view name, const void*, void*, size_t, DataType,
                               ReduceOp) override {
    return Record(name);
  }
  absl::Status DoAllGather(absl::string_view name, const void*, void*, size_t, DataType) override {
    return Record(name);
  }
  absl::Status DoAllToAll(absl::string_view name, const void*, absl::Span<const size_t>,
                          size_t send_total, void*, absl::Span<const size_t>, size_t recv_total,
                          DataType) override {
    return Record(absl::StrCat(name, " totals ", send_total, "/", recv_total));
  }
  absl::Status DoBroadcast(absl::string_view name, void*, size_t, DataType, int) override {
    return Record(name);
  }
  absl::Status DoSend(absl::string_view name, const void*, size_t, DataType, int) override {
    return Record(name);
  }
  absl::Status DoRecv(absl::string_view name, void*, size_t, DataType, int) override {
    return Record(name);
  }
  absl::Status DoBarrier(absl::string_view name) override { return Record(name); }
};

TEST(CheckedCommunicatorTest, BadArgumentsNeverReachTheTransport) {
  RecordingCommunicator comm;
  float dummy = 0;
  ExpectBadCallsRefused(comm, "group test [4,5,6] as member 1 of 3");
  EXPECT_TRUE(comm.calls.empty());
  EXPECT_EQ(comm.checked.size(), BadCalls(comm, &dummy).size());
}

TEST(CheckedCommunicatorTest, CallsReachTheTransportNamedByTheirArguments) {
  RecordingCommunicator comm;
  int64_t x[8] = {};
  const std::vector<size_t> send = {1, 2, 3}, recv = {0, 2, 1};
  EXPECT_TRUE(comm.AllReduce(x, 4, DataType::kInt32, ReduceOp::kMax).ok());
  EXPECT_TRUE(comm.ReduceScatter(x, x, 2, DataType::kBFloat16, ReduceOp::kMin).ok());
  EXPECT_TRUE(comm.AllGather(x, x, 1, DataType::kInt64).ok());
  EXPECT_TRUE(comm.AllToAll(x, send, x, recv, DataType::kFloat32).ok());
  EXPECT_TRUE(comm.Broadcast(x, 3, DataType::kFloat32, 2).ok());
  EXPECT_TRUE(comm.Send(x, 5, DataType::kInt32, 0).ok());
  EXPECT_TRUE(comm.Recv(x, 6, DataType::kInt32, 2).ok());
  EXPECT_TRUE(comm.Barrier().ok());
  EXPECT_THAT(
      comm.calls,
      ElementsAre("all-reduce(max, int32, 4 elements)", "reduce-scatter(min, bfloat16, 2 elements)",
                  "all-gather(int64, 1 elements)", "all-to-all(float32) totals 6/3",
                  "broadcast(float32, 3 elements, root 2)", "send(int32, 5 elements, to member 0)",
                  "recv(int32, 6 elements, from member 2)", "barrier"));
  EXPECT_EQ(comm.checked.size(), comm.calls.size());
}

TEST(CheckedCommunicatorTest, EmptyCallsStopBeforeTheTransportExceptAllToAll) {
  RecordingCommunicator comm;
  const std::vector<size_t> zeros = {0, 0, 0};
  EXPECT_TRUE(comm.AllReduce(nullptr, 0, DataType::kFloat32, ReduceOp::kSum).ok());
  EXPECT_TRUE(comm.ReduceScatter(nullptr, nullptr, 0, DataType::kFloat32, ReduceOp::kSum).ok());
  EXPECT_TRUE(comm.AllGather(nullptr, nullptr, 0, DataType::kFloat32).ok());
  EXPECT_TRUE(comm.Broadcast(nullptr, 0, DataType::kFloat32, 0).ok());
  EXPECT_TRUE(comm.Send(nullptr, 0, DataType::kFloat32, 0).ok());
  EXPECT_TRUE(comm.Recv(nullptr, 0, DataType::kFloat32, 2).ok());
  // Gloo still swaps the counts with its peers: whether to skip is the implementation's call.
  EXPECT_TRUE(comm.AllToAll(nullptr, zeros, nullptr, zeros, DataType::kFloat32).ok());
  EXPECT_THAT(comm.calls, ElementsAre("all-to-all(float32) totals 0/0"));
}

TEST(CheckedCommunicatorTest, AnUnusableCommunicatorFailsBeforeTheArgumentChecks) {
  RecordingCommunicator comm;
  comm.unusable = absl::CancelledError("aborted");
  EXPECT_EQ(comm.AllReduce(nullptr, 1, static_cast<DataType>(9), ReduceOp::kSum),
            absl::CancelledError("aborted"));
  EXPECT_EQ(comm.Barrier(), absl::CancelledError("aborted"));
  EXPECT_THAT(comm.checked,
              ElementsAre("all-reduce(sum, invalid data type, 1 elements)", "barrier"));
  EXPECT_TRUE(comm.calls.empty());
}

TEST(CheckedCommunicatorTest, MessagesStartWithTheCallAndTheGroup) {
  RecordingCommunicator comm;
  EXPECT_EQ(comm.AbortedError("barrier"),
            absl::CancelledError(
                "barrier on group test [4,5,6] as member 1 of 3: the communicator was aborted"));
  EXPECT_EQ(comm.AbortedError("barrier", "group x [1]"),
            absl::CancelledError("barrier on group x [1]: the communicator was aborted"));
  EXPECT_TRUE(comm.BrokenError("barrier", absl::OkStatus()).ok());
  EXPECT_EQ(comm.BrokenError("barrier", absl::UnavailableError("peer 2 left")),
            absl::UnavailableError("barrier on group test [4,5,6] as member 1 of 3: unusable "
                                   "after an earlier failure: peer 2 left"));
  EXPECT_EQ(
      comm.FailedError("barrier", absl::DeadlineExceededError("slow")),
      absl::DeadlineExceededError("barrier on group test [4,5,6] as member 1 of 3 failed: slow"));
}

// The status a call must return: its code and its whole message.
struct Expected {
  absl::StatusCode code;
  std::string message;
};

void ExpectStatus(const absl::Status& status, const Expected& expected) {
  EXPECT_EQ(status.code(), expected.code) << status;
  EXPECT_EQ(status.message(), expected.message);
}

TEST(CheckedCommunicatorTest, GlooNamesTheCallAndTheGroupInEveryArgumentError) {
  InMemoryStore store;
  std::vector<std::unique_ptr<ProcessGroups>> groups(2);
  RunRanks(2, [&](int rank) {
    absl::StatusOr<std::unique_ptr<ProcessGroups>> created = ProcessGroups::CreateGloo(
        {{.kind = "world", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(20), .hostname = "127.0.0.1"});
    ASSERT_TRUE(created.ok()) << created.status();
    groups[rank] = *std::move(created);
  });
  ASSERT_NE(groups[0], nullptr);
  ASSERT_NE(groups[1], nullptr);
  Communicator& comm = *groups[0]->Get("world");
  ExpectBadCallsRefused(comm, "group world [0,1] as member 0 of 2");
  // Empty calls need no peer: they return at once.
  EXPECT_TRUE(comm.AllReduce(nullptr, 0, DataType::kFloat32, ReduceOp::kSum).ok());
  EXPECT_TRUE(comm.Send(nullptr, 0, DataType::kInt64, 1).ok());

  comm.Abort();
  const std::string aborted =
      " on group world [0,1] as member 0 of 2: the communicator was aborted";
  ExpectStatus(comm.Barrier(), {absl::StatusCode::kCancelled, "barrier" + aborted});
  // Abort is reported before bad arguments.
  ExpectStatus(comm.Send(nullptr, 1, DataType::kFloat32, 9),
               {absl::StatusCode::kCancelled, "send(float32, 1 elements, to member 9)" + aborted});
  groups[1]->AbortAll();
}

TEST(CheckedCommunicatorTest, LocalNamesTheOperationAndTheGroupInEveryArgumentError) {
  LocalCommunicator comm("tp", 3);
  const std::string on = " on group tp [3] (local): ";
  constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  float x = 0;
  ExpectStatus(comm.AllReduce(nullptr, 5, DataType::kFloat32, ReduceOp::kSum),
               {kInvalid, "all-reduce" + on + "data is null but 5 elements are to be moved"});
  ExpectStatus(comm.ReduceScatter(&x, &x, 1, DataType::kFloat32, static_cast<ReduceOp>(4)),
               {kInvalid, "reduce-scatter" + on + "invalid reduce op 4"});
  ExpectStatus(comm.AllGather(&x, nullptr, 1, static_cast<DataType>(-1)),
               {kInvalid, "all-gather" + on + "invalid data type -1"});
  const std::vector<size_t> one = {1}, zero = {0};
  ExpectStatus(comm.AllToAll(&x, one, &x, zero, DataType::kFloat32),
               {kInvalid, "all-to-all" + on + "sends 1 elements to itself but receives 0"});
  ExpectStatus(comm.Broadcast(&x, 1, DataType::kFloat32, 1),
               {kInvalid, "broadcast" + on + "root 1 is outside the group of 1"});
  ExpectStatus(
      comm.Send(&x, 1, DataType::kFloat32, 0),
      {kInvalid, "send" + on + "peer 0 is this member itself; send and receive need another"});
  ExpectStatus(comm.Recv(&x, 1, DataType::kFloat32, 1),
               {kInvalid, "recv" + on + "peer 1 is outside the group of 1"});
  // Unlike Gloo's and NCCL's, the buffer is checked before the peer.
  ExpectStatus(comm.Send(nullptr, 2, DataType::kFloat32, 0),
               {kInvalid, "send" + on + "data is null but 2 elements are to be moved"});

  comm.Abort();
  // The group is named without "(local)" here.
  ExpectStatus(comm.Barrier(), {absl::StatusCode::kCancelled,
                                "barrier on group tp [3]: the communicator was aborted"});
  ExpectStatus(
      comm.AllReduce(nullptr, 5, DataType::kFloat32, ReduceOp::kSum),
      {absl::StatusCode::kCancelled, "all-reduce on group tp [3]: the communicator was aborted"});
}

}  // namespace
}  // namespace mimo::comm
