// FinishExpertLoadStep: the layers' loads in one int64 buffer, one all-reduce, the bias updates.
#include "mimo/expert_load.h"

#include <utility>

#include "common/status_macros.h"

namespace mimo {

absl::StatusOr<ExpertLoads> FinishExpertLoadStep(kernels::Ops& ops,
                                                 absl::Span<MoeLayer* const> layers,
                                                 absl::Span<comm::Communicator* const> groups) {
  ExpertLoads loads;
  std::vector<int64_t> flat;
  for (MoeLayer* layer : layers) {
    MIMO_ASSIGN_OR_RETURN(std::vector<int64_t> load, layer->TakeExpertLoad(ops));
    flat.insert(flat.end(), load.begin(), load.end());
    loads.push_back(std::move(load));
  }
  bool reduce = false;
  for (comm::Communicator* group : groups) reduce |= group != nullptr && group->size() > 1;
  if (reduce && !flat.empty()) {
    MIMO_ASSIGN_OR_RETURN(
        kernels::Tensor buffer,
        kernels::Tensor::Empty({static_cast<int64_t>(flat.size())}, kernels::DType::kI64,
                               ops.allocator(), ops.stream()));
    MIMO_RETURN_IF_ERROR(ops.CopyFromHost(buffer.data(), flat.data(), buffer.nbytes()));
    MIMO_RETURN_IF_ERROR(ops.Synchronize());
    for (comm::Communicator* group : groups) {
      if (group == nullptr || group->size() == 1) continue;
      MIMO_RETURN_IF_ERROR(group->AllReduce(buffer.data(), flat.size(), comm::DataType::kInt64,
                                            comm::ReduceOp::kSum));
    }
    MIMO_RETURN_IF_ERROR(ops.CopyToHost(flat.data(), buffer.data(), buffer.nbytes()));
    size_t at = 0;
    for (std::vector<int64_t>& load : loads) {
      for (int64_t& n : load) n = flat[at++];
    }
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i]->expert_bias_enabled()) {
      MIMO_RETURN_IF_ERROR(layers[i]->UpdateExpertBias(ops, loads[i]));
    }
  }
  return loads;
}

}  // namespace mimo
