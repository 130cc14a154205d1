// cuDNN's backend (graph) API in RAII form: owned descriptors, tensors, operations, and an
// operation graph turned into an execution plan by cuDNN's heuristics.
#pragma once

#include <cudnn.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mimo::kernels {

// One backend descriptor, destroyed with its owner. Setters report cuDNN's error with the
// attribute's number.
class CudnnDescriptor {
 public:
  static absl::StatusOr<CudnnDescriptor> Create(cudnnBackendDescriptorType_t type);
  CudnnDescriptor() = default;
  CudnnDescriptor(CudnnDescriptor&& other) noexcept;
  CudnnDescriptor& operator=(CudnnDescriptor&& other) noexcept;
  ~CudnnDescriptor();

  cudnnBackendDescriptor_t get() const { return desc_; }

  absl::Status Set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                   int64_t count, const void* values);
  absl::Status SetInt64(cudnnBackendAttributeName_t name, int64_t value);
  absl::Status SetInt64s(cudnnBackendAttributeName_t name, absl::Span<const int64_t> values);
  absl::Status SetDataType(cudnnBackendAttributeName_t name, cudnnDataType_t value);
  absl::Status SetBool(cudnnBackendAttributeName_t name, bool value);
  absl::Status SetDesc(cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t value);
  absl::Status Finalize();

 private:
  cudnnBackendDescriptor_t desc_ = nullptr;
};

// A tensor of an operation graph. Non-virtual tensors are bound to memory by `uid` at execution.
struct CudnnTensorSpec {
  int64_t uid = 0;
  cudnnDataType_t dtype = CUDNN_DATA_FLOAT;
  std::vector<int64_t> dims;
  std::vector<int64_t> strides;
  bool is_virtual = false;  // An intermediate that never reaches memory.
  bool by_value = false;    // A host scalar passed by value (dims and strides all 1).
  int64_t alignment = 16;   // Bytes the data pointer is aligned to.
  cudnnBackendDescriptor_t ragged_offset = nullptr;  // Per-batch start offsets, in elements.
};

// Per batch entry, the real extent of a padded matmul dimension: (batch..., 1, 1) int32 tensors;
// null where the whole dimension is real.
struct CudnnMatmulOverrides {
  cudnnBackendDescriptor_t m = nullptr;
  cudnnBackendDescriptor_t n = nullptr;
  cudnnBackendDescriptor_t k = nullptr;
};

// Builds an operation graph node by node (owning every descriptor) and makes its execution plan.
class CudnnGraph {
 public:
  absl::StatusOr<cudnnBackendDescriptor_t> Tensor(const CudnnTensorSpec& spec);
  // c = a · b over the last two dimensions (batched, with broadcasting, over the leading ones),
  // fp32 accumulation; padding reads as 0.
  absl::Status Matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                      cudnnBackendDescriptor_t c, const CudnnMatmulOverrides& overrides = {});
  // y = mode(x[, b[, t]]) elementwise with broadcasting, computed in `precision`. `axis` is
  // GEN_INDEX's axis. BINARY_SELECT gives x where t is true, else b.
  absl::Status Pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                         cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y,
                         cudnnBackendDescriptor_t t = nullptr,
                         cudnnDataType_t precision = CUDNN_DATA_FLOAT, int64_t axis = -1);
  // y = x seen through y's dimensions and strides (a transpose, for instance).
  absl::Status Reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y);
  // y = reduce(x) over the dimensions where y is smaller (to extent 1, or by whole groups: h query
  // heads summed into h / g), in fp32.
  absl::Status Reduction(cudnnReduceTensorOp_t op, cudnnBackendDescriptor_t x,
                         cudnnBackendDescriptor_t y);

  // The graph's execution plan on `handle`: the first engine configuration of cuDNN's heuristics
  // (mode A, then the fallback list) that finalizes. Unimplemented when none does.
  struct Plan {
    std::vector<CudnnDescriptor> keep;  // The graph's descriptors, alive with the plan.
    CudnnDescriptor plan;
    int64_t workspace_bytes = 0;
  };
  absl::StatusOr<std::unique_ptr<Plan>> Finish(cudnnHandle_t handle) &&;

 private:
  absl::StatusOr<cudnnBackendDescriptor_t> Keep(absl::StatusOr<CudnnDescriptor> desc);
  std::vector<CudnnDescriptor> descriptors_;
  std::vector<cudnnBackendDescriptor_t> operations_;
};

// Runs `plan` with the non-virtual tensors' memory (`uids[i]` at `pointers[i]`; by-value tensors
// point to host scalars) and its workspace, on the handle's stream.
absl::Status CudnnExecute(cudnnHandle_t handle, const CudnnGraph::Plan& plan,
                          absl::Span<const int64_t> uids, absl::Span<void* const> pointers,
                          void* workspace);

}  // namespace mimo::kernels
