// The communicator element type of a tensor dtype, for the model's collectives.
#pragma once

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "kernels/dtype.h"

namespace mimo {

// Every tensor dtype has one; InvalidArgument only for a value outside the enum.
inline absl::StatusOr<comm::DataType> CommType(kernels::DType dtype) {
  switch (dtype) {
    case kernels::DType::kF32:
      return comm::DataType::kFloat32;
    case kernels::DType::kBF16:
      return comm::DataType::kBFloat16;
    case kernels::DType::kI32:
      return comm::DataType::kInt32;
    case kernels::DType::kI64:
      return comm::DataType::kInt64;
  }
  return absl::InvalidArgumentError("no communicator type for this dtype");
}

}  // namespace mimo
