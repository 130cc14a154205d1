// Tests of worker/train_job.h: the trainer's options from a job spec (the example's batch split,
// schedule and distributed optimizer; WebDataset shards with a tokenizer model; a global batch
// that does not split; the gradient overlap per module and device), the MFU denominators, and the
// Megatron-style iteration line.
#include "worker/train_job.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "comm/in_memory_store.h"
#include "coordinator/plan_proto.h"
#include "coordinator/spec_validation.h"
#include "tools/mimoctl/spec_file.h"
#include "worker/group_specs.h"

namespace mimo::worker {
namespace {

using ::testing::HasSubstr;

v1::JobSpec Example() {
  auto spec = tools::ReadJobSpecFile(std::string(MIMO_EXAMPLES_DIR) + "/mimo-cpu-8.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : v1::JobSpec();
}

TEST(TrainerOptionsFromSpecTest, SplitsTheExamplesGlobalBatchOverTheLanguageReplicas) {
  auto o = TrainerOptionsFromSpec(Example(), 4);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->micro_batch_size, 2);
  EXPECT_EQ(o->micro_batches, 2);  // 16 samples = 4 replicas x 2 micro-batches x 2.
  EXPECT_EQ(o->seq_length, 128);
  EXPECT_EQ(o->seed, 1234u);
  EXPECT_EQ(o->data.seed, 1234u);
  EXPECT_EQ(o->data.num_samples, 10000);
  EXPECT_FALSE(o->webdataset.has_value());
  EXPECT_TRUE(o->tokenizer_model.empty());
  EXPECT_FLOAT_EQ(o->optimizer.lr, 3e-3f);
  EXPECT_FLOAT_EQ(o->optimizer.min_lr, 3e-4f);
  EXPECT_FLOAT_EQ(o->optimizer.beta2, 0.95f);
  EXPECT_FLOAT_EQ(o->optimizer.clip_grad, 1.0f);
  EXPECT_EQ(o->optimizer.warmup_steps, 10);
  EXPECT_EQ(o->optimizer.decay_steps, 90);
  EXPECT_TRUE(o->distributed_optimizer);
  EXPECT_TRUE(o->overlap_grad_reduce);  // Unset in the spec: on.
}

TEST(TrainerOptionsFromSpecTest, TurnsTheGradientOverlapOffOnlyWhenTheSpecSaysSo) {
  v1::JobSpec spec = Example();
  spec.mutable_training()->mutable_optimizer()->set_overlap_grad_reduce(false);
  auto o = TrainerOptionsFromSpec(spec, 1);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->overlap_grad_reduce);
  spec.mutable_training()->mutable_optimizer()->set_overlap_grad_reduce(true);
  o = TrainerOptionsFromSpec(spec, 1);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->overlap_grad_reduce);
}

TEST(OverlapGradReduceTest, UnsetIsOnExceptForModelOrExpertParallelModulesOnGpus) {
  v1::JobSpec spec = Example();  // CPU, overlap_grad_reduce unset.
  EXPECT_TRUE(OverlapGradReduce(spec, 1, 1, 1, 1, 1));
  EXPECT_TRUE(OverlapGradReduce(spec, 2, 2, 2, 2, 2));
  spec.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
  EXPECT_TRUE(OverlapGradReduce(spec, 1, 1, 1, 1, 1));
  EXPECT_FALSE(OverlapGradReduce(spec, 2, 1, 1, 1, 1));
  EXPECT_FALSE(OverlapGradReduce(spec, 1, 2, 1, 1, 1));
  EXPECT_FALSE(OverlapGradReduce(spec, 1, 1, 2, 1, 1));
  EXPECT_FALSE(OverlapGradReduce(spec, 1, 1, 1, 2, 1));
  EXPECT_FALSE(OverlapGradReduce(spec, 1, 1, 1, 1, 2));
  // Set, the spec decides (the coordinator refuses true where it cannot be done).
  spec.mutable_training()->mutable_optimizer()->set_overlap_grad_reduce(true);
  EXPECT_TRUE(OverlapGradReduce(spec, 2, 1, 1, 1, 1));
  spec.mutable_training()->mutable_optimizer()->set_overlap_grad_reduce(false);
  EXPECT_FALSE(OverlapGradReduce(spec, 1, 1, 1, 1, 1));
  spec.mutable_resources()->set_device(v1::DEVICE_KIND_CPU);
  EXPECT_FALSE(OverlapGradReduce(spec, 1, 1, 1, 1, 1));
}

