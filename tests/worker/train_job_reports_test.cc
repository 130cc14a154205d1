// RunTraining's reports on 2 CPU ranks (a vision encoder on rank 0, the language model on rank 1;
// threads, Gloo groups, an in-memory store), as the job's log and metrics.csv show them:
// - a step whose update is skipped (the optimizer skips a step whose gradient norm is not finite:
//   a learning rate of 1e30, valid in a spec, blows the weights up at the first update, so that
//   every later step's loss and gradients overflow) is an iteration of its own: the reports are
//   numbered by iteration (3, 6, 9, 10 of 10 with log_interval 3), count the skipped steps of
//   their interval, and metrics.csv has one row per report (numbered by the optimizer's update
//   count, a skipped step taking the number of the update it skips, every report here said
//   "iteration 2/10": the log stopped short and metrics.csv had step 2 four times);
// - the logging rank alone says what the WebDataset shards held: samples kept, skipped without an
//   image and without a caption, and the links naming no member left out.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "kernels/ops.h"
#include "tests/data/test_files.h"
#include "tests/worker/plan_ranks.h"
#include "worker/train_job.h"
#include "worker/training_outputs.h"

namespace mimo::worker {
namespace {

using data::testing::TarBuilder;
using data::testing::TempDir;
using data::testing::WriteFile;
using ::testing::ContainsRegex;
using ::testing::ElementsAre;
using ::testing::StartsWith;

constexpr int kVisionRank = 0, kLanguageRank = 1;

// Vision (16x16 images in 4 patches) on rank 0 feeding a dense language model on rank 1, small
// enough that a step takes milliseconds; batches of 4 samples, the synthetic data.
v1::JobSpec TwoRankSpec() {
  v1::JobSpec spec;
  spec.set_name("reports");
  spec.set_kind(v1::JobSpec::KIND_TRAIN);
  v1::Transformer t;
  t.set_num_layers(1);
  t.set_hidden_size(32);
  t.set_num_attention_heads(2);
  t.set_ffn_hidden_size(64);
  v1::Module* vision = spec.add_modules();
  vision->set_name("vision");
  vision->mutable_vision()->set_image_size(16);
  vision->mutable_vision()->set_patch_size(8);
  vision->mutable_vision()->set_num_channels(3);
  *vision->mutable_vision()->mutable_transformer() = t;
  vision->mutable_vision()->mutable_projector()->set_kind(v1::Projector::KIND_LINEAR);
  vision->mutable_parallelism()->set_rank_offset(kVisionRank);
  v1::Module* language = spec.add_modules();
  language->set_name("language");
  language->mutable_language()->set_vocab_size(256);
  language->mutable_language()->set_max_sequence_length(64);
  *language->mutable_language()->mutable_transformer() = t;
  language->mutable_parallelism()->set_rank_offset(kLanguageRank);
  v1::Training* training = spec.mutable_training();
  training->set_steps(1);
  training->set_global_batch_size(4);
  training->set_micro_batch_size(2);
  training->set_seq_length(64);
  training->set_packing(true);
  training->set_precision(v1::PRECISION_FP32);
  training->mutable_optimizer()->set_lr(1e-3);
  training->mutable_optimizer()->set_adam_beta1(0.9);
  training->mutable_optimizer()->set_adam_beta2(0.95);
  training->mutable_optimizer()->set_adam_eps(1e-8);
  spec.mutable_data()->mutable_synthetic()->set_num_samples(100);
  spec.mutable_resources()->set_workers(2);
  spec.mutable_resources()->set_device(v1::DEVICE_KIND_CPU);
  return spec;
}

struct RankRun {
  absl::StatusOr<TrainingEnd> end = absl::UnknownError("not run");
  std::vector<std::string> log;
  std::vector<v1::Metrics> reports;
};

// Runs `spec` on every rank of its plan, as workers do (RunTraining with CPU ops).
std::vector<RankRun> TrainAll(const v1::JobSpec& spec) {
  absl::Mutex mu;
  std::vector<RankRun> runs(spec.resources().workers());
  auto body = [&](int r, const v1::Assignment& a, comm::ProcessGroups& groups,
                  comm::KeyValueStore& store) -> absl::Status {
    std::unique_ptr<kernels::Ops> ops = kernels::NewCpuOps();
    TrainJobHooks hooks{.log =
                            [&runs, &mu, r](const std::string& line) {
                              absl::MutexLock lock(&mu);
                              runs[r].log.push_back(line);
                            },
                        .report =
                            [&runs, &mu, r](const v1::Metrics& m) {
                              absl::MutexLock lock(&mu);
                              runs[r].reports.push_back(m);
                            },
                        .store = &store,
                        .store_timeout = absl::Seconds(30)};
    absl::StatusOr<TrainingEnd> end = RunTraining(a, groups, *ops, false, "cpu", "test", hooks);
    absl::MutexLock lock(&mu);
    runs[r].end = end;
    return end.status();
  };
  testing::PlanRanksOptions options;
  options.group_specs = [](const v1::Assignment& a) { return TrainingGroupSpecs(a); };
  const std::vector<absl::Status> statuses = testing::RunPlanRanks(spec, body, options);
  EXPECT_EQ(statuses.size(), runs.size());
  for (size_t r = 0; r < statuses.size() && r < runs.size(); ++r) {
    if (!statuses[r].ok() && runs[r].end.ok()) runs[r].end = statuses[r];
  }
  return runs;
}

// The log's lines that contain `part`.
std::vector<std::string> LinesWith(const std::vector<std::string>& log, const std::string& part) {
  std::vector<std::string> out;
  for (const std::string& line : log) {
    if (line.find(part) != std::string::npos) out.push_back(line);
  }
  return out;
}

// The first column (the step) of metrics.csv's rows after its header.
std::vector<int64_t> CsvSteps(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, TrainingOutputs::kCsvHeader);
  std::vector<int64_t> steps;
  while (std::getline(in, line)) {
    const std::vector<std::string> fields = absl::StrSplit(line, ',');
    int64_t step = 0;
    EXPECT_TRUE(absl::SimpleAtoi(fields[0], &step)) << line;
    steps.push_back(step);
  }
  return steps;
}

TEST(TrainJobReportsTest, ASkippedStepIsAnIterationOfItsOwnInTheLogAndMetricsCsv) {
  TempDir out;
  v1::JobSpec spec = TwoRankSpec();
  spec.mutable_training()->set_steps(10);
  spec.mutable_training()->set_log_interval(3);
  // Valid (finite as a float), absurd: Adam moves every weight by about 1e30 at the first update,
  // and from the second step on the forward overflows, so the gradient norm is not finite: the
  // optimizer skips each of those steps, leaving the weights (and its update count, 1) as they
  // are.
  spec.mutable_training()->mutable_optimizer()->set_lr(1e30);
  spec.set_output_dir(out.path());
  const std::vector<RankRun> runs = TrainAll(spec);
  ASSERT_EQ(runs.size(), 2u);
  for (const RankRun& run : runs) {
    ASSERT_TRUE(run.end.ok()) << run.end.status();
    EXPECT_EQ(run.end->iteration, 10);
  }
  EXPECT_TRUE(runs[kVisionRank].reports.empty());  // The language rank reports.
  const RankRun& language = runs[kLanguageRank];
  // Every log_interval iterations and after the last, each over the iterations since the last
  // report, the skipped ones included: 1 update and 2 skips, then 3, 3 and 1 skips.
  std::vector<int64_t> steps, interval_steps, skipped;
  for (const v1::Metrics& m : language.reports) {
    steps.push_back(m.step());
    interval_steps.push_back(static_cast<int64_t>(m.values().at("interval_steps")));
    skipped.push_back(static_cast<int64_t>(m.values().at("skipped")));
  }
  EXPECT_THAT(steps, ElementsAre(3, 6, 9, 10));
  EXPECT_THAT(interval_steps, ElementsAre(3, 3, 3, 1));
  EXPECT_THAT(skipped, ElementsAre(2, 3, 3, 1));
  // The learning rate follows the updates (one), not the iterations: the first one's throughout.
  for (const v1::Metrics& m : language.reports) EXPECT_FLOAT_EQ(m.values().at("lr"), 1e30f);
  // The first interval's loss is its one update's (a skipped step's loss is left out of the mean).
  ASSERT_FALSE(language.reports.empty());
  EXPECT_TRUE(std::isfinite(language.reports[0].loss())) << language.reports[0].loss();
  // The iteration lines say the same, the last one ending the run at 10/10.
  const std::vector<std::string> lines = LinesWith(language.log, "] iteration ");
  ASSERT_EQ(lines.size(), 4u);
  const char* const kIterations[] = {"3", "6", "9", "10"};
  const char* const kSkipped[] = {"2", "3", "3", "1"};
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_THAT(lines[i], ContainsRegex(absl::StrCat("iteration +", kIterations[i], "/ +10 \\|")));
    // The skipped steps' losses are not finite either (the forward over such weights overflows).
    EXPECT_THAT(lines[i], ContainsRegex(absl::StrCat("number of skipped iterations: +", kSkipped[i],
                                                     " \\| number of nan iterations: +",
                                                     kSkipped[i], " \\|")));
  }
  EXPECT_THAT(language.log.back(), StartsWith("training done: 10 steps"));
  // metrics.csv: one row per report, in order, none repeated.
  EXPECT_THAT(CsvSteps(out.File("metrics.csv")), ElementsAre(3, 6, 9, 10));
}

