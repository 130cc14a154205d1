// NcclCommunicator on real devices: the collective check, init timeouts, Abort, argument checks.
// One GPU runs one-rank groups; the tests of several ranks need as many GPUs and skip otherwise.
#include "comm/nccl_communicator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "comm/collective_check.h"
#include "comm/cuda_buffer_space.h"
#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "kernels/device_info.h"
#include "tests/comm/bad_calls.h"
#include "tests/comm/run_ranks.h"

namespace mimo::comm {
namespace {

using ::testing::HasSubstr;

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    devices_ = kernels::ListCudaDevices();
    if (devices_.devices.empty()) {
      GTEST_SKIP() << "no CUDA device: " << devices_.unavailable_reason;
    }
  }
  // Skips unless there are `n` devices, one per rank (NCCL allows one rank per device).
  bool HaveDevices(int n) { return static_cast<int>(devices_.devices.size()) >= n; }

  kernels::CudaDevices devices_;
};

ProcessGroupsOptions Options(int rank, int device, absl::Duration timeout = absl::Seconds(60)) {
  return {.rank = rank, .timeout = timeout, .cuda_device = device};
}

TEST_F(NcclCommunicatorTest, OneRankGroupsPassTheCheck) {
  InMemoryStore store;
  absl::StatusOr<std::unique_ptr<ProcessGroups>> groups = ProcessGroups::CreateNccl(
      {{.kind = "tp", .members = {3}}, {.kind = "dp", .members = {3}}}, store, Options(3, 0));
  ASSERT_TRUE(groups.ok()) << groups.status();
  CudaBufferSpace space(0);
  for (const char* kind : {"tp", "dp"}) {
    Communicator* comm = (*groups)->Get(kind);
    ASSERT_NE(comm, nullptr);
    EXPECT_EQ(comm->size(), 1);
    const absl::Status status = CheckCollectives(*comm, 3, kind, &space);
    EXPECT_TRUE(status.ok()) << status;
  }
}

TEST_F(NcclCommunicatorTest, EveryCallFailsAfterAbort) {
  InMemoryStore store;
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm =
      NcclCommunicator::Connect("tp", {0}, 0, store, 0, absl::Seconds(60));
  ASSERT_TRUE(comm.ok()) << comm.status();
  ASSERT_TRUE((*comm)->Barrier().ok());
  (*comm)->Abort();
  (*comm)->Abort();
  const absl::Status status = (*comm)->Barrier();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
}

TEST_F(NcclCommunicatorTest, BadArgumentsAreInvalid) {
  InMemoryStore store;
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm =
      NcclCommunicator::Connect("tp", {0}, 0, store, 0, absl::Seconds(60));
  ASSERT_TRUE(comm.ok()) << comm.status();
  float* data = nullptr;
  ASSERT_EQ(cudaMalloc(&data, 16), cudaSuccess);
  const std::vector<size_t> two = {1, 1}, one = {1};
  EXPECT_EQ((*comm)->AllToAll(data, two, data, one, DataType::kFloat32).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*comm)->Send(data, 1, DataType::kFloat32, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*comm)->Broadcast(data, 1, DataType::kFloat32, 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*comm)->Barrier().ok());
  cudaFree(data);
}

TEST_F(NcclCommunicatorTest, BadArgumentsFailWithTheMessagesOfEveryCommunicator) {
  InMemoryStore store;
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm =
      NcclCommunicator::Connect("tp", {0}, 0, store, 0, absl::Seconds(60));
  ASSERT_TRUE(comm.ok()) << comm.status();
  ExpectBadCallsRefused(**comm, "group tp [0] as member 0 of 1 on CUDA device 0");
  EXPECT_TRUE((*comm)->Barrier().ok());
  (*comm)->Abort();
  const absl::Status aborted = (*comm)->Send(nullptr, 1, DataType::kFloat32, 9);
  EXPECT_EQ(aborted.code(), absl::StatusCode::kCancelled) << aborted;
  EXPECT_EQ(aborted.message(),
            "send(float32, 1 elements, to member 9) on group tp [0] as member 0 of 1 on CUDA "
            "device 0: the communicator was aborted");
}

TEST_F(NcclCommunicatorTest, MissingMemberFailsInitWithinTheTimeout) {
  InMemoryStore store;
  // Member 0 publishes the id and starts NCCL's rendezvous; member 1 never comes.
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm =
      NcclCommunicator::Connect("tp", {0, 1}, 0, store, 0, absl::Seconds(2));
  const absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_THAT(comm.status().message(), HasSubstr("connecting NCCL group tp [0,1] as member 0"));
  EXPECT_LT(waited, absl::Seconds(10));
  // Member 1 alone finds no id in the store.
  InMemoryStore empty;
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> other =
      NcclCommunicator::Connect("tp", {0, 1}, 1, empty, 0, absl::Milliseconds(300));
  EXPECT_EQ(other.status().code(), absl::StatusCode::kDeadlineExceeded) << other.status();
  EXPECT_THAT(other.status().message(), HasSubstr("comm/tp/0,1/nccl_unique_id"));
}

TEST_F(NcclCommunicatorTest, SeveralDevicesPassTheCheck) {
  const int n = static_cast<int>(devices_.devices.size());
  if (n < 2) GTEST_SKIP() << "needs 2 CUDA devices, found " << n;
  InMemoryStore store;
  std::vector<int> members(n);
  for (int i = 0; i < n; ++i) members[i] = i;
  std::vector<absl::Status> statuses(n);
  RunRanks(n, [&](int rank) {
    absl::StatusOr<std::unique_ptr<ProcessGroups>> groups = ProcessGroups::CreateNccl(
        {{.kind = "world", .members = members}, {.kind = "self", .members = {rank}}}, store,
        Options(rank, rank));
    if (!groups.ok()) {
      statuses[rank] = groups.status();
      return;
    }
    CudaBufferSpace space(rank);
    statuses[rank] = CheckCollectives(*(*groups)->Get("world"), rank, "world", &space);
    if (statuses[rank].ok()) {
      statuses[rank] = CheckCollectives(*(*groups)->Get("self"), rank, "self", &space);
    }
  });
  for (int rank = 0; rank < n; ++rank) EXPECT_TRUE(statuses[rank].ok()) << statuses[rank];
}

TEST_F(NcclCommunicatorTest, AbortUnblocksARecvWhosePeerNeverSends) {
  if (!HaveDevices(2)) GTEST_SKIP() << "needs 2 CUDA devices";
  InMemoryStore store;
  std::vector<std::unique_ptr<NcclCommunicator>> comms(2);
  RunRanks(2, [&](int rank) {
    absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm =
        NcclCommunicator::Connect("pp", {0, 1}, rank, store, rank, absl::Seconds(60));
    ASSERT_TRUE(comm.ok()) << comm.status();
    comms[rank] = *std::move(comm);
  });
  ASSERT_NE(comms[0], nullptr);
  ASSERT_NE(comms[1], nullptr);
  float* data = nullptr;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&data, 64 * sizeof(float)), cudaSuccess);
  absl::Status status;
  std::thread receiver([&] { status = comms[0]->Recv(data, 64, DataType::kFloat32, 1); });
  absl::SleepFor(absl::Milliseconds(300));
  const absl::Time abort_time = absl::Now();
  comms[0]->Abort();
  receiver.join();
  EXPECT_LT(absl::Now() - abort_time, absl::Seconds(2));
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  comms[1]->Abort();
  cudaFree(data);
}

}  // namespace
}  // namespace mimo::comm
