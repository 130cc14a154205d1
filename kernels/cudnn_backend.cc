// cuDNN's backend (graph) API in RAII form.
#include "kernels/cudnn_backend.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cudnn_status.h"

namespace mimo::kernels {

absl::StatusOr<CudnnDescriptor> CudnnDescriptor::Create(cudnnBackendDescriptorType_t type) {
  CudnnDescriptor d;
  MIMO_CUDNN_RETURN_IF_ERROR(cudnnBackendCreateDescriptor(type, &d.desc_));
  return d;
}

CudnnDescriptor::CudnnDescriptor(CudnnDescriptor&& other) noexcept
    : desc_(std::exchange(other.desc_, nullptr)) {}

CudnnDescriptor& CudnnDescriptor::operator=(CudnnDescriptor&& other) noexcept {
  if (this != &other) {
    if (desc_ != nullptr) cudnnBackendDestroyDescriptor(desc_);
    desc_ = std::exchange(other.desc_, nullptr);
  }
  return *this;
}

CudnnDescriptor::~CudnnDescriptor() {
  if (desc_ != nullptr) cudnnBackendDestroyDescriptor(desc_);
}

absl::Status CudnnDescriptor::Set(cudnnBackendAttributeName_t name,
                                  cudnnBackendAttributeType_t type, int64_t count,
                                  const void* values) {
  const absl::Status s = CudnnStatus(cudnnBackendSetAttribute(desc_, name, type, count, values),
                                     "cudnnBackendSetAttribute", __FILE__, __LINE__);
  if (s.ok()) return s;
  return absl::Status(s.code(),
                      absl::StrCat(s.message(), " [attribute ", static_cast<int>(name), "]"));
}

absl::Status CudnnDescriptor::SetInt64(cudnnBackendAttributeName_t name, int64_t value) {
  return Set(name, CUDNN_TYPE_INT64, 1, &value);
}

absl::Status CudnnDescriptor::SetInt64s(cudnnBackendAttributeName_t name,
                                        absl::Span<const int64_t> values) {
  return Set(name, CUDNN_TYPE_INT64, static_cast<int64_t>(values.size()), values.data());
}

absl::Status CudnnDescriptor::SetDataType(cudnnBackendAttributeName_t name, cudnnDataType_t value) {
  return Set(name, CUDNN_TYPE_DATA_TYPE, 1, &value);
}

absl::Status CudnnDescriptor::SetBool(cudnnBackendAttributeName_t name, bool value) {
  return Set(name, CUDNN_TYPE_BOOLEAN, 1, &value);
}

absl::Status CudnnDescriptor::SetDesc(cudnnBackendAttributeName_t name,
                                      cudnnBackendDescriptor_t value) {
  return Set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value);
}

absl::Status CudnnDescriptor::Finalize() {
  MIMO_CUDNN_RETURN_IF_ERROR(cudnnBackendFinalize(desc_));
  return absl::OkStatus();
}

absl::StatusOr<cudnnBackendDescriptor_t> CudnnGraph::Keep(absl::StatusOr<CudnnDescriptor> desc) {
  if (!desc.ok()) return desc.status();
  descriptors_.push_back(*std::move(desc));
  return descriptors_.back().get();
}

absl::StatusOr<cudnnBackendDescriptor_t> CudnnGraph::Tensor(const CudnnTensorSpec& spec) {
  if (spec.dims.size() != spec.strides.size() || spec.dims.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cuDNN tensor ", spec.uid, ": ",
                                                   spec.dims.size(), " dims and ",
                                                   spec.strides.size(), " strides"));
  }
  MIMO_ASSIGN_OR_RETURN(CudnnDescriptor t,
                        CudnnDescriptor::Create(CUDNN_BACKEND_TENSOR_DESCRIPTOR));
  MIMO_RETURN_IF_ERROR(t.SetDataType(CUDNN_ATTR_TENSOR_DATA_TYPE, spec.dtype));
  MIMO_RETURN_IF_ERROR(t.SetInt64s(CUDNN_ATTR_TENSOR_DIMENSIONS, spec.dims));
  MIMO_RETURN_IF_ERROR(t.SetInt64s(CUDNN_ATTR_TENSOR_STRIDES, spec.strides));
  MIMO_RETURN_IF_ERROR(t.SetInt64(CUDNN_ATTR_TENSOR_UNIQUE_ID, spec.uid));
  MIMO_RETURN_IF_ERROR(t.SetInt64(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, spec.alignment));
  MIMO_RETURN_IF_ERROR(t.SetBool(CUDNN_ATTR_TENSOR_IS_VIRTUAL, spec.is_virtual));
  if (spec.by_value) MIMO_RETURN_IF_ERROR(t.SetBool(CUDNN_ATTR_TENSOR_IS_BY_VALUE, true));
  if (spec.ragged_offset != nullptr) {
    MIMO_RETURN_IF_ERROR(t.SetDesc(CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, spec.ragged_offset));
  }
  const absl::Status finalized = t.Finalize();
  if (!finalized.ok()) {
    return absl::Status(finalized.code(),
                        absl::StrCat("cuDNN tensor ", spec.uid, ": ", finalized.message()));
  }
  return Keep(std::move(t));
}

