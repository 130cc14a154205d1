// ValidateJobSpec: what it accepts, how it reports problems (every one, planner messages kept,
// coverage of the world); ToLayoutSpec. The violation kinds one by one: spec_violation_test.cc.
#include "coordinator/spec_validation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/coordinator/spec_test_util.h"

namespace mimo::coordinator {
namespace {

using testing::Audio;
using ::testing::ElementsAre;
using testing::FailingFields;
using ::testing::IsEmpty;
using testing::Language;
using testing::Opt;
using testing::TpLayoutSpec;
using testing::Train;
using ::testing::UnorderedElementsAre;
using testing::ValidSpec;
using testing::Vision;

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

// On GPUs, modules with tp, pp or cp > 1 cannot overlap the gradient reduction yet: unset, the
// workers turn it off for them; false is fine too (true is refused: spec_violation_test.cc).
TEST(ValidateJobSpecTest, TrainingAcceptsModelParallelismOnGpusWithoutAskingForTheOverlap) {
  for (const bool set_false : {false, true}) {
    v1::JobSpec spec = ValidSpec();
    spec.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
    Vision(spec).mutable_parallelism()->set_tp(2);
    Vision(spec).mutable_parallelism()->set_dp(1);
    Language(spec).mutable_parallelism()->set_cp(2);
    Language(spec).mutable_parallelism()->set_dp(2);
    Train(spec).set_global_batch_size(4);
    if (set_false) Opt(spec).set_overlap_grad_reduce(false);
    std::vector<FieldViolation> violations;
    EXPECT_TRUE(ValidateJobSpec(spec, &violations).ok()) << set_false;
    for (const FieldViolation& v : violations) ADD_FAILURE() << v.field << ": " << v.description;
  }
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
  language.mutable_language()->clear_moe();
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
  Language(spec).mutable_language()->set_vocab_chunk(-1);
  std::vector<FieldViolation> violations;
  EXPECT_THAT(
      FailingFields(spec, &violations),
      UnorderedElementsAre("name", "modules[0].vision.patch_size", "max_restarts",
                           "modules[2].language.vocab_chunk", "modules[0].parallelism.ep",
                           "training.steps", "training.optimizer.adam_beta2", "resources.device"));
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
