// One process group's collectives and point-to-point calls, over NCCL (GPU) or Gloo (CPU).
#pragma once

#include <cstddef>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace mimo::comm {

enum class DataType { kFloat32, kBFloat16, kInt32, kInt64 };
enum class ReduceOp { kSum, kMax, kMin };

// Bytes per element of `type`; 0 for a value outside the enum.
size_t DataTypeSize(DataType type);
// "float32", "bfloat16", "int32", "int64"; for error messages.
absl::string_view DataTypeName(DataType type);
// "sum", "max", "min"; for error messages.
absl::string_view ReduceOpName(ReduceOp op);

// The ranks of one group talk through one Communicator. Buffers live where the implementation
// works: device memory (on the communicator's CUDA stream) for NCCL, host memory for Gloo. Every
// call is collective over the group unless it says otherwise, and every member must make the same
// calls in the same order. Counts are elements. A call fails with a Status (never hangs past the
// implementation's timeout); after a failure or Abort() the communicator only fails. Bad arguments
// (a null buffer with a non-zero count, a root or peer outside the group, count spans of the wrong
// length) fail with InvalidArgument before anything is sent, and leave the communicator usable;
// calls after Abort() fail with Cancelled (implementations derive from CheckedCommunicator, which
// makes these checks). One thread at a time may make calls; Abort() may come from any thread, but
// the communicator must outlive every call blocked in it.
class Communicator {
 public:
  virtual ~Communicator() = default;

  // This process's index in the group, in [0, size()).
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: `data` (count) becomes the reduction over the group.
  virtual absl::Status AllReduce(void* data, size_t count, DataType type, ReduceOp op) = 0;
  // `input` (size() * count) reduced over the group; member r keeps block r in `output` (count).
  virtual absl::Status ReduceScatter(const void* input, void* output, size_t count, DataType type,
                                     ReduceOp op) = 0;
  // Every member's `input` (count) concatenated in rank order into `output` (size() * count).
  virtual absl::Status AllGather(const void* input, void* output, size_t count, DataType type) = 0;
  // Member r sends send_counts[p] elements (consecutive in `input`, peers in order) to each peer p
  // and receives recv_counts[p] from each into `output`, peers in order. send_counts[p] on r must
  // equal recv_counts[r] on p.
  virtual absl::Status AllToAll(const void* input, absl::Span<const size_t> send_counts,
                                void* output, absl::Span<const size_t> recv_counts,
                                DataType type) = 0;
  // `data` (count) of member `root` is copied to every member.
  virtual absl::Status Broadcast(void* data, size_t count, DataType type, int root) = 0;
  // Point to point, between this member and `peer` only (not collective). Send may block until
  // the peer posts the matching Recv (as MPI_Ssend may), so a ring must not have every member
  // send first. Counts of a matching Send and Recv must be equal. Messages between two members
  // arrive in the order sent.
  virtual absl::Status Send(const void* data, size_t count, DataType type, int peer) = 0;
  virtual absl::Status Recv(void* data, size_t count, DataType type, int peer) = 0;
  // Returns once every member has called it.
  virtual absl::Status Barrier() = 0;

  // Tears the connections down so that calls blocked in this or other threads fail soon instead
  // of waiting for peers that will never come (a peer died, or the job was cancelled).
  // Idempotent; thread-safe.
  virtual void Abort() = 0;
};

}  // namespace mimo::comm