absl::Status CudnnGraph::Matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                                cudnnBackendDescriptor_t c, const CudnnMatmulOverrides& overrides) {
  MIMO_ASSIGN_OR_RETURN(CudnnDescriptor mm,
                        CudnnDescriptor::Create(CUDNN_BACKEND_MATMUL_DESCRIPTOR));
  MIMO_RETURN_IF_ERROR(mm.SetDataType(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_DATA_FLOAT));
  const double padding = 0.0;
  MIMO_RETURN_IF_ERROR(mm.Set(CUDNN_ATTR_MATMUL_PADDING_VALUE, CUDNN_TYPE_DOUBLE, 1, &padding));
  MIMO_RETURN_IF_ERROR(mm.Finalize());
  MIMO_ASSIGN_OR_RETURN(CudnnDescriptor op,
                        CudnnDescriptor::Create(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_MATMUL_ADESC, a));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_MATMUL_BDESC, b));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_MATMUL_CDESC, c));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_MATMUL_DESC, mm.get()));
  if (overrides.m != nullptr) {
    MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, overrides.m));
  }
  if (overrides.n != nullptr) {
    MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, overrides.n));
  }
  if (overrides.k != nullptr) {
    MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, overrides.k));
  }
  MIMO_RETURN_IF_ERROR(op.Finalize());
  MIMO_RETURN_IF_ERROR(Keep(std::move(mm)).status());
  MIMO_ASSIGN_OR_RETURN(cudnnBackendDescriptor_t kept, Keep(std::move(op)));
  operations_.push_back(kept);
  return absl::OkStatus();
}

absl::Status CudnnGraph::Pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                                   cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y,
                                   cudnnBackendDescriptor_t t, cudnnDataType_t precision,
                                   int64_t axis) {
  MIMO_ASSIGN_OR_RETURN(CudnnDescriptor pw,
                        CudnnDescriptor::Create(CUDNN_BACKEND_POINTWISE_DESCRIPTOR));
  MIMO_RETURN_IF_ERROR(pw.Set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode));
  MIMO_RETURN_IF_ERROR(pw.SetDataType(CUDNN_ATTR_POINTWISE_MATH_PREC, precision));
  if (axis >= 0) MIMO_RETURN_IF_ERROR(pw.SetInt64(CUDNN_ATTR_POINTWISE_AXIS, axis));
  MIMO_RETURN_IF_ERROR(pw.Finalize());
  MIMO_ASSIGN_OR_RETURN(CudnnDescriptor op,
                        CudnnDescriptor::Create(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw.get()));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x));
  if (b != nullptr) MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y));
  if (t != nullptr) MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t));
  const float one = 1.0f;
  MIMO_RETURN_IF_ERROR(op.Set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one));
  MIMO_RETURN_IF_ERROR(op.Set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one));
  MIMO_RETURN_IF_ERROR(op.Finalize());
  MIMO_RETURN_IF_ERROR(Keep(std::move(pw)).status());
  MIMO_ASSIGN_OR_RETURN(cudnnBackendDescriptor_t kept, Keep(std::move(op)));
  operations_.push_back(kept);
  return absl::OkStatus();
}

absl::Status CudnnGraph::Reduction(cudnnReduceTensorOp_t reduce, cudnnBackendDescriptor_t x,
                                   cudnnBackendDescriptor_t y) {
  MIMO_ASSIGN_OR_RETURN(CudnnDescriptor r,
                        CudnnDescriptor::Create(CUDNN_BACKEND_REDUCTION_DESCRIPTOR));
  MIMO_RETURN_IF_ERROR(
      r.Set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &reduce));
  MIMO_RETURN_IF_ERROR(r.SetDataType(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_DATA_FLOAT));
  MIMO_RETURN_IF_ERROR(r.SetBool(CUDNN_ATTR_REDUCTION_IS_DETERMINISTIC, false));
  MIMO_RETURN_IF_ERROR(r.Finalize());
  MIMO_ASSIGN_OR_RETURN(CudnnDescriptor op,
                        CudnnDescriptor::Create(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_REDUCTION_DESC, r.get()));
  MIMO_RETURN_IF_ERROR(op.Finalize());
  MIMO_RETURN_IF_ERROR(Keep(std::move(r)).status());
  MIMO_ASSIGN_OR_RETURN(cudnnBackendDescriptor_t kept, Keep(std::move(op)));
  operations_.push_back(kept);
  return absl::OkStatus();
}

