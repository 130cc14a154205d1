// The modules one rank builds (its encoders or its language model, its pipeline stage of them)
// for its part of the model: one place that decides, used by the Trainer to train them and by
// mimo-convert to describe another layout's ranks without memory (DescribeRank).
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"
#include "mimo/mimo_model.h"
#include "mimo/modality_encoder.h"
#include "mimo/model_groups.h"
#include "mimo/transformer_block.h"
#include "mimo/v1/job_spec.pb.h"
#include "parallel/rank_plan.h"
#include "worker/bridge_link.h"

namespace mimo::worker {

// The part of a job spec's module `name`: kLanguage, kVision or kAudio; InvalidArgument for a
// name the spec does not have.
absl::StatusOr<ModelPart> PartOfModule(const v1::JobSpec& spec, const std::string& name);

struct RankModules {
  std::unique_ptr<ModalityEncoder> encoders[2];  // Vision, audio; null where not on this rank.
  // The language model's chunks on this rank, in order: one (the rank's pipeline stage) unless
  // the stages are interleaved; none on encoder ranks.
  std::vector<std::unique_ptr<LanguageModel>> language;

  // Every parameter: the encoders' (vision, audio), then the language model's chunks'.
  void AppendParameters(std::vector<Parameter*>& out) const;
  std::vector<MoeLayer*> moe_layers() const;
};

struct RankModulesOptions {
  ModelPart part = ModelPart::kWhole;
  // The rank's groups (the model uses their sizes and this rank's index at build time). On a
  // rank of the whole model the encoders are built without tp and cp (each member computes
  // them whole); on an encoder's own ranks they are tensor parallel.
  ModelGroups groups;
  // The rank's stage of its module (pp); on ranks of the whole model the encoders are whole on
  // the first stage.
  PipelineStage stage;
  // Interleaved pipeline stages of the language model (Megatron's virtual pipeline): its layers
  // in stage.count x chunks parts, this rank holding parts c * stage.count + stage.index.
  int chunks = 1;
  uint64_t seed = 1234;        // The job seed: keys the initial values.
  bool describe_only = false;  // BuildContext::describe_only: parameters without memory.
};

// The modules of `options.part` built as MimoModel builds them (the same names, so the same
// initial values); InvalidArgument for a part the model does not have.
absl::StatusOr<RankModules> BuildRankModules(kernels::Ops& ops, const MimoModelConfig& model,
                                             const RankModulesOptions& options);

// What rank `rank` of `plan` holds of the job `spec`'s model in compute dtype `dtype`, described
// (no memory, no values): every parameter's spec (name, shape on the rank, shards) and the names
// of the MoE layers' expert biases (fp32, (experts,) each) when they balance by bias.
struct RankDescription {
  ModelPart part = ModelPart::kWhole;
  std::vector<ParameterSpec> parameters;
  std::set<std::string> routed;  // The names of those of the routed experts.
  // Whether the rank saves the replicas of the dense parameters (member 0 of their gradient
  // group: dp 0 and cp 0) and of the routed experts (expt_dp 0), as Trainer::SaveState does.
  bool saves_dense = true, saves_experts = true;
  std::vector<std::string> expert_biases;
  int64_t experts = 0;  // The routed experts' count (the expert biases' length).
};
absl::StatusOr<RankDescription> DescribeRank(const v1::JobSpec& spec,
                                             const parallel::RankPlan& plan, int rank,
                                             kernels::DType dtype);

}  // namespace mimo::worker
