// ValidateJobSpec: one test per violation kind (by field path), planner violations mapped to
// their fields; ToLayoutSpec.
#include "coordinator/spec_validation.h"

#include <gmock/gmock.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "tests/coordinator/spec_test_util.h"

namespace mimo::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using testing::TpLayoutSpec;
using ::testing::UnorderedElementsAre;
using ::testing::UnorderedElementsAreArray;
using testing::ValidSpec;

std::vector<std::string> Fields(const std::vector<FieldViolation>& violations) {
  std::vector<std::string> fields;
  for (const FieldViolation& v : violations) fields.push_back(v.field);
  return fields;
}

// The violations' field paths of a spec that must fail, checking the status on the way.
std::vector<std::string> FailingFields(const v1::JobSpec& spec,
                                       std::vector<FieldViolation>* out = nullptr) {
  std::vector<FieldViolation> violations;
  absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, &violations);
  EXPECT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  // The message: "invalid job spec (N problems)", then "field: description", one per line, in
  // order.
  std::vector<std::string> lines = absl::StrSplit(plan.status().message(), '\n');
  EXPECT_EQ(lines.size(), violations.size() + 1);
  EXPECT_EQ(lines[0], absl::StrCat("invalid job spec (", violations.size(), " problem",
                                   violations.size() == 1 ? ")" : "s)"));
  lines.erase(lines.begin());
  for (size_t i = 0; i < std::min(lines.size(), violations.size()); ++i) {
    EXPECT_EQ(lines[i], violations[i].field + ": " + violations[i].description);
    EXPECT_FALSE(violations[i].description.empty()) << violations[i].field;
  }
  if (out != nullptr) *out = violations;
  return Fields(violations);
}

v1::Module& Vision(v1::JobSpec& s) { return *s.mutable_modules(0); }
v1::Module& Audio(v1::JobSpec& s) { return *s.mutable_modules(1); }
v1::Module& Language(v1::JobSpec& s) { return *s.mutable_modules(2); }
v1::MoE& Moe(v1::JobSpec& s) { return *Language(s).mutable_language()->mutable_moe(); }
v1::Training& Train(v1::JobSpec& s) { return *s.mutable_training(); }

// KIND_TRAIN runs a language module tensor parallel, dense or MoE (here tp 2 x dp 2, with the
// distributed optimizer; the MoE layers with ep 2).
TEST(ValidateJobSpecTest, TrainingAcceptsATensorParallelLanguageModule) {
  for (const bool moe : {false, true}) {
    SCOPED_TRACE(moe ? "MoE" : "dense");
    v1::JobSpec spec = ValidSpec();
    v1::Module& language = Language(spec);
    if (!moe) language.mutable_language()->clear_moe();
    language.mutable_parallelism()->set_tp(2);
    language.mutable_parallelism()->set_dp(2);
    language.mutable_parallelism()->set_ep(moe ? 2 : 1);
    Train(spec).set_global_batch_size(4);
    Train(spec).mutable_optimizer()->set_use_distributed_optimizer(true);
    std::vector<FieldViolation> violations;
    const absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, &violations);
    EXPECT_TRUE(plan.ok()) << plan.status();
    for (const FieldViolation& v : violations) ADD_FAILURE() << v.field << ": " << v.description;
  }
}

// KIND_TRAIN runs an encoder tensor parallel (vision tp 2 on ranks 0-1).
TEST(ValidateJobSpecTest, TrainingAcceptsATensorParallelEncoder) {
  v1::JobSpec spec = ValidSpec();
  Vision(spec).mutable_parallelism()->set_tp(2);
  Vision(spec).mutable_parallelism()->set_dp(1);
  std::vector<FieldViolation> violations;
  const absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, &violations);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const FieldViolation& v : violations) ADD_FAILURE() << v.field << ": " << v.description;
}

