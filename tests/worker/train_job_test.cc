// Tests of worker/train_job.h: the trainer's options from a job spec (the example's batch split,
// schedule and distributed optimizer; WebDataset shards with a tokenizer model; a global batch
// that does not split), the MFU denominators, and the Megatron-style iteration line.
#include "worker/train_job.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "tools/mimoctl/spec_file.h"

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
  StepMetrics m;
  m.step = 5;
  m.loss = 5.123456;
  m.lr = 3e-4;
  m.seconds = 0.0123;
  const std::string line = MegatronLogLine(m, 50, 80, 16, 1.25);
  // Megatron pads the counts to fixed widths.
  EXPECT_THAT(line, ::testing::ContainsRegex("iteration +5/ +50 \\|"));
  EXPECT_THAT(line, ::testing::ContainsRegex("consumed samples: +80 \\|"));
  EXPECT_THAT(line, ::testing::ContainsRegex("global batch size: +16 \\|"));
  EXPECT_THAT(line, HasSubstr("elapsed time per iteration (ms): 12.3 |"));
  EXPECT_THAT(line, HasSubstr("lm loss: 5.123456E+00"));
  EXPECT_THAT(line, HasSubstr("throughput per GPU (TFLOP/s/GPU):"));
}

}  // namespace
}  // namespace mimo::worker