// A 16x16 PNG of one colour.
std::string Png(uint8_t value) {
  return data::testing::EncodePng(16, 16, 3, std::vector<uint8_t>(16 * 16 * 3, value));
}

TEST(TrainJobReportsTest, TheLoggingRankSaysWhatTheShardsHeld) {
  TempDir dir;
  // 4 samples kept; "nocaption" skipped without a caption, "dangling" without an image (its
  // image is a symlink naming no member, left out).
  TarBuilder tar;
  for (int i = 0; i < 4; ++i) {
    const std::string key = absl::StrCat("s", i);
    tar.File(key + ".png", Png(static_cast<uint8_t>(40 * i)));
    tar.File(key + ".txt", absl::StrCat("sample ", i));
  }
  tar.File("nocaption.png", Png(200));
  tar.Link("dangling.png", '2', "missing.png");
  tar.File("dangling.txt", "an image that is not there");
  const std::string shard = dir.File("shard-0.tar");
  WriteFile(shard, tar.Finish());
  v1::JobSpec spec = TwoRankSpec();
  spec.mutable_data()->mutable_webdataset()->add_shards(dir.File("shard-{0..0}.tar"));
  const std::vector<RankRun> runs = TrainAll(spec);
  ASSERT_EQ(runs.size(), 2u);
  for (const RankRun& run : runs) ASSERT_TRUE(run.end.ok()) << run.end.status();
  // Every rank read the shards; the logging rank alone says so, once, before training.
  EXPECT_THAT(LinesWith(runs[kVisionRank].log, "data: "), ::testing::IsEmpty());
  const std::vector<std::string>& log = runs[kLanguageRank].log;
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log[0],
            absl::StrCat("data: 1 shard(s), 10 member(s), 4 sample(s) kept; skipped 1 without an "
                         "image and 1 without a caption; left out 1 link(s) naming no member, the "
                         "first ",
                         shard,
                         ": 'dangling.png' (symlink to 'missing.png'): names no member "
                         "of it"));
  EXPECT_THAT(LinesWith(log, "data: "), ::testing::SizeIs(1));
  ASSERT_GE(log.size(), 2u);
  EXPECT_THAT(log[1], StartsWith("training module language: "));
}

