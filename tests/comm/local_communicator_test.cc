// LocalCommunicator: the one-member group's copies, its argument checks, and Abort.
#include "comm/local_communicator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

#include "comm/collective_check.h"

namespace mimo::comm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(LocalCommunicatorTest, IsRankZeroOfOne) {
  LocalCommunicator comm("tp", 3);
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
}

TEST(LocalCommunicatorTest, PassesTheCollectiveCheck) {
  LocalCommunicator comm("tp", 3);
  const absl::Status status = CheckCollectives(comm, 3, "tp");
  EXPECT_TRUE(status.ok()) << status;
}

TEST(LocalCommunicatorTest, CollectivesCopyWhereBuffersDiffer) {
  LocalCommunicator comm("dp", 0);
  std::vector<float> in = {1, 2, 3}, out(3, 0);
  ASSERT_TRUE(comm.AllGather(in.data(), out.data(), 3, DataType::kFloat32).ok());
  EXPECT_THAT(out, ElementsAre(1, 2, 3));
  std::vector<int64_t> rin = {4, 5}, rout(2, 0);
  ASSERT_TRUE(
      comm.ReduceScatter(rin.data(), rout.data(), 2, DataType::kInt64, ReduceOp::kMax).ok());
  EXPECT_THAT(rout, ElementsAre(4, 5));
  const std::vector<size_t> counts = {2};
  std::vector<int64_t> aout(2, 0);
  ASSERT_TRUE(comm.AllToAll(rin.data(), counts, aout.data(), counts, DataType::kInt64).ok());
  EXPECT_THAT(aout, ElementsAre(4, 5));
  ASSERT_TRUE(comm.AllReduce(in.data(), 3, DataType::kFloat32, ReduceOp::kSum).ok());
  EXPECT_THAT(in, ElementsAre(1, 2, 3));
}

TEST(LocalCommunicatorTest, RejectsBadArguments) {
  LocalCommunicator comm("tp", 0);
  float x = 0;
  EXPECT_EQ(comm.Send(&x, 1, DataType::kFloat32, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.Recv(&x, 1, DataType::kFloat32, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.Broadcast(&x, 1, DataType::kFloat32, 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.AllReduce(nullptr, 1, DataType::kFloat32, ReduceOp::kSum).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.AllReduce(&x, 1, static_cast<DataType>(17), ReduceOp::kSum).code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<size_t> two = {1, 1}, one = {1};
  const absl::Status wrong_span = comm.AllToAll(&x, two, &x, one, DataType::kFloat32);
  EXPECT_EQ(wrong_span.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_span.message(), HasSubstr("one count per member"));
  const std::vector<size_t> zero = {0};
  EXPECT_EQ(comm.AllToAll(&x, one, &x, zero, DataType::kFloat32).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LocalCommunicatorTest, EveryCallFailsAfterAbort) {
  LocalCommunicator comm("tp", 0);
  comm.Abort();
  comm.Abort();
  float x = 0;
  EXPECT_EQ(comm.Barrier().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(comm.AllReduce(&x, 1, DataType::kFloat32, ReduceOp::kSum).code(),
            absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace mimo::comm
