// Trainer::SaveState / LoadState: a run saved after two steps and restored into a new trainer
// goes on exactly as the uninterrupted run (losses, norms, expert loads and every parameter
// bitwise; fp32 and bf16 with their masters, the MoE layers' expert biases; two data-parallel
// ranks with the distributed optimizer's shards and experts over ep; two interleaved stages of
// two model chunks each); a state captured to host
// memory and written later makes the same files; a wrong, damaged or
// missing file gives an error naming it; restoring into a trainer that has stepped is refused.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "checkpoint/consolidated_reader.h"
#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "common/bfloat16.h"
#include "nlohmann/json.hpp"
#include "tests/comm/run_ranks.h"
#include "tests/worker/trainer_dp_util.h"
#include "worker/trainer.h"

namespace mimo::worker {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string TempDir(const std::string& name) {
  const std::string dir =
      ::testing::TempDir() + "/trainer-state-" + name + "-" + std::to_string(::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

MimoModelConfig Model(kernels::DType dtype) {
  MimoModelConfig m = DpTestModel(dtype);
  m.language.moe->expert_bias = true;  // State beyond the parameters and moments.
  m.language.moe->expert_bias_update_rate = 0.01f;
  return m;
}

// Every parameter's fp32 master (its bf16 weight where the distributed optimizer holds the
// master) in order.
std::vector<float> Values(kernels::Ops& ops, const Trainer& t) {
  std::vector<Parameter*> params;
  t.AppendParameters(params);
  std::vector<float> out;
  for (Parameter* p : params) {
    if (p->master().data() != nullptr) {
      std::vector<float> v(p->numel());
      EXPECT_TRUE(ops.CopyToHost(v.data(), p->master().data(), 4 * v.size()).ok());
      out.insert(out.end(), v.begin(), v.end());
      continue;
    }
    std::vector<uint16_t> bits(p->numel());
    EXPECT_TRUE(ops.CopyToHost(bits.data(), p->weight().data(), 2 * bits.size()).ok());
    for (uint16_t b : bits) out.push_back(BFloat16ToFloat(b));
  }
  return out;
}

// Each of two ranks (Gloo groups `groups`, each over both) trains four steps twice: straight
// through, and saved into `dir` after two, restored into a new trainer (its replicas read from
// the files of `sources`, once every rank has saved) which takes the last two. Per rank: both
// runs' losses and their parameters at the end (Values).
struct TwoRuns {
  std::vector<std::vector<double>> want_loss = {{}, {}}, got_loss = {{}, {}};
  std::vector<std::vector<float>> want = {{}, {}}, got = {{}, {}};
};

TwoRuns ResumeOnTwoRanks(const MimoModelConfig& model, const std::vector<std::string>& groups,
                         const std::function<TrainerOptions(const comm::ProcessGroups&)>& options,
                         const std::string& dir,
                         const std::function<std::vector<int>(int)>& sources) {
  TwoRuns runs;
  std::vector<comm::GroupSpec> specs;
  for (const std::string& kind : groups) specs.push_back({.kind = kind, .members = {0, 1}});
  for (const bool interrupted : {false, true}) {
    comm::InMemoryStore store;
    comm::RunRanks(2, [&](int rank) {
      auto made = comm::ProcessGroups::CreateGloo(
          specs, store, {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
      ASSERT_TRUE(made.ok()) << made.status();
      auto ops = kernels::NewCpuOps();
      const TrainerOptions o = options(**made);
      auto trainer = Trainer::Create(*ops, model, o);
      ASSERT_TRUE(trainer.ok()) << trainer.status();
      std::vector<double>& losses = interrupted ? runs.got_loss[rank] : runs.want_loss[rank];
      for (int i = 0; i < 2; ++i) losses.push_back((*trainer)->Step()->loss);
      if (interrupted) {
        const absl::Status saved = (*trainer)->SaveState(dir, rank).status();
        ASSERT_TRUE(saved.ok()) << saved;
        ASSERT_TRUE((*made)->Get(groups[0])->Barrier().ok());
        auto resumed = Trainer::Create(*ops, model, o);
        ASSERT_TRUE(resumed.ok());
        const absl::Status loaded = (*resumed)->LoadState(dir, rank, sources(rank));
        ASSERT_TRUE(loaded.ok()) << loaded;
        *trainer = *std::move(resumed);
      }
      for (int i = 0; i < 2; ++i) losses.push_back((*trainer)->Step()->loss);
      (interrupted ? runs.got : runs.want)[rank] = Values(*ops, **trainer);
    });
  }
  return runs;
}

TEST(TrainerStateTest, ARestoredRunGoesOnAsTheUninterruptedOne) {
  for (const kernels::DType dtype : {kernels::DType::kF32, kernels::DType::kBF16}) {
    SCOPED_TRACE(kernels::DTypeName(dtype));
    const MimoModelConfig model = Model(dtype);
    const TrainerOptions options = TestOptions(2, nullptr);
    auto ops = kernels::NewCpuOps();
    auto whole = Trainer::Create(*ops, model, options);
    ASSERT_TRUE(whole.ok()) << whole.status();
    std::vector<StepMetrics> want;
    for (int i = 0; i < 4; ++i) want.push_back(*(*whole)->Step());
    // Two steps, saved; a new trainer restores them and takes the last two.
    const std::string dir = TempDir(std::string(kernels::DTypeName(dtype)));
    {
      auto first = Trainer::Create(*ops, model, options);
      ASSERT_TRUE(first.ok());
      for (int i = 0; i < 2; ++i) ASSERT_TRUE((*first)->Step().ok());
      ASSERT_TRUE((*first)->SaveState(dir, 3).ok());
    }
    EXPECT_TRUE(fs::exists(dir + "/model_rank_00003.safetensors"));
    EXPECT_TRUE(fs::exists(dir + "/optim_rank_00003.safetensors"));
    {
      // The state captured to host memory and written later (an asynchronous save) makes the
      // same files, byte for byte, even when the trainer steps on meanwhile.
      auto first = Trainer::Create(*ops, model, options);
      ASSERT_TRUE(first.ok());
      for (int i = 0; i < 2; ++i) ASSERT_TRUE((*first)->Step().ok());
      auto state = (*first)->CaptureState(3);
      ASSERT_TRUE(state.ok()) << state.status();
      ASSERT_TRUE((*first)->Step().ok());
      const std::string later = TempDir(std::string(kernels::DTypeName(dtype)) + "-captured");
      auto written = WriteRankState(**state, later);
      ASSERT_TRUE(written.ok()) << written.status();
      for (const char* file : {"model_rank_00003.safetensors", "optim_rank_00003.safetensors"}) {
        auto a = checkpoint::DigestOf(dir + "/" + file);
        auto b = checkpoint::DigestOf(later + "/" + file);
        ASSERT_TRUE(a.ok() && b.ok());
        EXPECT_TRUE(*a == *b) << file;
        EXPECT_TRUE(written->at(file) == *b) << file;
      }
      fs::remove_all(later);
    }
    auto resumed = Trainer::Create(*ops, model, options);
    ASSERT_TRUE(resumed.ok());
    const absl::Status loaded = (*resumed)->LoadState(dir, 3);
    ASSERT_TRUE(loaded.ok()) << loaded;
    EXPECT_EQ((*resumed)->position(), 2 * 2 * 2);  // Two steps of two micro-batches of two.
    for (int i = 2; i < 4; ++i) {
      auto m = (*resumed)->Step();
      ASSERT_TRUE(m.ok()) << m.status();
      EXPECT_EQ(m->step, want[i].step);
      EXPECT_EQ(m->loss, want[i].loss) << "step " << i;
      EXPECT_EQ(m->grad_norm, want[i].grad_norm) << "step " << i;
      EXPECT_EQ(m->lr, want[i].lr) << "step " << i;
      EXPECT_EQ(m->expert_load, want[i].expert_load) << "step " << i;
      EXPECT_EQ(m->expert_load_imbalance, want[i].expert_load_imbalance) << "step " << i;
    }
    EXPECT_EQ(Values(*ops, **resumed), Values(*ops, **whole));
    fs::remove_all(dir);
  }
}

// Two data-parallel replicas with the distributed optimizer (bf16: the masters only in its
// shards) and experts split over ep: each rank saves its own state (the replicas once, on rank
// 0) and restores it.
TEST(TrainerStateTest, DataParallelRanksWithTheDistributedOptimizerResume) {
  const MimoModelConfig model = Model(kernels::DType::kBF16);
  const std::string dir = TempDir("dp");
  // Rank 0 saves the replicated weights once; rank 1 reads them from its files (named as the
  // source of its replicas).
  const TwoRuns runs = ResumeOnTwoRanks(
      model, {"dp", "ep"},
      [](const comm::ProcessGroups& groups) {
        return TestOptions(1, groups.Get("dp"), ModelGroupsOf(groups), /*distributed=*/true);
      },
      dir, [](int) { return std::vector<int>{0}; });
  // Rank 1's model file places its experts (2 and 3 of 4, over ep) in the full tensors.
  auto reader = checkpoint::SafetensorsReader::Open(dir + "/model_rank_00001.safetensors");
  ASSERT_TRUE(reader.ok()) << reader.status();
  const nlohmann::json shards = nlohmann::json::parse(reader->header().metadata.at("shards"));
  const std::string fc1 = "language.decoder.layers.0.mlp.experts.linear_fc1.weight";
  ASSERT_TRUE(shards.contains(fc1)) << shards.dump();
  EXPECT_EQ(shards[fc1][0]["dim"], 0);
  EXPECT_EQ(shards[fc1][0]["full_size"], 4);
  EXPECT_EQ(shards[fc1][0]["ranges"], nlohmann::json::parse("[[2, 2]]"));
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(runs.got_loss[r], runs.want_loss[r]) << "rank " << r;
    EXPECT_EQ(runs.got[r], runs.want[r]) << "rank " << r;
  }
  fs::remove_all(dir);
}

// Interleaved pipeline stages (pp 2 x vpp 2 over four layers, expert biases): each rank saves
// and restores both of its model chunks (layers s and s + 2), and the restored run goes on
// bitwise as the uninterrupted one.
TEST(TrainerStateTest, InterleavedStagesResume) {
  MimoModelConfig model = Model(kernels::DType::kF32);
  model.language.transformer.num_layers = 4;
  const std::string dir = TempDir("vpp");
  const TwoRuns runs = ResumeOnTwoRanks(
      model, {"pp"},
      [](const comm::ProcessGroups& groups) {
        TrainerOptions o = TestOptions(2, nullptr, {}, false, nullptr, true, groups.Get("pp"));
        o.virtual_stages = 2;
        return o;
      },
      dir, [](int rank) { return std::vector<int>{rank}; });
  // Rank 1 holds layers 1 and 3.
  auto reader = checkpoint::SafetensorsReader::Open(dir + "/model_rank_00001.safetensors");
  ASSERT_TRUE(reader.ok()) << reader.status();
  int layers = 0;
  for (const checkpoint::TensorEntry& t : reader->header().tensors) {
    if (t.name.find("input_layernorm.weight") == std::string::npos) continue;
    ++layers;
    EXPECT_TRUE(t.name.find("layers.1.") != std::string::npos ||
                t.name.find("layers.3.") != std::string::npos)
        << t.name;
  }
  EXPECT_EQ(layers, 2);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(runs.got_loss[r], runs.want_loss[r]) << "rank " << r;
    EXPECT_EQ(runs.got[r], runs.want[r]) << "rank " << r;
  }
  fs::remove_all(dir);
}

// What resharding reads: a tensor-parallel run's checkpoint (tp 2: vocabulary rows, fused QKV
// rows, column and row slices) assembled into whole tensors equals the one-rank run's checkpoint
// after the same steps (relative error < 1e-5), tensor for tensor.
TEST(TrainerStateTest, ATensorParallelCheckpointConsolidatesToTheOneRankOne) {
  MimoModelConfig model = DpTestModel();
  model.language.moe.reset();
  const std::string one_dir = TempDir("tp-one"), tp_dir = TempDir("tp-two");
  {
    auto ops = kernels::NewCpuOps();
    auto trainer = Trainer::Create(*ops, model, TestOptions(2, nullptr));
    ASSERT_TRUE(trainer.ok());
    for (int i = 0; i < 2; ++i) ASSERT_TRUE((*trainer)->Step().ok());
    ASSERT_TRUE((*trainer)->SaveState(one_dir, 0).ok());
  }
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    auto trainer = Trainer::Create(*ops, model, TestOptions(2, nullptr, ModelGroupsOf(**groups)));
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    for (int i = 0; i < 2; ++i) ASSERT_TRUE((*trainer)->Step().ok());
    ASSERT_TRUE((*trainer)->SaveState(tp_dir, rank).ok());
  });
  auto one = checkpoint::ConsolidatedReader::Open(one_dir);
  auto two = checkpoint::ConsolidatedReader::Open(tp_dir);
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_TRUE(two.ok()) << two.status();
  ASSERT_EQ(one->tensors().size(), two->tensors().size());
  int split = 0;
  for (const auto& [name, whole] : one->tensors()) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(two->tensors().contains(name));
    const checkpoint::WholeTensor& other = two->tensors().at(name);
    ASSERT_EQ(other.shape, whole.shape);
    split += other.slices.size() > 1 ? 1 : 0;
    std::vector<float> a(whole.bytes() / 4), b(whole.bytes() / 4);
    ASSERT_TRUE(one->Read(name, {reinterpret_cast<char*>(a.data()), whole.bytes()}).ok());
    ASSERT_TRUE(two->Read(name, {reinterpret_cast<char*>(b.data()), whole.bytes()}).ok());
    EXPECT_LT(RelativeError(b, a), 1e-5);
  }
  EXPECT_GE(split, 6);  // Embedding, output layer, 2 x (qkv, proj, fc1, fc2) split over tp.
  fs::remove_all(one_dir);
  fs::remove_all(tp_dir);
}