// KIND_TRAIN runs the language module pipeline parallel (here pp 2 x dp 2 x ep 2: one of the two
// layers a stage).
TEST(ValidateJobSpecTest, TrainingAcceptsAPipelineParallelLanguageModule) {
  v1::JobSpec spec = ValidSpec();
  Language(spec).mutable_parallelism()->set_pp(2);
  Language(spec).mutable_parallelism()->set_dp(2);
  Train(spec).set_global_batch_size(4);
  std::vector<FieldViolation> violations;
  const absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, &violations);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const FieldViolation& v : violations) ADD_FAILURE() << v.field << ": " << v.description;
  EXPECT_EQ(plan->language().config().pp, 2);
}

// KIND_TRAIN runs an encoder pipeline parallel (vision pp 2 on ranks 0-1: one layer a stage).
TEST(ValidateJobSpecTest, TrainingAcceptsAPipelineParallelEncoder) {
  v1::JobSpec spec = ValidSpec();
  Vision(spec).mutable_parallelism()->set_pp(2);
  Vision(spec).mutable_parallelism()->set_dp(1);
  std::vector<FieldViolation> violations;
  const absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, &violations);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const FieldViolation& v : violations) ADD_FAILURE() << v.field << ": " << v.description;
}

// KIND_TRAIN jobs save checkpoints and resume (from the latest under dir, or a folder).
TEST(ValidateJobSpecTest, TrainingAcceptsCheckpointing) {
  for (const std::string resume : {"", "latest", "/ckpt/iter_0000100"}) {
    v1::JobSpec spec = ValidSpec();
    spec.mutable_checkpointing()->set_dir("/ckpt");
    spec.mutable_checkpointing()->set_interval_steps(100);
    spec.mutable_checkpointing()->set_keep_last(2);
    spec.mutable_checkpointing()->set_resume_from(resume);
    std::vector<FieldViolation> violations;
    EXPECT_TRUE(ValidateJobSpec(spec, &violations).ok()) << resume;
    for (const FieldViolation& v : violations) ADD_FAILURE() << v.field << ": " << v.description;
  }
}

// KIND_TRAIN runs the language module in interleaved pipeline stages (pp 2 x vpp 2 over 4
// layers, 2 micro-batches a replica); the plan carries vpp to the workers.
TEST(ValidateJobSpecTest, TrainingAcceptsInterleavedPipelineStages) {
  v1::JobSpec spec = ValidSpec();
  Language(spec).mutable_language()->mutable_transformer()->set_num_layers(4);
  Language(spec).mutable_parallelism()->set_pp(2);
  Language(spec).mutable_parallelism()->set_vpp(2);
  Language(spec).mutable_parallelism()->set_dp(2);
  Train(spec).set_global_batch_size(8);
  std::vector<FieldViolation> violations;
  const absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, &violations);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const FieldViolation& v : violations) ADD_FAILURE() << v.field << ": " << v.description;
  EXPECT_EQ(plan->language().config().vpp, 2);
  // 3 layers a chunk... 4 layers in 6 chunks; 1 micro-batch a replica for 2 stages.
  Language(spec).mutable_parallelism()->set_vpp(3);
  EXPECT_FALSE(ValidateJobSpec(spec, &violations).ok());
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_EQ(violations[0].field, "modules[2].parallelism.vpp");
  EXPECT_NE(violations[0].description.find("does not divide num_layers 4"), std::string::npos);
  Language(spec).mutable_parallelism()->set_vpp(2);
  Train(spec).set_global_batch_size(4);
  EXPECT_FALSE(ValidateJobSpec(spec, &violations).ok());
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_NE(violations[0].description.find("groups of pp=2"), std::string::npos)
      << violations[0].description;
}

// KIND_TRAIN runs an encoder context parallel (vision cp 2 on ranks 0-1: 4 heads, 2 a member).
TEST(ValidateJobSpecTest, TrainingAcceptsAContextParallelEncoder) {
  v1::JobSpec spec = ValidSpec();
  Vision(spec).mutable_parallelism()->set_cp(2);
  Vision(spec).mutable_parallelism()->set_dp(1);
  std::vector<FieldViolation> violations;
  const absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, &violations);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const FieldViolation& v : violations) ADD_FAILURE() << v.field << ": " << v.description;
}