absl::Status CudnnGraph::Reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
  MIMO_ASSIGN_OR_RETURN(CudnnDescriptor op,
                        CudnnDescriptor::Create(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x));
  MIMO_RETURN_IF_ERROR(op.SetDesc(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y));
  MIMO_RETURN_IF_ERROR(op.Finalize());
  MIMO_ASSIGN_OR_RETURN(cudnnBackendDescriptor_t kept, Keep(std::move(op)));
  operations_.push_back(kept);
  return absl::OkStatus();
}

namespace {

// The engine configurations cuDNN's heuristics propose for `graph` in `mode`, best first.
absl::StatusOr<std::vector<CudnnDescriptor>> EngineConfigs(cudnnBackendDescriptor_t graph,
                                                           cudnnBackendHeurMode_t mode) {
  MIMO_ASSIGN_OR_RETURN(CudnnDescriptor heur,
                        CudnnDescriptor::Create(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR));
  MIMO_RETURN_IF_ERROR(heur.SetDesc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph));
  MIMO_RETURN_IF_ERROR(heur.Set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode));
  MIMO_RETURN_IF_ERROR(heur.Finalize());
  int64_t count = 0;
  MIMO_CUDNN_RETURN_IF_ERROR(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                      CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                                                      nullptr));
  std::vector<CudnnDescriptor> configs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    MIMO_ASSIGN_OR_RETURN(CudnnDescriptor c,
                          CudnnDescriptor::Create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    raw.push_back(c.get());
    configs.push_back(std::move(c));
  }
  if (count == 0) return configs;
  int64_t returned = 0;
  MIMO_CUDNN_RETURN_IF_ERROR(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                      CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                                                      &returned, raw.data()));
  configs.resize(static_cast<size_t>(returned));
  return configs;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudnnGraph::Plan>> CudnnGraph::Finish(cudnnHandle_t handle) && {
  MIMO_ASSIGN_OR_RETURN(CudnnDescriptor graph,
                        CudnnDescriptor::Create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR));
  MIMO_RETURN_IF_ERROR(graph.Set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 static_cast<int64_t>(operations_.size()), operations_.data()));
  MIMO_RETURN_IF_ERROR(graph.Set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle));
  MIMO_RETURN_IF_ERROR(graph.Finalize());

  std::string tried;
  for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    absl::StatusOr<std::vector<CudnnDescriptor>> configs = EngineConfigs(graph.get(), mode);
    if (!configs.ok()) {
      absl::StrAppend(&tried, " heuristics mode ", static_cast<int>(mode), ": ",
                      configs.status().message(), ";");
      continue;
    }
    for (CudnnDescriptor& config : *configs) {
      absl::StatusOr<CudnnDescriptor> plan =
          CudnnDescriptor::Create(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      if (!plan.ok()) return plan.status();
      absl::Status s = plan->Set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
      if (s.ok()) s = plan->SetDesc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, config.get());
      if (s.ok()) s = plan->Finalize();
      if (!s.ok()) {
        absl::StrAppend(&tried, " ", s.message(), ";");
        continue;
      }
      auto out = std::make_unique<Plan>();
      MIMO_CUDNN_RETURN_IF_ERROR(
          cudnnBackendGetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                   CUDNN_TYPE_INT64, 1, nullptr, &out->workspace_bytes));
      out->plan = *std::move(plan);
      descriptors_.push_back(std::move(graph));
      descriptors_.push_back(std::move(config));
      out->keep = std::move(descriptors_);
      return out;
    }
  }
  return absl::UnimplementedError(
      absl::StrCat("cuDNN has no engine for this graph of ", operations_.size(),
                   " operations:", tried.empty() ? " the heuristics proposed none" : tried));
}

absl::Status CudnnExecute(cudnnHandle_t handle, const CudnnGraph::Plan& plan,
                          absl::Span<const int64_t> uids, absl::Span<void* const> pointers,
                          void* workspace) {
  if (uids.size() != pointers.size()) {
    return absl::InvalidArgumentError("CudnnExecute: uids and pointers differ in length");
  }
  MIMO_ASSIGN_OR_RETURN(CudnnDescriptor pack,
                        CudnnDescriptor::Create(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR));
  MIMO_RETURN_IF_ERROR(pack.SetInt64s(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, uids));
  MIMO_RETURN_IF_ERROR(pack.Set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                                static_cast<int64_t>(pointers.size()), pointers.data()));
  MIMO_RETURN_IF_ERROR(
      pack.Set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace));
  MIMO_RETURN_IF_ERROR(pack.Finalize());
  MIMO_CUDNN_RETURN_IF_ERROR(cudnnBackendExecute(handle, plan.plan.get(), pack.get()));
  return absl::OkStatus();
}

}  // namespace mimo::kernels
