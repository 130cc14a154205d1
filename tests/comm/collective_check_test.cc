// CheckCollectives can fail: a communicator that corrupts one element, or fails one call, is
// caught and the error names the group, the collective, the ranks and the element.
#include "comm/collective_check.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>

#include "comm/local_communicator.h"

namespace mimo::comm {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// A one-member communicator that damages one call's result, or fails one call outright.
class FaultyCommunicator : public Communicator {
 public:
  enum class Fault { kAllGatherElement, kInt64SumElement, kBroadcastRoot, kBarrierFails };
  explicit FaultyCommunicator(Fault fault) : fault_(fault), inner_("tp", 7) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  absl::Status AllReduce(void* data, size_t count, DataType type, ReduceOp op) override {
    absl::Status s = inner_.AllReduce(data, count, type, op);
    if (fault_ == Fault::kInt64SumElement && type == DataType::kInt64 && op == ReduceOp::kSum) {
      static_cast<int64_t*>(data)[11] += 1;
    }
    return s;
  }
  absl::Status ReduceScatter(const void* input, void* output, size_t count, DataType type,
                             ReduceOp op) override {
    return inner_.ReduceScatter(input, output, count, type, op);
  }
  absl::Status AllGather(const void* input, void* output, size_t count, DataType type) override {
    absl::Status s = inner_.AllGather(input, output, count, type);
    if (fault_ == Fault::kAllGatherElement && type == DataType::kFloat32) {
      static_cast<float*>(output)[5] = 42.0f;
    }
    return s;
  }
  absl::Status AllToAll(const void* input, absl::Span<const size_t> send_counts, void* output,
                        absl::Span<const size_t> recv_counts, DataType type) override {
    return inner_.AllToAll(input, send_counts, output, recv_counts, type);
  }
  absl::Status Broadcast(void* data, size_t count, DataType type, int root) override {
    absl::Status s = inner_.Broadcast(data, count, type, root);
    if (fault_ == Fault::kBroadcastRoot && type == DataType::kFloat32) {
      static_cast<float*>(data)[count - 1] = -1.0f;  // As if this member never got the data.
    }
    return s;
  }
  absl::Status Send(const void* data, size_t count, DataType type, int peer) override {
    return inner_.Send(data, count, type, peer);
  }
  absl::Status Recv(void* data, size_t count, DataType type, int peer) override {
    return inner_.Recv(data, count, type, peer);
  }
  absl::Status Barrier() override {
    if (fault_ == Fault::kBarrierFails) return absl::UnavailableError("peer 3 went away");
    return inner_.Barrier();
  }
  void Abort() override { inner_.Abort(); }

 private:
  const Fault fault_;
  LocalCommunicator inner_;
};

TEST(CollectiveCheckTest, WrongAllGatherElementIsNamed) {
  FaultyCommunicator comm(FaultyCommunicator::Fault::kAllGatherElement);
  const absl::Status status = CheckCollectives(comm, 7, "tp");
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("group tp"), HasSubstr("all-gather(float32)"),
                    HasSubstr("group rank 0 (global rank 7)"), HasSubstr("element 5"),
                    HasSubstr("expected 5.5"), HasSubstr("got 42")));
}

TEST(CollectiveCheckTest, WrongReductionElementIsNamed) {
  FaultyCommunicator comm(FaultyCommunicator::Fault::kInt64SumElement);
  const absl::Status status = CheckCollectives(comm, 7, "tp");
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  // Element 11 of member 0: 2^40 - 11 * 3.
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("all-reduce(sum, int64)"), HasSubstr("element 11"),
                    HasSubstr("expected 1099511627743"), HasSubstr("got 1099511627744")));
}

TEST(CollectiveCheckTest, WrongBroadcastNamesTheRoot) {
  FaultyCommunicator comm(FaultyCommunicator::Fault::kBroadcastRoot);
  const absl::Status status = CheckCollectives(comm, 7, "tp");
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), AllOf(HasSubstr("broadcast(float32, root 0)"),
                                      HasSubstr("element 36"), HasSubstr("got -1")));
}

TEST(CollectiveCheckTest, FailedCallKeepsItsCodeAndNamesTheCollective) {
  FaultyCommunicator comm(FaultyCommunicator::Fault::kBarrierFails);
  const absl::Status status = CheckCollectives(comm, 7, "tp");
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("group tp, barrier"), HasSubstr("peer 3 went away")));
}

// Host memory standing in for a device: separate buffers, filled and read only through copies.
class FakeDeviceSpace : public BufferSpace {
 public:
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    void* buffer = new char[bytes > 0 ? bytes : 1];
    live_.insert(buffer);
    ++allocations_;
    return buffer;
  }
  void Free(void* buffer) override {
    EXPECT_EQ(live_.erase(buffer), 1u);
    delete[] static_cast<char*>(buffer);
  }
  absl::Status CopyIn(void* buffer, const void* host, size_t bytes) override {
    EXPECT_TRUE(live_.contains(buffer));
    if (bytes > 0) std::memcpy(buffer, host, bytes);
    return absl::OkStatus();
  }
  absl::Status CopyOut(void* host, const void* buffer, size_t bytes) override {
    EXPECT_TRUE(live_.contains(const_cast<void*>(buffer)));
    if (bytes > 0) std::memcpy(host, buffer, bytes);
    return absl::OkStatus();
  }

  std::set<void*> live_;
  int allocations_ = 0;
};

TEST(CollectiveCheckTest, StagesEveryBufferInTheGivenSpace) {
  LocalCommunicator comm("ep", 2);
  FakeDeviceSpace space;
  const absl::Status status = CheckCollectives(comm, 2, "ep", &space);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_GE(space.allocations_, 15);
  EXPECT_TRUE(space.live_.empty());
}

}  // namespace
}  // namespace mimo::comm