// KIND_TRAIN runs the language module context parallel (here cp 2 x dp 2 x ep 2, MoE).
TEST(ValidateJobSpecTest, TrainingAcceptsAContextParallelLanguageModule) {
  v1::JobSpec spec = ValidSpec();
  Language(spec).mutable_parallelism()->set_cp(2);
  Language(spec).mutable_parallelism()->set_dp(2);
  Train(spec).set_global_batch_size(4);
  std::vector<FieldViolation> violations;
  const absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, &violations);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const FieldViolation& v : violations) ADD_FAILURE() << v.field << ": " << v.description;
  EXPECT_EQ(plan->language().config().cp, 2);
}

v1::Optimizer& Opt(v1::JobSpec& s) { return *s.mutable_training()->mutable_optimizer(); }

TEST(ValidateJobSpecTest, ValidSpecPasses) {
  std::vector<FieldViolation> violations = {{"stale", "left from an earlier call"}};
  absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(ValidSpec(), &violations);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(violations, IsEmpty());
  EXPECT_EQ(plan->world_size(), 8);
  EXPECT_EQ(plan->language().config().name, "language");
}

TEST(ValidateJobSpecTest, NullViolationsIsAllowed) {
  EXPECT_TRUE(ValidateJobSpec(ValidSpec(), nullptr).ok());
  v1::JobSpec spec = ValidSpec();
  spec.set_name("");
  EXPECT_EQ(ValidateJobSpec(spec, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidateJobSpecTest, LongestJobNamePasses) {
  v1::JobSpec spec = ValidSpec();
  spec.set_name("a" + std::string(61, '-') + "0");
  ASSERT_EQ(spec.name().size(), 63u);
  EXPECT_TRUE(ValidateJobSpec(spec, nullptr).ok());
}

TEST(ValidateJobSpecTest, TrainingTakesExpertTensorParallelism) {
  v1::JobSpec spec = ValidSpec();
  Language(spec).mutable_parallelism()->set_etp(2);  // expt_tp 2 x ep 2 over language dp 4.
  absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->language().config().expt_dp(), 1);
}

TEST(ValidateJobSpecTest, TrainingReadsWebDatasetShards) {
  v1::JobSpec spec = ValidSpec();
  spec.mutable_data()->mutable_webdataset()->add_shards("/data/train-{000..015}.tar");
  std::vector<FieldViolation> violations;
  EXPECT_TRUE(ValidateJobSpec(spec, &violations).ok());
  for (const FieldViolation& v : violations) ADD_FAILURE() << v.field << ": " << v.description;
}

// A SentencePiece model replaces the byte-level tokenizer, and its 256-entry minimum with it (the
// workers check the model's size against vocab_size when they load it).
TEST(ValidateJobSpecTest, TrainingWithASentencePieceModel) {
  v1::JobSpec spec = ValidSpec();
  spec.mutable_data()->mutable_webdataset()->add_shards("/data/train-{000..015}.tar");
  spec.mutable_data()->mutable_webdataset()->set_tokenizer_model("/data/spm.model");
  Language(spec).mutable_language()->set_vocab_size(128);
  std::vector<FieldViolation> violations;
  EXPECT_TRUE(ValidateJobSpec(spec, &violations).ok());
  for (const FieldViolation& v : violations) ADD_FAILURE() << v.field << ": " << v.description;
}

TEST(ValidateJobSpecTest, SelftestNeedsNoTrainingOrData) {
  v1::JobSpec spec = ValidSpec();
  spec.set_kind(v1::JobSpec::KIND_SELFTEST);
  spec.clear_training();
  spec.clear_data();
  absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->seed(), 1234);  // Seed 0 means Megatron's default.
}