TEST(TrainerStateTest, WrongDamagedOrMissingFilesAreClearErrors) {
  const MimoModelConfig model = Model(kernels::DType::kF32);
  const TrainerOptions options = TestOptions(1, nullptr);
  auto ops = kernels::NewCpuOps();
  const std::string dir = TempDir("errors");
  auto saved = Trainer::Create(*ops, model, options);
  ASSERT_TRUE(saved.ok());
  ASSERT_TRUE((*saved)->Step().ok());
  ASSERT_TRUE((*saved)->SaveState(dir, 0).ok());
  auto fresh = [&](const MimoModelConfig& m) {
    auto t = Trainer::Create(*ops, m, options);
    EXPECT_TRUE(t.ok()) << t.status();
    return *std::move(t);
  };
  // Stepped already.
  EXPECT_EQ((*saved)->LoadState(dir, 0).code(), absl::StatusCode::kFailedPrecondition);
  // Another rank's files: none.
  const absl::Status missing = fresh(model)->LoadState(dir, 1);
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("model_rank_00001.safetensors"));
  // Another model: a wider language model.
  MimoModelConfig wider = model;
  wider.language.transformer.ffn_hidden_size = 48;
  const absl::Status other = fresh(wider)->LoadState(dir, 0);
  EXPECT_EQ(other.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(other.message(), HasSubstr("another model or layout"));
  // The same model trained in bf16: the precision is named.
  const absl::Status bf16 = fresh(Model(kernels::DType::kBF16))->LoadState(dir, 0);
  EXPECT_EQ(bf16.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bf16.message(), HasSubstr("trained in another precision"));
  // A file cut short.
  const std::string optim = dir + "/optim_rank_00000.safetensors";
  fs::resize_file(optim, fs::file_size(optim) - 16);
  const absl::Status cut = fresh(model)->LoadState(dir, 0);
  EXPECT_EQ(cut.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(cut.message(), HasSubstr(optim));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mimo::worker