// Only the vision encoder's ranks decode images: with every image broken, the vision rank fails
// naming one, and the language rank, which only counts their tokens, is stopped by that failure
// (the abort of its groups) without ever decoding one.
TEST(TrainJobReportsTest, OnlyTheVisionRankDecodesImages) {
  TempDir dir;
  TarBuilder tar;
  for (int i = 0; i < 4; ++i) {
    const std::string key = absl::StrCat("s", i);
    tar.File(key + ".png", "not a png");
    tar.File(key + ".txt", absl::StrCat("sample ", i));
  }
  WriteFile(dir.File("shard-0.tar"), tar.Finish());
  v1::JobSpec spec = TwoRankSpec();
  spec.mutable_data()->mutable_webdataset()->add_shards(dir.File("shard-0.tar"));
  const std::vector<RankRun> runs = TrainAll(spec);
  ASSERT_EQ(runs.size(), 2u);
  ASSERT_FALSE(runs[kVisionRank].end.ok());
  EXPECT_THAT(std::string(runs[kVisionRank].end.status().message()),
              ContainsRegex("shard-0\\.tar:s[0-3]\\.png"));
  ASSERT_FALSE(runs[kLanguageRank].end.ok());
  EXPECT_THAT(std::string(runs[kLanguageRank].end.status().message()),
              ::testing::Not(ContainsRegex("\\.png")));
}

}  // namespace
}  // namespace mimo::worker