TEST(ValidateJobSpecTest, EncoderSizesOfZeroMeanOne) {
  v1::JobSpec spec = ValidSpec();
  v1::Parallelism* p = Audio(spec).mutable_parallelism();
  p->set_tp(0);
  p->set_cp(0);
  p->set_pp(0);
  p->set_ep(0);
  p->set_etp(0);
  absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const parallel::ResolvedModule& audio = plan->modules()[1].config();
  EXPECT_EQ(audio.tp * audio.cp * audio.pp * audio.ep * audio.etp, 1);
}

TEST(ValidateJobSpecTest, DerivedLanguageDpDividesTheGlobalBatch) {
  // A language-only job: dp is derived from the 4 workers, so micro 4 * dp 4 = 16 does not
  // divide the global batch of 8.
  v1::JobSpec spec = ValidSpec();
  v1::Module language = Language(spec);
  language.clear_parallelism();
  language.mutable_language()->mutable_moe()->set_num_experts(0);
  spec.clear_modules();
  *spec.add_modules() = language;
  spec.mutable_resources()->set_workers(4);
  Train(spec).set_micro_batch_size(4);
  std::vector<FieldViolation> violations;
  EXPECT_THAT(FailingFields(spec, &violations), ElementsAre("training.global_batch_size"));
  EXPECT_EQ(violations[0].description,
            "global_batch_size 8 is not divisible by micro_batch_size * language dp = 4*4 = 16");
  Train(spec).set_micro_batch_size(2);
  absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->language().config().dp, 4);
}

TEST(ValidateJobSpecTest, ReportsEveryProblem) {
  v1::JobSpec spec = ValidSpec();
  spec.set_name("Bad_Name");
  Vision(spec).mutable_vision()->set_patch_size(0);
  Vision(spec).mutable_parallelism()->set_ep(2);
  Train(spec).set_steps(0);
  Opt(spec).set_adam_beta2(1.0);
  spec.mutable_resources()->clear_device();
  spec.set_max_restarts(-1);
  std::vector<FieldViolation> violations;
  EXPECT_THAT(FailingFields(spec, &violations),
              UnorderedElementsAre("name", "modules[0].vision.patch_size", "max_restarts",
                                   "modules[0].parallelism.ep", "training.steps",
                                   "training.optimizer.adam_beta2", "resources.device"));
  EXPECT_EQ(violations[0].description,
            "must be 1-63 characters of [a-z0-9-], start with a letter and not end with '-'; "
            "got 'Bad_Name'");
}

TEST(ValidateJobSpecTest, ModuleNamesAreCheckedWithoutWorkers) {
  // With no workers the planner does not run; module names are still checked.
  v1::JobSpec spec = ValidSpec();
  spec.mutable_resources()->set_workers(0);
  Audio(spec).set_name("vision");
  Language(spec).set_name("");
  std::vector<FieldViolation> violations;
  EXPECT_THAT(FailingFields(spec, &violations),
              UnorderedElementsAre("resources.workers", "modules[1].name", "modules[2].name"));
}

TEST(ValidateJobSpecTest, PlannerMessagesAreKept) {
  v1::JobSpec spec = ValidSpec();
  Vision(spec).mutable_parallelism()->set_ep(2);
  std::vector<FieldViolation> violations;
  EXPECT_THAT(FailingFields(spec, &violations), ElementsAre("modules[0].parallelism.ep"));
  EXPECT_EQ(violations[0].description,
            "module 'vision' is an encoder and must be dense: ep=2 (only the language module "
            "'language' takes ep and etp)");
}

TEST(ValidateJobSpecTest, OverlapAndGap) {
  v1::JobSpec spec = ValidSpec();
  Audio(spec).mutable_parallelism()->set_rank_offset(1);
  std::vector<FieldViolation> violations;
  EXPECT_THAT(FailingFields(spec, &violations),
              ElementsAre("modules[1].parallelism.rank_offset", "modules"));
  EXPECT_EQ(violations[0].description,
            "modules 'vision' [0,2) and 'audio' [1,3) overlap on rank 1");
  EXPECT_EQ(violations[1].description,
            "rank 3 is not assigned to any module (a gap between 'audio' [1,3) and 'language' "
            "[4,8))");
}

