// ValidateJobSpec: one case per violation kind, each reported at its field path (the planner's
// violations mapped to their fields).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "coordinator/spec_validation.h"
#include "tests/coordinator/spec_test_util.h"

namespace mimo::coordinator {
namespace {

using testing::Audio;
using testing::FailingFields;
using testing::Language;
using testing::Moe;
using testing::Opt;
using testing::TpLayoutSpec;
using testing::Train;
using ::testing::UnorderedElementsAreArray;
using testing::ValidSpec;
using testing::Vision;

// One violation kind: a change to the valid spec and the field paths it must be reported at.
struct Case {
  std::string name;
  std::function<void(v1::JobSpec&)> change;
  std::vector<std::string> fields;
};

void PrintTo(const Case& c, std::ostream* out) { *out << c.name; }

class ViolationTest : public ::testing::TestWithParam<Case> {};

TEST_P(ViolationTest, ReportedAtItsField) {
  v1::JobSpec spec = ValidSpec();
  GetParam().change(spec);
  EXPECT_THAT(FailingFields(spec), UnorderedElementsAreArray(GetParam().fields));
}

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

INSTANTIATE_TEST_SUITE_P(
    AllKinds, ViolationTest,
    ::testing::Values(
        // The job.
        Case{"NameEmpty", [](v1::JobSpec& s) { s.set_name(""); }, {"name"}},
        Case{"NameUppercase", [](v1::JobSpec& s) { s.set_name("Mimo"); }, {"name"}},
        Case{"NameUnderscore", [](v1::JobSpec& s) { s.set_name("mimo_8"); }, {"name"}},
        Case{"NameStartsWithDigit", [](v1::JobSpec& s) { s.set_name("8-mimo"); }, {"name"}},
        Case{"NameEndsWithDash", [](v1::JobSpec& s) { s.set_name("mimo-"); }, {"name"}},
        Case{"NameTooLong", [](v1::JobSpec& s) { s.set_name(std::string(64, 'a')); }, {"name"}},
        Case{"KindUnset", [](v1::JobSpec& s) { s.clear_kind(); }, {"kind"}},
        Case{"KindUnknown",
             [](v1::JobSpec& s) { s.set_kind(static_cast<v1::JobSpec::Kind>(9)); },
             {"kind"}},
        Case{"MaxRestartsNegative", [](v1::JobSpec& s) { s.set_max_restarts(-1); },
             {"max_restarts"}},
        Case{"DeadlineZero", [](v1::JobSpec& s) { s.mutable_active_deadline(); },
             {"active_deadline"}},
        Case{"DeadlineNegative",
             [](v1::JobSpec& s) { s.mutable_active_deadline()->set_seconds(-5); },
             {"active_deadline"}},
        // Modules.
        Case{"NoModules", [](v1::JobSpec& s) { s.clear_modules(); }, {"modules"}},
        Case{"NoLanguageModule",  // Module 2 made a (second) vision encoder.
             [](v1::JobSpec& s) { *Language(s).mutable_vision() = Vision(s).vision(); },
             {"modules", "modules[2].vision"}},
        Case{"SecondLanguageModule",
             [](v1::JobSpec& s) {
               *Audio(s).mutable_language() = Language(s).language();
               Language(s).mutable_parallelism()->set_ep(1);
             },
             {"modules[2].language"}},
        Case{"SecondVisionEncoder",
             [](v1::JobSpec& s) { *Audio(s).mutable_vision() = Vision(s).vision(); },
             {"modules[1].vision"}},
        Case{"ModuleWithoutModel", [](v1::JobSpec& s) { Audio(s).clear_audio(); }, {"modules[1]"}},
        Case{"ModuleNameEmpty", [](v1::JobSpec& s) { Audio(s).set_name(""); },
             {"modules[1].name"}},
        Case{"ModuleNameWithComponentSyntax", [](v1::JobSpec& s) { Audio(s).set_name("a=v1,b"); },
             {"modules[1].name"}},
        Case{"ModuleNameTwice", [](v1::JobSpec& s) { Audio(s).set_name("vision"); },
             {"modules[1].name"}},
        // Models.
        Case{"TransformerMissing",
             [](v1::JobSpec& s) { Vision(s).mutable_vision()->clear_transformer(); },
             {"modules[0].vision.transformer"}},
        Case{"NumLayersZero",
             [](v1::JobSpec& s) {
               Vision(s).mutable_vision()->mutable_transformer()->set_num_layers(0);
             },
             {"modules[0].vision.transformer.num_layers"}},
        Case{"FfnHiddenSizeNegative",
             [](v1::JobSpec& s) {
               Audio(s).mutable_audio()->mutable_transformer()->set_ffn_hidden_size(-1);
             },
             {"modules[1].audio.transformer.ffn_hidden_size"}},
        Case{"HiddenNotDivisibleByHeads",
             [](v1::JobSpec& s) {
               Vision(s).mutable_vision()->mutable_transformer()->set_hidden_size(66);
             },
             {"modules[0].vision.transformer.hidden_size"}},
        Case{"HeadsNotDivisibleByQueryGroups",
             [](v1::JobSpec& s) {
               Audio(s).mutable_audio()->mutable_transformer()->set_num_query_groups(3);
             },
             {"modules[1].audio.transformer.num_query_groups"}},
        Case{"TpDoesNotDivideHeads",
             [](v1::JobSpec& s) {
               s = TpLayoutSpec();
               Vision(s).mutable_vision()->mutable_transformer()->set_num_attention_heads(1);
             },
             {"modules[0].parallelism.tp"}},
        Case{"TpDoesNotDivideQueryGroups",
             [](v1::JobSpec& s) {
               s = TpLayoutSpec();
               Language(s).mutable_language()->mutable_transformer()->set_num_query_groups(1);
             },
             {"modules[2].parallelism.tp"}},
        Case{"ImageNotMultipleOfPatch",
             [](v1::JobSpec& s) { Vision(s).mutable_vision()->set_patch_size(5); },
             {"modules[0].vision.image_size"}},
        Case{"PatchSizeZero", [](v1::JobSpec& s) { Vision(s).mutable_vision()->set_patch_size(0); },
             {"modules[0].vision.patch_size"}},
        Case{"NumChannelsZero",
             [](v1::JobSpec& s) { Vision(s).mutable_vision()->set_num_channels(0); },
             {"modules[0].vision.num_channels"}},
        Case{"MaxFramesNotMultipleOfFramesPerToken",
             [](v1::JobSpec& s) { Audio(s).mutable_audio()->set_frames_per_token(3); },
             {"modules[1].audio.max_frames"}},
        Case{"NumMelBinsZero", [](v1::JobSpec& s) { Audio(s).mutable_audio()->set_num_mel_bins(0); },
             {"modules[1].audio.num_mel_bins"}},
        Case{"ProjectorKindUnset",
             [](v1::JobSpec& s) { Vision(s).mutable_vision()->clear_projector(); },
             {"modules[0].vision.projector.kind"}},
        Case{"MlpProjectorWithoutHiddenSize",
             [](v1::JobSpec& s) {
               Audio(s).mutable_audio()->mutable_projector()->set_kind(v1::Projector::KIND_MLP);
             },
             {"modules[1].audio.projector.hidden_size"}},
        Case{"VocabSizeZero",
             [](v1::JobSpec& s) { Language(s).mutable_language()->set_vocab_size(0); },
             {"modules[2].language.vocab_size"}},
        Case{"MaxSequenceLengthZero",
             [](v1::JobSpec& s) { Language(s).mutable_language()->set_max_sequence_length(0); },
             {"modules[2].language.max_sequence_length"}},
        // MoE.
        Case{"NumExpertsNegative", [](v1::JobSpec& s) { Moe(s).set_num_experts(-4); },
             {"modules[2].language.moe.num_experts"}},
        Case{"TopKZero", [](v1::JobSpec& s) { Moe(s).set_top_k(0); },
             {"modules[2].language.moe.top_k"}},
        Case{"TopKAboveNumExperts", [](v1::JobSpec& s) { Moe(s).set_top_k(5); },
             {"modules[2].language.moe.top_k"}},
        Case{"RouterScoreUnset", [](v1::JobSpec& s) { Moe(s).clear_router_score(); },
             {"modules[2].language.moe.router_score"}},
        Case{"AuxLossNegative", [](v1::JobSpec& s) { Moe(s).set_aux_loss_coeff(-0.1); },
             {"modules[2].language.moe.aux_loss_coeff"}},
        Case{"ZLossNan", [](v1::JobSpec& s) { Moe(s).set_z_loss_coeff(kNan); },
             {"modules[2].language.moe.z_loss_coeff"}},
        Case{"CapacityFactorNegative", [](v1::JobSpec& s) { Moe(s).set_capacity_factor(-1); },
             {"modules[2].language.moe.capacity_factor"}},
        Case{"SharedExpertsWithoutWidth", [](v1::JobSpec& s) { Moe(s).set_num_shared_experts(1); },
             {"modules[2].language.moe.shared_expert_ffn_hidden_size"}},
        Case{"NumExpertsAbove1024", [](v1::JobSpec& s) { Moe(s).set_num_experts(2048); },
             {"modules[2].language.moe.num_experts"}},
        Case{"TopKAbove32",
             [](v1::JobSpec& s) {
               Moe(s).set_num_experts(64);
               Moe(s).set_top_k(33);
             },
             {"modules[2].language.moe.top_k"}},
        Case{"TopKScalingFactorNegative",
             [](v1::JobSpec& s) { Moe(s).set_top_k_scaling_factor(-1); },
             {"modules[2].language.moe.top_k_scaling_factor"}},
        Case{"TopKScalingFactorAbove1e6",
             [](v1::JobSpec& s) { Moe(s).set_top_k_scaling_factor(1e300); },
             {"modules[2].language.moe.top_k_scaling_factor"}},
        Case{"ExpertBiasUpdateRateZeroAsAFloat",
             [](v1::JobSpec& s) { Moe(s).set_expert_bias_update_rate(1e-50); },
             {"modules[2].language.moe.expert_bias_update_rate"}},
        Case{"CapacityFactorAbove1e6", [](v1::JobSpec& s) { Moe(s).set_capacity_factor(2e6); },
             {"modules[2].language.moe.capacity_factor"}},
        Case{"ExpertBiasUpdateRateNan",
             [](v1::JobSpec& s) { Moe(s).set_expert_bias_update_rate(kNan); },
             {"modules[2].language.moe.expert_bias_update_rate"}},
        Case{"DropPolicyUnknown",
             [](v1::JobSpec& s) { Moe(s).set_drop_policy(static_cast<v1::MoE::DropPolicy>(9)); },
             {"modules[2].language.moe.drop_policy"}},
        Case{"GroupTopKWithoutGroups", [](v1::JobSpec& s) { Moe(s).set_group_top_k(1); },
             {"modules[2].language.moe.group_top_k"}},
        Case{"NumGroupsNotDividingExperts",
             [](v1::JobSpec& s) {
               Moe(s).set_num_groups(3);
               Moe(s).set_group_top_k(1);
             },
             {"modules[2].language.moe.num_groups"}},
        Case{"GroupTopKNotDividingTopK",
             [](v1::JobSpec& s) {
               Moe(s).set_num_groups(4);
               Moe(s).set_group_top_k(3);
             },
             {"modules[2].language.moe.group_top_k"}},
        Case{"GroupsTooFewForTopK",  // 1 group of 1 expert (4 / 4) for top_k 2.
             [](v1::JobSpec& s) {
               Moe(s).set_num_groups(4);
               Moe(s).set_group_top_k(1);
             },
             {"modules[2].language.moe.group_top_k"}},
        Case{"PerSequenceAuxLossWithTp",
             [](v1::JobSpec& s) {
               Moe(s).set_per_sequence_aux_loss(true);
               Language(s).mutable_parallelism()->set_tp(2);
               Language(s).mutable_parallelism()->set_dp(2);
               Language(s).mutable_parallelism()->set_ep(1);
             },
             {"modules[2].language.moe.per_sequence_aux_loss"}},
        Case{"MoeSettingsWithoutExperts",  // A dense model would train, the settings ignored.
             [](v1::JobSpec& s) {
               Moe(s).set_num_experts(0);
               Language(s).mutable_parallelism()->set_ep(1);
             },
             {"modules[2].language.moe.top_k", "modules[2].language.moe.router_score",
              "modules[2].language.moe.aux_loss_coeff"}},
        Case{"OddLanguageHeadWidth",  // Rotary embeddings rotate pairs of a head's channels.
             [](v1::JobSpec& s) {
               auto& t = *Language(s).mutable_language()->mutable_transformer();
               t.set_hidden_size(60);
               t.set_ffn_hidden_size(128);
             },
             {"modules[2].language.transformer.hidden_size"}},
        Case{"AuxLossInfiniteAsAFloat", [](v1::JobSpec& s) { Moe(s).set_aux_loss_coeff(1e39); },
             {"modules[2].language.moe.aux_loss_coeff"}},
        Case{"ZLossZeroAsAFloat", [](v1::JobSpec& s) { Moe(s).set_z_loss_coeff(1e-50); },
             {"modules[2].language.moe.z_loss_coeff"}},
        Case{"EtpDoesNotDivideExpertWidth",
             [](v1::JobSpec& s) {
               Language(s).mutable_parallelism()->set_etp(2);
               Moe(s).set_ffn_hidden_size(3);
             },
             {"modules[2].parallelism.etp"}},
        Case{"EtpDoesNotDivideTheTransformersWidth",  // The experts' width when moe's is 0.
             [](v1::JobSpec& s) {
               Language(s).mutable_parallelism()->set_etp(2);
               Language(s).mutable_language()->mutable_transformer()->set_ffn_hidden_size(129);
             },
             {"modules[2].parallelism.etp"}},
        Case{"TpDoesNotDivideSharedExpertWidth",
             [](v1::JobSpec& s) {
               Language(s).mutable_parallelism()->set_tp(2);
               Language(s).mutable_parallelism()->set_dp(2);
               Language(s).mutable_parallelism()->set_ep(1);
               Moe(s).set_num_shared_experts(1);
               Moe(s).set_shared_expert_ffn_hidden_size(3);
             },
             {"modules[2].language.moe.shared_expert_ffn_hidden_size"}},
        Case{"EpDoesNotDivideExperts", [](v1::JobSpec& s) { Moe(s).set_num_experts(3); },
             {"modules[2].parallelism.ep"}},
        Case{"EpWithoutExperts", [](v1::JobSpec& s) { Moe(s) = v1::MoE(); },
             {"modules[2].parallelism.ep"}},
        // Training and data.
        Case{"TrainingMissing", [](v1::JobSpec& s) { s.clear_training(); }, {"training"}},
        Case{"StepsZero", [](v1::JobSpec& s) { Train(s).set_steps(0); }, {"training.steps"}},
        Case{"GlobalBatchPastTheLargest",  // Workers lay out a step's samples up front.
             [](v1::JobSpec& s) { Train(s).set_global_batch_size((1 << 24) + 8); },
             {"training.global_batch_size"}},
        Case{"MicroBatchOfMoreTokensThanInt32",
             [](v1::JobSpec& s) {
               Train(s).set_micro_batch_size(1 << 24);
               Train(s).set_global_batch_size(1 << 24);
             },
             {"training.micro_batch_size", "training.global_batch_size"}},
        Case{"MicroBatchZero", [](v1::JobSpec& s) { Train(s).set_micro_batch_size(0); },
             {"training.micro_batch_size"}},
        Case{"GlobalBatchZero", [](v1::JobSpec& s) { Train(s).set_global_batch_size(0); },
             {"training.global_batch_size"}},
        Case{"GlobalBatchNotDivisible", [](v1::JobSpec& s) { Train(s).set_global_batch_size(6); },
             {"training.global_batch_size"}},
        Case{"SeqLengthZero", [](v1::JobSpec& s) { Train(s).set_seq_length(0); },
             {"training.seq_length"}},
        Case{"SeqLengthAboveMax", [](v1::JobSpec& s) { Train(s).set_seq_length(257); },
             {"training.seq_length"}},
        Case{"PrecisionUnset", [](v1::JobSpec& s) { Train(s).clear_precision(); },
             {"training.precision"}},
        Case{"SeedNegative", [](v1::JobSpec& s) { Train(s).set_seed(-1); }, {"training.seed"}},
        Case{"LogIntervalNegative", [](v1::JobSpec& s) { Train(s).set_log_interval(-1); },
             {"training.log_interval"}},
        Case{"LrZero", [](v1::JobSpec& s) { Opt(s).set_lr(0); }, {"training.optimizer.lr"}},
        Case{"LrInfinite", [](v1::JobSpec& s) { Opt(s).set_lr(kInf); }, {"training.optimizer.lr"}},
        Case{"Beta1One", [](v1::JobSpec& s) { Opt(s).set_adam_beta1(1.0); },
             {"training.optimizer.adam_beta1"}},
        Case{"Beta2Negative", [](v1::JobSpec& s) { Opt(s).set_adam_beta2(-0.1); },
             {"training.optimizer.adam_beta2"}},
        Case{"EpsZero", [](v1::JobSpec& s) { Opt(s).set_adam_eps(0); },
             {"training.optimizer.adam_eps"}},
        Case{"ClipGradNegative", [](v1::JobSpec& s) { Opt(s).set_clip_grad(-1); },
             {"training.optimizer.clip_grad"}},
        // Workers read the optimizer's settings as floats.
        Case{"LrInfiniteAsAFloat", [](v1::JobSpec& s) { Opt(s).set_lr(1e300); },
             {"training.optimizer.lr"}},
        Case{"LrZeroAsAFloat", [](v1::JobSpec& s) { Opt(s).set_lr(1e-50); },
             {"training.optimizer.lr"}},
        Case{"MinLrAboveLr", [](v1::JobSpec& s) { Opt(s).set_min_lr(1.0); },
             {"training.optimizer.min_lr"}},
        Case{"WeightDecayInfiniteAsAFloat", [](v1::JobSpec& s) { Opt(s).set_weight_decay(1e300); },
             {"training.optimizer.weight_decay"}},
        Case{"Beta2OneAsAFloat", [](v1::JobSpec& s) { Opt(s).set_adam_beta2(0.9999999999); },
             {"training.optimizer.adam_beta2"}},
        Case{"EpsZeroAsAFloat", [](v1::JobSpec& s) { Opt(s).set_adam_eps(1e-50); },
             {"training.optimizer.adam_eps"}},
        Case{"WarmupNegative", [](v1::JobSpec& s) { Opt(s).set_warmup_steps(-1); },
             {"training.optimizer.warmup_steps"}},
        Case{"DataMissing", [](v1::JobSpec& s) { s.clear_data(); }, {"data"}},
        Case{"WebdatasetWithoutShards",
             [](v1::JobSpec& s) { s.mutable_data()->mutable_webdataset(); },
             {"data.webdataset.shards"}},
        Case{"WebdatasetEmptyShard",
             [](v1::JobSpec& s) {
               s.mutable_data()->mutable_webdataset()->add_shards("/data/a.tar");
               s.mutable_data()->mutable_webdataset()->add_shards("");
             },
             {"data.webdataset.shards[1]"}},
        Case{"WebdatasetRelativePaths",
             [](v1::JobSpec& s) {
               s.mutable_data()->mutable_webdataset()->add_shards("data/a-{0..3}.tar");
             },
             {"data.webdataset.shards[0]"}},
        Case{"WebdatasetUnbalancedPattern",  // Every worker's expansion would refuse it.
             [](v1::JobSpec& s) {
               s.mutable_data()->mutable_webdataset()->add_shards("/data/a.tar");
               s.mutable_data()->mutable_webdataset()->add_shards("/data/{1..3");
             },
             {"data.webdataset.shards[1]"}},
        Case{"WebdatasetPatternOfTooManyShards",
             [](v1::JobSpec& s) {
               s.mutable_data()->mutable_webdataset()->add_shards("/data/{0..99999999}.tar");
             },
             {"data.webdataset.shards[0]"}},
        Case{"OutputDirLongerThanAPath",
             [](v1::JobSpec& s) { s.set_output_dir("/" + std::string(5000, 'a')); },
             {"output_dir"}},
        Case{"WebdatasetRelativeTokenizerModel",
             [](v1::JobSpec& s) {
               s.mutable_data()->mutable_webdataset()->add_shards("/data/a.tar");
               s.mutable_data()->mutable_webdataset()->set_tokenizer_model("spm.model");
             },
             {"data.webdataset.tokenizer_model"}},
        // What KIND_TRAIN does not do yet.
        Case{"TrainingWithATensorParallelEncoderOnGpusOverlappingTheReduction",
             [](v1::JobSpec& s) {
               Vision(s).mutable_parallelism()->set_tp(2);
               Vision(s).mutable_parallelism()->set_dp(1);
               s.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
               Opt(s).set_overlap_grad_reduce(true);
             },
             {"training.optimizer.overlap_grad_reduce"}},
        Case{"TrainingWithExpertParallelismOnGpusOverlappingTheReduction",
             [](v1::JobSpec& s) {
               // The example's language module: dp 4, ep 2.
               s.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
               Opt(s).set_overlap_grad_reduce(true);
             },
             {"training.optimizer.overlap_grad_reduce"}},
        Case{"TrainingWithTensorParallelismOnGpusOverlappingTheReduction",
             [](v1::JobSpec& s) {
               Language(s).mutable_language()->clear_moe();
               Language(s).mutable_parallelism()->set_tp(2);
               Language(s).mutable_parallelism()->set_dp(2);
               Language(s).mutable_parallelism()->set_ep(1);
               Train(s).set_global_batch_size(4);
               s.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
               Opt(s).set_overlap_grad_reduce(true);
             },
             {"training.optimizer.overlap_grad_reduce"}},
        Case{"TrainingWithAVocabularyTensorParallelismDoesNotSplit",
             [](v1::JobSpec& s) {
               Language(s).mutable_language()->clear_moe();
               Language(s).mutable_language()->set_vocab_size(257);
               Language(s).mutable_parallelism()->set_tp(2);
               Language(s).mutable_parallelism()->set_dp(2);
               Language(s).mutable_parallelism()->set_ep(1);
               Train(s).set_global_batch_size(4);
             },
             {"modules[2].parallelism.tp"}},
        Case{"TrainingWithPipelineStagesOfUnequalLayers",
             [](v1::JobSpec& s) {
               Language(s).mutable_language()->mutable_transformer()->set_num_layers(3);
               Language(s).mutable_parallelism()->set_pp(2);
               Language(s).mutable_parallelism()->set_dp(2);
               Train(s).set_global_batch_size(4);
             },
             {"modules[2].parallelism.pp"}},
        Case{"TrainingWithEncoderStagesOfUnequalLayers",
             [](v1::JobSpec& s) {
               Vision(s).mutable_vision()->mutable_transformer()->set_num_layers(3);
               Vision(s).mutable_parallelism()->set_pp(2);
               Vision(s).mutable_parallelism()->set_dp(1);
             },
             {"modules[0].parallelism.pp"}},
        Case{"TrainingWithAPipelineParallelEncoderOnGpusOverlappingTheReduction",
             [](v1::JobSpec& s) {
               Vision(s).mutable_parallelism()->set_pp(2);
               Vision(s).mutable_parallelism()->set_dp(1);
               s.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
               Opt(s).set_overlap_grad_reduce(true);
             },
             {"training.optimizer.overlap_grad_reduce"}},
        Case{"TrainingWithPipelineParallelismOnGpusOverlappingTheReduction",
             [](v1::JobSpec& s) {
               Language(s).mutable_parallelism()->set_pp(2);
               Language(s).mutable_parallelism()->set_dp(2);
               Train(s).set_global_batch_size(4);
               s.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
               Opt(s).set_overlap_grad_reduce(true);
             },
             {"training.optimizer.overlap_grad_reduce"}},
        Case{"TrainingWithAContextParallelEncoderOfTooFewHeads",
             [](v1::JobSpec& s) {
               // tp 2 x cp 2 members, 2 heads: all-to-all attention gives each member whole heads.
               Vision(s).mutable_vision()->mutable_transformer()->set_num_attention_heads(2);
               Vision(s).mutable_parallelism()->set_tp(2);
               Vision(s).mutable_parallelism()->set_cp(2);
               Vision(s).mutable_parallelism()->set_dp(1);
               Audio(s).mutable_parallelism()->set_rank_offset(4);
               Language(s).mutable_parallelism()->set_rank_offset(6);
               s.mutable_resources()->set_workers(10);
             },
             {"modules[0].parallelism.cp"}},
        Case{"TrainingWithContextParallelismOnGpusOverlappingTheReduction",
             [](v1::JobSpec& s) {
               Language(s).mutable_parallelism()->set_cp(2);
               Language(s).mutable_parallelism()->set_dp(2);
               Train(s).set_global_batch_size(4);
               s.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
               Opt(s).set_overlap_grad_reduce(true);
             },
             {"training.optimizer.overlap_grad_reduce"}},
        Case{"TrainingEncoderDpBeyondTheSamples",
             [](v1::JobSpec& s) {
               // Vision dp 8 on ranks 0-7 feeds language dp 4 with 4 samples a micro-batch.
               Vision(s).mutable_parallelism()->set_dp(8);
               Audio(s).mutable_parallelism()->set_rank_offset(8);
               Language(s).mutable_parallelism()->set_rank_offset(10);
               s.mutable_resources()->set_workers(14);
               Train(s).set_micro_batch_size(1);
               Train(s).set_global_batch_size(4);
             },
             {"modules[0].parallelism.dp"}},
        Case{"TrainingWithTwoChannelImages",
             [](v1::JobSpec& s) { Vision(s).mutable_vision()->set_num_channels(2); },
             {"modules[0].vision.num_channels"}},
        Case{"TrainingWithAVocabularyBelowTheBytes",
             [](v1::JobSpec& s) { Language(s).mutable_language()->set_vocab_size(128); },
             {"modules[2].language.vocab_size"}},
        Case{"TrainingSeqLengthBelowThePlaceholders",
             // 2 + 16 image tokens + 16 audio tokens = 34.
             [](v1::JobSpec& s) { Train(s).set_seq_length(33); },
             {"training.seq_length"}},
        Case{"TrainingWithoutPacking", [](v1::JobSpec& s) { Train(s).set_packing(false); },
             {"training.packing"}},
        Case{"TrainingOutputDirRelative", [](v1::JobSpec& s) { s.set_output_dir("runs/a"); },
             {"output_dir"}},
        Case{"CheckpointDirRelative",
             [](v1::JobSpec& s) { s.mutable_checkpointing()->set_dir("ckpt"); },
             {"checkpointing.dir"}},
        Case{"ResumeFromARelativeFolder",
             [](v1::JobSpec& s) { s.mutable_checkpointing()->set_resume_from("ckpt/iter_0000010"); },
             {"checkpointing.resume_from"}},
        Case{"ResumeFromLatestWithoutADir",
             [](v1::JobSpec& s) { s.mutable_checkpointing()->set_resume_from("latest"); },
             {"checkpointing.resume_from"}},
        Case{"CheckpointsOfASelftest",
             [](v1::JobSpec& s) {
               s.set_kind(v1::JobSpec::KIND_SELFTEST);
               s.clear_training();
               s.clear_data();
               s.mutable_checkpointing()->set_dir("/tmp/ckpt");
             },
             {"checkpointing"}},
        Case{"SavesWithoutADir",
             [](v1::JobSpec& s) { s.mutable_checkpointing()->set_interval_steps(10); },
             {"checkpointing.dir"}},
        Case{"AsynchronousSavesWithoutADir",
             [](v1::JobSpec& s) { s.mutable_checkpointing()->set_async_save(true); },
             {"checkpointing.async_save"}},
        Case{"TrainingWithDataParallelRandomInit",
             [](v1::JobSpec& s) { Train(s).set_data_parallel_random_init(true); },
             {"training.data_parallel_random_init"}},
        // Resources and checkpoints.
        Case{"WorkersZero", [](v1::JobSpec& s) { s.mutable_resources()->set_workers(0); },
             {"resources.workers"}},
        Case{"SelftestIterationsNegative",
             [](v1::JobSpec& s) {
               s.set_kind(v1::JobSpec::KIND_SELFTEST);
               s.mutable_selftest()->set_iterations(-1);
             },
             {"selftest.iterations"}},
        Case{"SelftestSettingsOnATrainingJob",
             [](v1::JobSpec& s) { s.mutable_selftest()->set_iterations(3); },
             {"selftest"}},
        Case{"WorkersBeyondTheJobLimit",
             [](v1::JobSpec& s) { s.mutable_resources()->set_workers(kMaxJobWorkers + 1); },
             {"resources.workers"}},
        Case{"DeviceUnset", [](v1::JobSpec& s) { s.mutable_resources()->clear_device(); },
             {"resources.device"}},
        Case{"CheckpointIntervalNegative",
             [](v1::JobSpec& s) { s.mutable_checkpointing()->set_interval_steps(-1); },
             {"checkpointing.interval_steps"}},
        Case{"KeepLastNegative",
             [](v1::JobSpec& s) { s.mutable_checkpointing()->set_keep_last(-1); },
             {"checkpointing.keep_last"}},
        // The planner's, mapped to their fields.
        Case{"PlannerTpNegative",
             [](v1::JobSpec& s) { Vision(s).mutable_parallelism()->set_tp(-2); },
             {"modules[0].parallelism.tp"}},
        Case{"PlannerEncoderEtp",
             [](v1::JobSpec& s) { Audio(s).mutable_parallelism()->set_etp(2); },
             {"modules[1].parallelism.etp"}},
        Case{"PlannerDpPairs",
             [](v1::JobSpec& s) {
               // vision dp=3 on ranks 0-2, audio dp=2 on 3-4, language dp=4 on 5-8: the
               // vision and language dp do not nest (vision and audio need not).
               Vision(s).mutable_parallelism()->set_dp(3);
               Audio(s).mutable_parallelism()->set_rank_offset(3);
               Language(s).mutable_parallelism()->set_rank_offset(5);
               s.mutable_resources()->set_workers(9);
             },
             {"modules[2].parallelism.dp"}},
        Case{"PlannerWorkersTooMany",
             [](v1::JobSpec& s) { s.mutable_resources()->set_workers(1 << 25); },
             {"resources.workers"}}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
}  // namespace mimo::coordinator
