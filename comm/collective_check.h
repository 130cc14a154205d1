// The selftest of one process group: every collective, checked element by element.
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "comm/communicator.h"

namespace mimo::comm {

// Memory where a communicator works (device memory for NCCL), as CheckCollectives uses it.
class BufferSpace {
 public:
  virtual ~BufferSpace() = default;
  // `bytes` bytes (a valid pointer even for 0).
  virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;
  virtual void Free(void* buffer) = 0;
  // Copies complete before returning and come after every communicator call already returned.
  virtual absl::Status CopyIn(void* buffer, const void* host, size_t bytes) = 0;
  virtual absl::Status CopyOut(void* host, const void* buffer, size_t bytes) = 0;
};

// Runs on `comm` every collective the training step uses, with data that depends on the group
// rank and whose results are exactly representable, and checks every element exactly:
// all-reduce sum/max/min in float32 and int64 (sum also in int32 and, for groups of at most 256,
// bfloat16), reduce-scatter, all-gather (float32, and bfloat16 bit patterns), all-to-all with
// uneven per-peer counts including zeros, broadcast from every root, send/recv around a ring
// (groups of two or more), and a barrier. Every member of the group must call it at the same
// time. `space` says where `comm`'s buffers live; null means host memory (Gloo, local).
//
// A call that fails returns its error prefixed with the group and the collective; a wrong element
// returns DataLoss naming the group `kind`, the collective, the group and global rank, the
// element's index, and the expected and received values.
absl::Status CheckCollectives(Communicator& comm, int global_rank, absl::string_view kind,
                              BufferSpace* space = nullptr);

}  // namespace mimo::comm
