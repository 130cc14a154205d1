// Where each local expert's rows lie in the experts' buffer: the offsets a dispatch hands the
// experts, on the device always and on the host where knowing them there costs no synchronization.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/tensor.h"

namespace mimo {

// Local expert i has rows [offsets[i], offsets[i + 1]); rows past offsets[El] are padding.
struct ExpertRowOffsets {
  kernels::Tensor device;     // (El + 1,) int32 in the ops' memory.
  std::vector<int32_t> host;  // The same on the host, or empty when they stayed on the device.
  // Every offset is a multiple of this (the dispatch's alignment where it promises one).
  int64_t row_multiple = 1;
};

}  // namespace mimo