// The example's language module alone on one rank, as its worker gets it.
v1::Assignment OneRankLanguageAssignment(const v1::JobSpec& example) {
  v1::JobSpec spec = example;
  v1::Module language;
  for (const v1::Module& m : spec.modules()) {
    if (m.has_language()) language = m;
  }
  language.mutable_parallelism()->Clear();
  spec.clear_modules();
  *spec.add_modules() = language;
  spec.mutable_resources()->set_workers(1);
  v1::Assignment a;
  absl::StatusOr<parallel::RankPlan> plan = coordinator::ValidateJobSpec(spec, nullptr);
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) return a;
  *a.mutable_spec() = spec;
  a.set_world_size(1);
  *a.mutable_rank() = coordinator::RankToProto(*plan, 0);
  coordinator::ModulesToProto(*plan, a.mutable_modules());
  return a;
}

TEST(TrainerOptionsForTest, TakesTheGradientOverlapFromTheSpec) {
  for (const bool overlap : {false, true}) {
    v1::JobSpec spec = Example();
    spec.mutable_training()->mutable_optimizer()->set_overlap_grad_reduce(overlap);
    const v1::Assignment a = OneRankLanguageAssignment(spec);
    absl::StatusOr<std::vector<comm::GroupSpec>> specs = GroupSpecsOf(a.rank());
    ASSERT_TRUE(specs.ok()) << specs.status();
    comm::InMemoryStore store;
    auto groups = comm::ProcessGroups::CreateGloo(*specs, store, {.rank = 0});
    ASSERT_TRUE(groups.ok()) << groups.status();
    absl::StatusOr<TrainerOptions> o = TrainerOptionsFor(a, **groups);
    ASSERT_TRUE(o.ok()) << o.status();
    EXPECT_EQ(o->overlap_grad_reduce, overlap);
    EXPECT_EQ(o->micro_batches, 8);  // 16 samples in micro-batches of 2 on one replica.
  }
}

TEST(TrainerOptionsFromSpecTest, ReadsWebDatasetShardsWithTheJobSeed) {
  v1::JobSpec spec = Example();
  spec.mutable_training()->set_seed(77);
  v1::Data::WebDataset& w = *spec.mutable_data()->mutable_webdataset();
  w.add_shards("/data/a-{000..009}.tar");
  w.add_shards("/data/b.tar");
  w.set_tokenizer_model("/data/spm.model");
  auto o = TrainerOptionsFromSpec(spec, 1);
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_TRUE(o->webdataset.has_value());
  EXPECT_THAT(o->webdataset->shards,
              ::testing::ElementsAre("/data/a-{000..009}.tar", "/data/b.tar"));
  EXPECT_EQ(o->webdataset->seed, 77u);
  EXPECT_TRUE(o->webdataset->shuffle);
  EXPECT_EQ(o->tokenizer_model, "/data/spm.model");
  EXPECT_EQ(o->micro_batches, 8);
}

TEST(TrainerOptionsFromSpecTest, RefusesAGlobalBatchThatDoesNotSplit) {
  const absl::Status status = TrainerOptionsFromSpec(Example(), 3).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("global_batch_size 16"));
}

TEST(PeakTflopsTest, KnowsTheSxmPartsOnly) {
  EXPECT_EQ(PeakTflops("NVIDIA H200", kernels::DType::kBF16), 989);
  EXPECT_EQ(PeakTflops("NVIDIA H100 80GB HBM3", kernels::DType::kF32), 67);
  EXPECT_EQ(PeakTflops("NVIDIA H100 PCIe", kernels::DType::kBF16), 0);
  EXPECT_EQ(PeakTflops("cpu", kernels::DType::kF32), 0);
}

TEST(MegatronLogLineTest, ReadsLikeMegatronLm) {
  IntervalMetrics r{.steps = 5, .skipped = 2, .nan = 1};
  StepMetrics& m = r.mean;
  m.step = 5;
  m.loss = 5.123456;
  m.lr = 3e-4;
  m.seconds = 0.0123;
  const std::string line = MegatronLogLine(r, 50, 80, 16, 1.25);
  // Megatron pads the counts to fixed widths.
  EXPECT_THAT(line, ::testing::ContainsRegex("iteration +5/ +50 \\|"));
  EXPECT_THAT(line, ::testing::ContainsRegex("consumed samples: +80 \\|"));
  EXPECT_THAT(line, ::testing::ContainsRegex("global batch size: +16 \\|"));
  EXPECT_THAT(line, HasSubstr("elapsed time per iteration (ms): 12.3 |"));
  EXPECT_THAT(line, HasSubstr("lm loss: 5.123456E+00"));
  EXPECT_THAT(line, HasSubstr("throughput per GPU (TFLOP/s/GPU):"));
  EXPECT_THAT(line,
              HasSubstr("number of skipped iterations:   2 | number of nan iterations:   1 |"));
}

}  // namespace
}  // namespace mimo::worker
