// Modules on their own ranks (CPU workers: ranks as threads, Gloo over loopback): the vision and
// audio encoders on their ranks send their embeddings to the language ranks over the bridge links
// and get the gradients back; with fan-out (encoder dp < language dp, expert parallel language
// ranks) and fan-in (encoder dp > language dp) the layout trains like the whole model on one rank
// with the same samples: the same losses, norms and expert loads, and every module's parameters
// after every step; also with the language model in two pipeline stages (encoders linked to the
// first), context parallel (alone, and tp x cp x pp), a tensor-parallel vision encoder, a
// context-parallel one (alone, padded, and tp x cp x pp), and the tensor-parallel example's whole
// layout.
// Links that are not the layout's are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "data/byte_tokenizer.h"
#include "tests/comm/run_ranks.h"
#include "tests/mimo/model_test_util.h"
#include "tests/worker/trainer_dp_util.h"
#include "worker/trainer.h"

namespace mimo::worker {
namespace {

// The vision encoder's size where a test sets it.
struct VisionSize {
  int layers = 1;
  int heads = 2;
  int64_t image_size = 8;  // Patches of 4: (image_size / 4)^2 tokens an image.
};

// The data-parallel tests' model with an audio encoder too.
MimoModelConfig Model(const VisionSize& vision = {}) {
  MimoModelConfig c = DpTestModel();
  c.vision->transformer.num_layers = vision.layers;
  c.vision->transformer.num_attention_heads = vision.heads;
  c.vision->image_size = vision.image_size;
  c.audio = ModalityEncoderConfig{.input = EncoderInput::kAudio,
                                  .num_mel_bins = 4,
                                  .frames_per_token = 2,
                                  .max_frames = 8,
                                  .transformer = c.vision->transformer,
                                  .projector = {.kind = ProjectorKind::kLinear},
                                  .output_size = 16};
  return c;
}

constexpr int kSteps = 3;

TrainerOptions Options(int micro_batches, int64_t seq_length = 64) {
  return {.micro_batch_size = 2,
          .micro_batches = micro_batches,
          .seq_length = seq_length,
          .data = {.num_samples = 100, .seed = 5},
          .optimizer = {.lr = 1e-3f, .clip_grad = 0.05f, .warmup_steps = 1},
          .seed = 9};
}

TrainRun Train(const TrainerOptions& options, const VisionSize& vision = {}) {
  TrainRun run;
  auto ops = kernels::NewCpuOps();
  auto trainer = Trainer::Create(*ops, Model(vision), options);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  if (!trainer.ok()) return run;
  for (int i = 0; i < kSteps; ++i) {
    auto m = (*trainer)->Step();
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return run;
    run.steps.push_back(*m);
  }
  std::vector<Parameter*> params;
  (*trainer)->AppendParameters(params);
  for (Parameter* p : params) {
    const float* v = p->master().data<float>();
    run.params[p->name()].assign(v, v + p->numel());
    run.specs[p->name()] = p->spec();
  }
  return run;
}

// Vision on ranks [0, V T_v), audio on [V T_v, V T_v + A), the language model after them: P
// pipeline stages of L replicas of C cp members of T tp members, stage s replica d cp member c tp
// member t at lang0 + ((s L + d) C + c) T + t (expert_parallel: ep = L without tp and expt_dp
// over cp, else ep over the tp members and expt_dp over the replicas' cp members). Encoders link to
// member 0 of the first stage's replicas; vision stage s replica e cp member c tp member t is at
// (s E + e) C_v T_v + c T_v + t, member (tp 0, cp 0) of the last stage holding the links.
struct Layout {
  int vision_dp = 1, audio_dp = 1, language_dp = 1;
  bool expert_parallel = false;
  int micro_batches = 1;  // Per language replica.
  int language_pp = 1;
  int vision_tp = 1;
  int vision_pp = 1;
  int vision_cp = 1;
  VisionSize vision;  // Its layers: one a stage.
  int language_tp = 1;
  int language_cp = 1;
  int64_t seq_length = 64;
  int vision_stage_ranks() const { return vision_dp * vision_tp * vision_cp; }
  int vision_ranks() const { return vision_stage_ranks() * vision_pp; }
  int replica_ranks() const { return language_tp * language_cp; }  // A language replica's.
  int world() const {
    return vision_ranks() + audio_dp + language_dp * replica_ranks() * language_pp;
  }
};

// The replicas a replica of a module with `own_dp` pairs with (parallel/bridge.h).
std::vector<int> Peers(int own, int own_dp, int peer_dp) {
  if (own_dp >= peer_dp) return {own / (own_dp / peer_dp)};
  std::vector<int> p;
  for (int r = own * (peer_dp / own_dp); r < (own + 1) * (peer_dp / own_dp); ++r) p.push_back(r);
  return p;
}

std::vector<TrainRun> TrainLayout(const Layout& layout) {
  std::vector<TrainRun> runs(layout.world());
  comm::InMemoryStore store;
  const int lang0 = layout.vision_ranks() + layout.audio_dp;
  comm::RunRanks(layout.world(), [&](int rank) {
    const bool vision = rank < layout.vision_ranks(), audio = !vision && rank < lang0;
    const bool language = !vision && !audio;
    const int lt = layout.language_tp, ld = layout.language_dp, lc = layout.language_cp;
    const int lr = layout.replica_ranks();
    const int vr = layout.vision_stage_ranks();
    const int stage = language ? (rank - lang0) / (ld * lr) : vision ? rank / vr : 0;
    const int first = vision ? stage * vr : audio ? layout.vision_ranks() : lang0 + stage * ld * lr;
    const int dp = vision ? layout.vision_dp : audio ? layout.audio_dp : ld;
    const int tp_size = vision ? layout.vision_tp : language ? lt : 1;
    const int cp_size = language ? lc : vision ? layout.vision_cp : 1;
    const int member = (rank - first) % tp_size, cp_member = (rank - first) / tp_size % cp_size;
    std::vector<comm::GroupSpec> specs;
    // Replicas (the same tp and cp member), tp members and cp members (the same replica), and
    // the replicas' cp members (the same tp member).
    std::vector<int> module_ranks, tp, cp, dp_cp, tp_cp;
    for (int d = 0; d < dp; ++d) {
      module_ranks.push_back(first + (d * cp_size + cp_member) * tp_size + member);
      for (int c = 0; c < cp_size; ++c)
        dp_cp.push_back(first + (d * cp_size + c) * tp_size + member);
    }
    for (int t = 0; t < tp_size; ++t) tp.push_back(rank - member + t);
    for (int c = 0; c < cp_size; ++c) cp.push_back(rank + (c - cp_member) * tp_size);
    for (int i = 0; i < tp_size * cp_size; ++i) {
      tp_cp.push_back(rank - member - cp_member * tp_size + i);
    }
    if (dp > 1) specs.push_back({.kind = "dp", .members = module_ranks});
    if (tp_size > 1) specs.push_back({.kind = "tp", .members = tp});
    if (cp_size > 1) {
      specs.push_back({.kind = "cp", .members = cp});
      specs.push_back({.kind = "dp_cp", .members = dp_cp});
      specs.push_back({.kind = "tp_cp", .members = tp_cp});
    }
    if (language && layout.expert_parallel) {
      specs.push_back({.kind = "ep", .members = lt > 1 ? tp : module_ranks});
      // The ranks holding the same experts: the replicas' cp members (the same tp member).
      const std::vector<int>& same = lt > 1 ? dp_cp : cp;
      if (same.size() > 1) specs.push_back({.kind = "expt_dp", .members = same});
    }
    if (language && layout.language_pp > 1) {
      std::vector<int> stages;
      for (int s = 0; s < layout.language_pp; ++s) {
        stages.push_back(rank + (s - stage) * ld * lr);
      }
      specs.push_back({.kind = "pp", .members = stages});
    }
    if (vision && layout.vision_pp > 1) {
      std::vector<int> stages;
      for (int s = 0; s < layout.vision_pp; ++s) stages.push_back(rank + (s - stage) * vr);
      specs.push_back({.kind = "pp", .members = stages});
    }
    struct End {
      ModelPart encoder;
      int peer_replica, peer_dp;
      std::string kind;
    };
    std::vector<End> ends;
    // The links' encoder ends: member (tp 0, cp 0) of the last stage.
    const int encoder_first[2] = {(layout.vision_pp - 1) * vr, layout.vision_ranks()};
    const int encoder_dp[2] = {layout.vision_dp, layout.audio_dp};
    const int encoder_stride[2] = {layout.vision_tp * layout.vision_cp, 1};
    for (int x = 0; x < 2; ++x) {
      for (int e = 0; e < encoder_dp[x]; ++e) {
        for (int l : Peers(e, encoder_dp[x], layout.language_dp)) {
          const int a = encoder_first[x] + e * encoder_stride[x], b = lang0 + l * lr;
          if (rank != a && rank != b) continue;
          const std::string kind = absl::StrCat("link_", x, "_", a, "_", b);
          specs.push_back({.kind = kind, .members = {a, b}});
          ends.push_back({.encoder = x == 0 ? ModelPart::kVision : ModelPart::kAudio,
                          .peer_replica = rank == a ? l : e,
                          .peer_dp = rank == a ? layout.language_dp : encoder_dp[x],
                          .kind = kind});
        }
      }
    }
    auto groups = comm::ProcessGroups::CreateGloo(
        specs, store, {.rank = rank, .timeout = absl::Seconds(60), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    TrainerOptions o = Options(layout.micro_batches, layout.seq_length);
    o.part = vision ? ModelPart::kVision : audio ? ModelPart::kAudio : ModelPart::kLanguage;
    o.dp = (*groups)->Get("dp");
    o.dp_cp = (*groups)->Get("dp_cp");
    o.groups = ModelGroupsOf(**groups);
    o.pp = (*groups)->Get("pp");
    if (language) o.expt_dp = (*groups)->Get("expt_dp");
    for (const End& end : ends) {
      o.links.push_back({.encoder = end.encoder,
                         .peer_replica = end.peer_replica,
                         .peer_dp = end.peer_dp,
                         .group = (*groups)->Get(end.kind)});
    }
    runs[rank] = Train(o, layout.vision);
  });
  return runs;
}

// Every rank of `layout` against the whole model on one rank with all the micro-batches.
void ExpectLikeOneRank(const Layout& layout) {
  const TrainRun want =
      Train(Options(layout.language_dp * layout.micro_batches, layout.seq_length), layout.vision);
  ASSERT_EQ(want.steps.size(), static_cast<size_t>(kSteps));
  const std::vector<TrainRun> got = TrainLayout(layout);
  const int lang0 = layout.vision_ranks() + layout.audio_dp;
  std::set<std::string> held;
  for (int rank = 0; rank < layout.world(); ++rank) {
    const TrainRun& run = got[rank];
    ASSERT_EQ(run.steps.size(), static_cast<size_t>(kSteps)) << "rank " << rank;
    const bool language = rank >= lang0;
    for (int i = 0; i < kSteps; ++i) {
      const StepMetrics &g = run.steps[i], &w = want.steps[i];
      EXPECT_NEAR(g.grad_norm, w.grad_norm, 1e-4 * w.grad_norm) << "rank " << rank << " step " << i;
      EXPECT_GT(w.grad_norm, 0.05);  // The clipping is active.
      if (!language) continue;
      EXPECT_EQ(g.labelled, w.labelled);
      EXPECT_EQ(g.tokens, w.tokens);
      EXPECT_NEAR(g.loss, w.loss, 1e-5 * w.loss) << "step " << i;
      EXPECT_NEAR(g.aux_loss, w.aux_loss, 1e-5 * w.aux_loss) << "step " << i;
      EXPECT_EQ(g.expert_load, w.expert_load) << "step " << i;
      EXPECT_EQ(g.expert_load_imbalance, w.expert_load_imbalance) << "step " << i;
      EXPECT_NEAR(g.model_flops, w.model_flops, 1e-6 * w.model_flops) << "step " << i;
      EXPECT_GT(w.model_flops, 0);
    }
    const std::string prefix = rank < layout.vision_ranks() ? "vision."
                               : !language                  ? "audio."
                                                            : "language.";
    int checked = 0, sharded = 0;
    for (const auto& [name, values] : want.params) {
      if (name.rfind(prefix, 0) != 0) continue;
      if ((layout.language_pp > 1 || layout.vision_pp > 1) && !run.params.contains(name)) {
        continue;  // Another stage's.
      }
      ++checked;
      held.insert(name);
      ASSERT_EQ(run.params.count(name), 1u) << name << " on rank " << rank;
      // tp slices, a rank's experts.
      const std::vector<float> slice = testing::SliceOf(values, run.specs.at(name));
      sharded += run.specs.at(name).shards.empty() ? 0 : 1;
      const std::vector<float>& v = run.params.at(name);
      ASSERT_EQ(v.size(), slice.size()) << name;
      EXPECT_LT(RelativeError(v, slice), 1e-5) << name << " on rank " << rank;
    }
    EXPECT_EQ(static_cast<size_t>(checked), run.params.size()) << "rank " << rank;
    if (rank < layout.vision_ranks() && layout.vision_tp > 1) {
      EXPECT_GE(sharded, 4) << rank;
    }
  }
  EXPECT_EQ(held.size(), want.params.size());  // Every parameter on some rank.
}

TEST(TrainerModulesTest, EncodersFanOutToExpertParallelLanguageRanks) {
  ExpectLikeOneRank({.vision_dp = 1, .audio_dp = 1, .language_dp = 2, .expert_parallel = true});
}

// The language model in two pipeline stages of two expert-parallel replicas each, the encoders
// linked to the first stage only: 2 micro-batches per replica in the 1F1B schedule.
TEST(TrainerModulesTest, EncodersFeedTheFirstOfTwoPipelineStages) {
  ExpectLikeOneRank({.vision_dp = 1,
                     .audio_dp = 2,
                     .language_dp = 2,
                     .expert_parallel = true,
                     .micro_batches = 2,
                     .language_pp = 2});
}

// A tensor-parallel vision encoder (one replica of two members, member 0 linked to both
// language replicas) beside the audio encoder.
TEST(TrainerModulesTest, TensorParallelEncoderFansOut) {
  ExpectLikeOneRank({.vision_dp = 1, .audio_dp = 1, .language_dp = 2, .vision_tp = 2});
}

// examples/mimo-cpu-8-tp.yaml's layout: vision tp 2, audio dp 2, the language model tp 2 x dp 2
// with each replica's experts split over its tp members (ep 2, expt_dp 2).
TEST(TrainerModulesTest, TheTensorParallelExamplesLayout) {
  ExpectLikeOneRank({.vision_dp = 1,
                     .audio_dp = 2,
                     .language_dp = 2,
                     .expert_parallel = true,
                     .micro_batches = 2,
                     .vision_tp = 2,
                     .language_tp = 2});
}

// The language model context parallel (cp 2 x dp 2, experts split over the replicas): member
// (tp 0, cp 0) of each replica holds the links and broadcasts the modality rows over cp, the
// members' gradients of them summed before they go back. seq_length 24: every sample fills it
// (a multiple of 2 cp, so no padding that the MoE layers would route).
TEST(TrainerModulesTest, EncodersFeedAContextParallelLanguageModel) {
  ExpectLikeOneRank({.vision_dp = 1,
                     .audio_dp = 2,
                     .language_dp = 2,
                     .expert_parallel = true,
                     .micro_batches = 2,
                     .language_cp = 2,
                     .seq_length = 24});
}

// tp 2 x cp 2 of one replica in two pipeline stages (experts split over tp, expt_dp over cp), a
// tensor-parallel vision encoder.
TEST(TrainerModulesTest, EncodersFeedATensorContextPipelineParallelLanguageModel) {
  ExpectLikeOneRank({.vision_dp = 1,
                     .audio_dp = 1,
                     .language_dp = 1,
                     .expert_parallel = true,
                     .micro_batches = 2,
                     .language_pp = 2,
                     .vision_tp = 2,
                     .language_tp = 2,
                     .language_cp = 2,
                     .seq_length = 24});
}

// The vision encoder in two pipeline stages of two tp members (the last stage's member 0 linked
// to both language replicas), its rows and their gradients sent between the stages.
TEST(TrainerModulesTest, PipelineParallelEncoderFansOut) {
  ExpectLikeOneRank({.vision_dp = 1,
                     .audio_dp = 1,
                     .language_dp = 2,
                     .micro_batches = 2,
                     .vision_tp = 2,
                     .vision_pp = 2,
                     .vision = {.layers = 2}});
}

// A context-parallel vision encoder (one replica of two members attending with a head each,
// member 0 linked to both language replicas) beside the audio encoder. Images of 9 patches:
// an odd number of images pads the rows to the members' equal blocks.
TEST(TrainerModulesTest, ContextParallelEncoderFansOut) {
  ExpectLikeOneRank({.vision_dp = 1,
                     .audio_dp = 1,
                     .language_dp = 2,
                     .micro_batches = 2,
                     .vision_cp = 2,
                     .vision = {.image_size = 12}});
}

// Two replicas of a context-parallel vision encoder (dp 2 x cp 2: gradients summed over the
// four ranks of dp x cp), each linked to its language replica.
TEST(TrainerModulesTest, ContextParallelEncoderReplicas) {
  ExpectLikeOneRank({.vision_dp = 2,
                     .audio_dp = 1,
                     .language_dp = 2,
                     .micro_batches = 2,
                     .vision_cp = 2,
                     .vision = {.image_size = 12}});
}

// The vision encoder tp 2 x cp 2 in two pipeline stages (4 heads: one a member), its rows
// padded to 4 equal blocks and sent between the stages.
TEST(TrainerModulesTest, TensorContextPipelineParallelEncoderFansOut) {
  ExpectLikeOneRank({.vision_dp = 1,
                     .audio_dp = 1,
                     .language_dp = 2,
                     .micro_batches = 2,
                     .vision_tp = 2,
                     .vision_pp = 2,
                     .vision_cp = 2,
                     .vision = {.layers = 2, .heads = 4, .image_size = 12}});
}

TEST(TrainerModulesTest, EncoderReplicasFanInToOneLanguageRank) {
  ExpectLikeOneRank({.vision_dp = 2, .audio_dp = 1, .language_dp = 1, .micro_batches = 2});
}

TEST(TrainerModulesTest, RefusesLinksTheLayoutDoesNotPair) {
  auto ops = kernels::NewCpuOps();
  comm::InMemoryStore store;
  // The only language replica given a link from vision replica 1 of 2 alone (the layout pairs it
  // with both), then one with its vision link right but no audio link.
  std::vector<std::string> errors(2);
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "link", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    if (rank == 0) return;
    TrainerOptions o = Options(1);
    o.part = ModelPart::kLanguage;
    o.links = {{.encoder = ModelPart::kVision,
                .peer_replica = 1,
                .peer_dp = 2,
                .group = (*groups)->Get("link")}};
    errors[0] = std::string(Trainer::Create(*ops, Model(), o).status().message());
    o.links[0].peer_replica = 0;
    o.links[0].peer_dp = 1;
    errors[1] = std::string(Trainer::Create(*ops, Model(), o).status().message());
  });
  EXPECT_NE(errors[0].find("reach replicas [1] of 2; the layout pairs it with [0,1]"),
            std::string::npos)
      << errors[0];
  EXPECT_NE(errors[1].find("the audio links: none given"), std::string::npos) << errors[1];
}

}  // namespace
}  // namespace mimo::worker
