// Calls with bad arguments that every Communicator must refuse the same way, and their messages.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "comm/communicator.h"

namespace mimo::comm {

// One bad call: what it does, and the message it must fail with, "NAME on GROUP: WHY".
struct BadCall {
  std::string name;
  std::string why;
  std::function<absl::Status()> call;
};

// One call per argument check, for any member of any group (`comm`); `x` is any non-null buffer,
// which none of the calls touches.
inline std::vector<BadCall> BadCalls(Communicator& comm, float* x) {
  const int n = comm.size();
  const int r = comm.rank();
  std::vector<size_t> ones(n, 1), too_many(n + 1, 1), self_mismatch(n, 1);
  self_mismatch[r] = 2;
  return {
      {"all-reduce(sum, float32, 5 elements)", "data is null but 5 elements are to be moved",
       [&comm] { return comm.AllReduce(nullptr, 5, DataType::kFloat32, ReduceOp::kSum); }},
      {"all-reduce(sum, invalid data type, 1 elements)", "invalid data type 17",
       [&comm, x] { return comm.AllReduce(x, 1, static_cast<DataType>(17), ReduceOp::kSum); }},
      {"all-reduce(invalid reduce op, float32, 1 elements)", "invalid reduce op 9",
       [&comm, x] { return comm.AllReduce(x, 1, DataType::kFloat32, static_cast<ReduceOp>(9)); }},
      {"reduce-scatter(max, int64, 2 elements)", "output is null but 2 elements are to be moved",
       [&comm, x] { return comm.ReduceScatter(x, nullptr, 2, DataType::kInt64, ReduceOp::kMax); }},
      {"all-gather(int32, 3 elements)", "input is null but 3 elements are to be moved",
       [&comm, x] { return comm.AllGather(nullptr, x, 3, DataType::kInt32); }},
      {"all-to-all(float32)",
       absl::StrCat("all-to-all needs one count per member (", n, "), got ", n + 1,
                    " send counts and ", n, " receive counts"),
       [&comm, x, too_many, ones] {
         return comm.AllToAll(x, too_many, x, ones, DataType::kFloat32);
       }},
      {"all-to-all(float32)",
       absl::StrCat("all-to-all input is null but ", n, " elements are to be moved"),
       [&comm, x, ones] { return comm.AllToAll(nullptr, ones, x, ones, DataType::kFloat32); }},
      {"all-to-all(float32)", "sends 2 elements to itself but receives 1",
       [&comm, x, self_mismatch, ones] {
         return comm.AllToAll(x, self_mismatch, x, ones, DataType::kFloat32);
       }},
      {"broadcast(bfloat16, 1 elements, root -1)",
       absl::StrCat("root -1 is outside the group of ", n),
       [&comm, x] { return comm.Broadcast(x, 1, DataType::kBFloat16, -1); }},
      {absl::StrCat("send(float32, 1 elements, to member ", r, ")"),
       absl::StrCat("peer ", r, " is this member itself; send and receive need another"),
       [&comm, x, r] { return comm.Send(x, 1, DataType::kFloat32, r); }},
      // The peer is checked before the buffer.
      {absl::StrCat("recv(float32, 1 elements, from member ", n, ")"),
       absl::StrCat("peer ", n, " is outside the group of ", n),
       [&comm, n] { return comm.Recv(nullptr, 1, DataType::kFloat32, n); }},
  };
}

// Makes every call of BadCalls on `comm`, whose messages name its group as `group`.
inline void ExpectBadCallsRefused(Communicator& comm, const std::string& group) {
  float x[4] = {};
  for (const BadCall& bad : BadCalls(comm, x)) {
    const absl::Status status = bad.call();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_EQ(status.message(), absl::StrCat(bad.name, " on ", group, ": ", bad.why));
  }
}

}  // namespace mimo::comm
