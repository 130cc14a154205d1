// Training one MIMO model replica, alone or data parallel: each step packs this rank's
// micro-batches of synthetic samples, runs forward and backward on each (gradients accumulated,
// the loss averaged over the whole step's labelled tokens on every replica, auxiliary losses
// over its micro-batches), sums the gradients over the data-parallel group, then the optimizer
// update and the per-expert load; it reports the step's metrics. The whole model on every rank
// of the group (modules on their own ranks and expert parallelism build on this).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "data/synthetic.h"
#include "kernels/ops.h"
#include "mimo/mimo_model.h"
#include "mimo/model_groups.h"
#include "mimo/optimizer.h"

namespace mimo::worker {

struct TrainerOptions {
  int64_t micro_batch_size = 1;  // Samples per forward/backward; >= 1.
  int64_t micro_batches = 1;     // Per optimizer step (gradient accumulation); >= 1.
  int64_t seq_length = 0;        // Tokens per sample at most; > 0.
  data::SyntheticOptions data;   // Its image and audio sizes are set from the model.
  OptimizerConfig optimizer;
  uint64_t seed = 1234;  // The job seed: keys the initial parameters.
  // The data-parallel group (not owned; null or one member: this rank alone). Every member calls
  // Step together; member r of n takes samples [base + r * k, base + (r + 1) * k) of each step's
  // n * k (k = micro_batches * micro_batch_size), so the group sees what one rank with n times
  // the micro-batches would, and the replicas stay identical.
  comm::Communicator* dp = nullptr;
  // Expert parallelism of the language model (ModelGroups::ep; expt_tp is not supported by the
  // step yet): the routed experts' gradients are summed over expt_dp (the ranks holding the same
  // experts; null: dp without EP, none with it) instead of dp, and their squared norms over ep.
  ModelGroups groups;
  comm::Communicator* expt_dp = nullptr;
};

struct StepMetrics {
  int64_t step = 0;     // 1 for the first update.
  double loss = 0;      // Mean loss per labelled token.
  double aux_loss = 0;  // The MoE layers' load-balancing + z losses, mean per micro-batch.
  double grad_norm = 0;
  double lr = 0;
  bool skipped = false;
  int64_t tokens = 0;                // Packed tokens of the step.
  int64_t labelled = 0;              // Of which with a label.
  std::vector<int64_t> expert_load;  // Per expert, summed over the MoE layers and the group.
  double seconds = 0;                // Wall time of the step.
};

class Trainer {
 public:
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(kernels::Ops& ops,
                                                         const MimoModelConfig& model,
                                                         const TrainerOptions& options);
  // One optimizer step on the next micro_batches * micro_batch_size samples.
  absl::StatusOr<StepMetrics> Step();
  // Samples consumed so far by the whole group (the data position).
  int64_t position() const { return position_; }
  MimoModel& model() { return *model_; }

 private:
  Trainer(kernels::Ops& ops, const MimoModelConfig& config, const TrainerOptions& options,
          std::unique_ptr<MimoModel> model, std::unique_ptr<AdamWOptimizer> optimizer,
          std::vector<Parameter*> dense, std::vector<Parameter*> experts)
      : ops_(ops),
        config_(config),
        options_(options),
        model_(std::move(model)),
        optimizer_(std::move(optimizer)),
        dense_(std::move(dense)),
        experts_(std::move(experts)) {}

  kernels::Ops& ops_;
  const MimoModelConfig config_;
  const TrainerOptions options_;
  std::unique_ptr<MimoModel> model_;
  std::unique_ptr<AdamWOptimizer> optimizer_;
  std::vector<Parameter*> dense_;    // Every parameter but the routed experts'.
  std::vector<Parameter*> experts_;  // The routed experts' (this rank's experts with EP).
  int64_t position_ = 0;
};

}  // namespace mimo::worker