TEST(ValidateJobSpecTest, ShortCoverage) {
  v1::JobSpec spec = ValidSpec();
  spec.mutable_resources()->set_workers(10);
  std::vector<FieldViolation> violations;
  EXPECT_THAT(FailingFields(spec, &violations), ElementsAre("resources.workers"));
  EXPECT_EQ(violations[0].description,
            "the modules cover ranks [0,8) but world_size is 10: ranks 8..9 are not assigned to "
            "any module");
}

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
        Case{"NoLanguageModule",
             [](v1::JobSpec& s) { *Language(s).mutable_vision() = Vision(s).vision(); },
             {"modules"}},
        Case{"SecondLanguageModule",
             [](v1::JobSpec& s) {
               *Audio(s).mutable_language() = Language(s).language();
               Language(s).mutable_parallelism()->set_ep(1);
             },
             {"modules[2].language"}},
        Case{"ModuleWithoutModel", [](v1::JobSpec& s) { Audio(s).clear_audio(); }, {"modules[1]"}},
        Case{"ModuleNameEmpty", [](v1::JobSpec& s) { Audio(s).set_name(""); },
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
        Case{"EpDoesNotDivideExperts", [](v1::JobSpec& s) { Moe(s).set_num_experts(3); },
             {"modules[2].parallelism.ep"}},
        Case{"EpWithoutExperts", [](v1::JobSpec& s) { Moe(s).set_num_experts(0); },
             {"modules[2].parallelism.ep"}},
        // Training and data.
        Case{"TrainingMissing", [](v1::JobSpec& s) { s.clear_training(); }, {"training"}},
        Case{"StepsZero", [](v1::JobSpec& s) { Train(s).set_steps(0); }, {"training.steps"}},
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
             },
             {"training.optimizer.overlap_grad_reduce"}},
        Case{"TrainingWithPipelineParallelismOnGpusOverlappingTheReduction",
             [](v1::JobSpec& s) {
               Language(s).mutable_parallelism()->set_pp(2);
               Language(s).mutable_parallelism()->set_dp(2);
               Train(s).set_global_batch_size(4);
               s.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
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

TEST(ToLayoutSpecTest, MapsEveryField) {
  v1::JobSpec spec = TpLayoutSpec();
  Train(spec).set_seed(0);
  Train(spec).set_data_parallel_random_init(true);
  Audio(spec).mutable_parallelism()->clear_dp();
  Audio(spec).mutable_parallelism()->clear_rank_offset();
  Language(spec).set_name("lm");
  Language(spec).mutable_parallelism()->set_etp(0);
  const parallel::LayoutSpec layout = ToLayoutSpec(spec);
  EXPECT_EQ(layout.world_size, 8);
  EXPECT_EQ(layout.language, "lm");
  EXPECT_EQ(layout.seed, 1234);
  EXPECT_TRUE(layout.data_parallel_random_init);
  ASSERT_EQ(layout.modules.size(), 3u);
  const parallel::ModuleParallelism& audio = layout.modules[1];
  EXPECT_EQ(audio.name, "audio");
  EXPECT_EQ(audio.tp, 1);
  EXPECT_EQ(audio.cp, 1);
  EXPECT_EQ(audio.pp, 1);
  EXPECT_EQ(audio.ep, 1);
  EXPECT_EQ(audio.dp, std::nullopt);
  EXPECT_EQ(audio.rank_offset, std::nullopt);
  const parallel::ModuleParallelism& lm = layout.modules[2];
  EXPECT_EQ(lm.tp, 2);
  EXPECT_EQ(lm.dp, 2);
  EXPECT_EQ(lm.ep, 2);
  EXPECT_EQ(lm.etp, 1);
  EXPECT_EQ(lm.rank_offset, 4);
}

}  // namespace
}  // namespace mimo::coordinator
