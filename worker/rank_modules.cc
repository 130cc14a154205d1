// BuildRankModules and DescribeRank: a rank's modules, built for training or only described.
#include "worker/rank_modules.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/model_spec.h"

namespace mimo::worker {
namespace {

constexpr int kVision = 0, kAudio = 1;  // Indices of the encoders.

// A group's size and this rank's index in it, for a model built only to be described: every
// call fails (nothing of such a model is computed).
class DescribedGroup final : public comm::Communicator {
 public:
  DescribedGroup(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::Status AllReduce(void*, size_t, comm::DataType, comm::ReduceOp) override { return No(); }
  absl::Status ReduceScatter(const void*, void*, size_t, comm::DataType, comm::ReduceOp) override {
    return No();
  }
  absl::Status AllGather(const void*, void*, size_t, comm::DataType) override { return No(); }
  absl::Status AllToAll(const void*, absl::Span<const size_t>, void*, absl::Span<const size_t>,
                        comm::DataType) override {
    return No();
  }
  absl::Status Broadcast(void*, size_t, comm::DataType, int) override { return No(); }
  absl::Status Send(const void*, size_t, comm::DataType, int) override { return No(); }
  absl::Status Recv(void*, size_t, comm::DataType, int) override { return No(); }
  absl::Status Barrier() override { return No(); }
  void Abort() override {}

 private:
  static absl::Status No() {
    return absl::FailedPreconditionError("a described model's group does not communicate");
  }
  const int rank_, size_;
};

}  // namespace

absl::StatusOr<ModelPart> PartOfModule(const v1::JobSpec& spec, const std::string& name) {
  for (const v1::Module& m : spec.modules()) {
    if (m.name() != name) continue;
    switch (m.model_case()) {
      case v1::Module::kLanguage:
        return ModelPart::kLanguage;
      case v1::Module::kVision:
        return ModelPart::kVision;
      case v1::Module::kAudio:
        return ModelPart::kAudio;
      default:
        return absl::InvalidArgumentError(absl::StrCat("module \"", name, "\" has no model"));
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("the spec has no module \"", name, "\""));
}

void RankModules::AppendParameters(std::vector<Parameter*>& out) const {
  for (const auto& e : encoders) {
    if (e != nullptr) e->AppendParameters(out);
  }
  for (const auto& chunk : language) chunk->AppendParameters(out);
}

std::vector<MoeLayer*> RankModules::moe_layers() const {
  std::vector<MoeLayer*> out;
  for (const auto& chunk : language) {
    for (MoeLayer* layer : chunk->moe_layers()) out.push_back(layer);
  }
  return out;
}

absl::StatusOr<RankModules> BuildRankModules(kernels::Ops& ops, const MimoModelConfig& model,
                                             const RankModulesOptions& o) {
  const bool whole = o.part == ModelPart::kWhole;
  const std::optional<ModalityEncoderConfig>* configs[2] = {&model.vision, &model.audio};
  const char* names[2] = {"vision", "audio"};
  const int part_encoder = o.part == ModelPart::kVision  ? kVision
                           : o.part == ModelPart::kAudio ? kAudio
                                                         : -1;
  if (part_encoder >= 0 && !configs[part_encoder]->has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("the part is the ", names[part_encoder],
                                                   " encoder, which the model does not have"));
  }
  BuildContext build{.ops = &ops,
                     .config = &model.language.transformer,
                     .seed = o.seed,
                     .groups = o.groups,
                     .describe_only = o.describe_only};
  BuildContext encoder_build = build;
  if (whole) {
    encoder_build.groups.tp = nullptr;
    encoder_build.groups.cp = nullptr;
    encoder_build.groups.tp_cp = nullptr;
  }
  RankModules out;
  for (int x : {kVision, kAudio}) {
    // On ranks of the whole model the encoders belong to the first pipeline stage.
    const bool here = (whole && o.stage.first()) || part_encoder == x;
    if (!configs[x]->has_value() || !here) continue;
    // An encoder's own ranks may be its pipeline stages.
    MIMO_ASSIGN_OR_RETURN(out.encoders[x],
                          ModalityEncoder::Create(encoder_build.Child(names[x]), **configs[x],
                                                  whole ? PipelineStage{} : o.stage));
  }
  if (whole || o.part == ModelPart::kLanguage) {
    if (o.chunks < 1 || (o.chunks > 1 && o.stage.count < 2)) {
      return absl::InvalidArgumentError(
          absl::StrCat("interleaved pipeline stages: ", o.chunks, " model chunks a rank over ",
                       o.stage.count, " stages (needs 1, or more over 2 or more stages)"));
    }
    for (int c = 0; c < o.chunks; ++c) {
      const PipelineStage chunk{.index = c * o.stage.count + o.stage.index,
                                .count = o.chunks * o.stage.count};
      MIMO_ASSIGN_OR_RETURN(std::unique_ptr<LanguageModel> lm,
                            LanguageModel::Create(build.Child("language"), model.language, chunk));
      out.language.push_back(std::move(lm));
    }
  }
  return out;
}

absl::StatusOr<RankDescription> DescribeRank(const v1::JobSpec& spec,
                                             const parallel::RankPlan& plan, int rank,
                                             kernels::DType dtype) {
  if (rank < 0 || rank >= plan.world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is outside the plan's ", plan.world_size()));
  }
  MIMO_ASSIGN_OR_RETURN(const MimoModelConfig model, MimoModelConfigFromSpec(spec, dtype));
  const parallel::RankAssignment& a = plan.rank(rank);
  const parallel::ResolvedModule& m = plan.module_of(rank).config();
  RankDescription out;
  MIMO_ASSIGN_OR_RETURN(out.part, PartOfModule(spec, m.name));
  DescribedGroup tp(a.dense.tp, m.tp), cp(a.dense.cp, m.cp),
      tp_cp(a.dense.tp + m.tp * a.dense.cp, m.tp * m.cp);
  DescribedGroup ep(a.expert ? a.expert->ep : 0, m.is_language ? m.ep : 1);
  DescribedGroup expt_tp(a.expert ? a.expert->expt_tp : 0, m.is_language ? m.etp : 1);
  RankModulesOptions o{
      .part = out.part,
      .groups = {.ep = &ep, .expt_tp = &expt_tp, .tp = &tp, .cp = &cp, .tp_cp = &tp_cp},
      .stage = {.index = a.dense.pp, .count = m.pp},
      .chunks = m.is_language ? m.vpp : 1,
      .describe_only = true};
  // Small buffers the layers make at build time (the MoE layers' bias and load) live here.
  const std::unique_ptr<kernels::Ops> ops = kernels::NewCpuOps();
  MIMO_ASSIGN_OR_RETURN(const RankModules modules, BuildRankModules(*ops, model, o));
  std::vector<Parameter*> params;
  modules.AppendParameters(params);
  for (const Parameter* p : params) out.parameters.push_back(p->spec());
  std::vector<Parameter*> experts;
  for (MoeLayer* layer : modules.moe_layers()) layer->AppendExpertParameters(experts);
  for (const Parameter* p : experts) out.routed.insert(p->name());
  out.saves_dense = a.dense.dp == 0 && a.dense.cp == 0;
  out.saves_experts = a.expert.has_value() ? a.expert->expt_dp == 0 : out.saves_dense;
  for (const MoeLayer* layer : modules.moe_layers()) {
    if (!layer->expert_bias_enabled()) continue;
    out.expert_biases.push_back(layer->expert_bias_name());
    out.experts = layer->expert_bias().numel();
  }
  return out;
}

}  // namespace mimo::worker
