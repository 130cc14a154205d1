// Dumps a single-rank training run for the PyTorch reference (bench/reference/): the model and
// optimizer configuration (config.json), every parameter's initial fp32 value (init.bin), every
// step's packed micro-batches (batches.bin), every MoE layer's routing of them (routing.bin) and
// the C++ run's per-step metrics (losses.json).
//   reference_dump SPEC --out DIR [--steps N] [--device cpu|cuda] [--deterministic]
//                  [--layout one|dp2|ep2]
// The spec's model, batch sizes, data and optimizer with every module on one rank, in fp32. With
// --layout dp2 or ep2 the same job also trains on two ranks (threads: Gloo on the CPU, NCCL on
// cuda:0 and cuda:1) as two data-parallel replicas, each taking half of every step's
// micro-batches (ep2: the experts split over the two as well), and their per-step metrics go to
// losses_dp2.json or losses_ep2.json: the same steps on the same data as the one-rank dump, for
// the reference to check the parallel run against (mimo_reference.py --losses).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "common/status_macros.h"
#include "data/micro_batch.h"
#include "nlohmann/json.hpp"
#include "tools/mimoctl/spec_file.h"
#include "worker/model_spec.h"
#include "worker/train_job.h"
#include "worker/trainer.h"
#if MIMO_REFERENCE_DUMP_CUDA
#include "kernels/cuda_ops.h"
#endif

namespace mimo {
namespace {

using nlohmann::ordered_json;

// The tensor archive bench/reference/archive.py reads: "MIMOTEN1", then per tensor the name
// (uint32 length + bytes), dtype (0 fp32, 1 int32), rank, int64 dims, row-major data.
class Archive {
 public:
  explicit Archive(const std::string& path) : out_(path, std::ios::binary) { out_ << "MIMOTEN1"; }
  template <typename T>
  void Add(const std::string& name, const std::vector<int64_t>& dims, const T* data) {
    static_assert(sizeof(T) == 4);
    const uint32_t n = static_cast<uint32_t>(name.size());
    out_.write(reinterpret_cast<const char*>(&n), 4);
    out_ << name;
    const uint8_t head[2] = {std::is_same_v<T, float> ? uint8_t{0} : uint8_t{1},
                             static_cast<uint8_t>(dims.size())};
    out_.write(reinterpret_cast<const char*>(head), 2);
    int64_t count = 1;
    for (int64_t d : dims) {
      out_.write(reinterpret_cast<const char*>(&d), 8);
      count *= d;
    }
    out_.write(reinterpret_cast<const char*>(data), count * 4);
  }
  template <typename T>
  void Add(const std::string& name, const std::vector<T>& values) {
    Add(name, {static_cast<int64_t>(values.size())}, values.data());
  }
  bool ok() { return static_cast<bool>(out_.flush()); }

 private:
  std::ofstream out_;
};

ordered_json TransformerJson(const TransformerConfig& t) {
  const char* norm = t.norm == NormKind::kRmsNorm ? "rmsnorm" : "layernorm";
  const char* act = t.activation == MlpActivation::kSwiglu ? "swiglu"
                    : t.activation == MlpActivation::kGelu ? "gelu"
                                                           : "gelu_tanh";
  return {{"num_layers", t.num_layers},
          {"hidden_size", t.hidden_size},
          {"num_attention_heads", t.num_attention_heads},
          {"num_query_groups", t.query_groups()},
          {"kv_channels", t.head_dim()},
          {"ffn_hidden_size", t.ffn_hidden_size},
          {"norm", norm},
          {"norm_epsilon", t.norm_epsilon},
          {"activation", act},
          {"add_bias_linear", t.add_bias_linear},
          {"add_qkv_bias", t.add_qkv_bias},
          {"causal", t.causal},
          {"rotary", t.rotary},
          {"rotary_dim", t.rotary_dim},
          {"rotary_base", t.rotary_base},
          {"init_std", t.init_std}};
}

ordered_json EncoderJson(const std::optional<ModalityEncoderConfig>& e) {
  if (!e.has_value()) return nullptr;
  return {{"input", e->input == EncoderInput::kImages ? "images" : "audio"},
          {"image_size", e->image_size},
          {"patch_size", e->patch_size},
          {"num_channels", e->num_channels},
          {"num_mel_bins", e->num_mel_bins},
          {"frames_per_token", e->frames_per_token},
          {"max_frames", e->max_frames},
          {"transformer", TransformerJson(e->transformer)},
          {"projector",
           {{"kind", e->projector.kind == ProjectorKind::kLinear ? "linear" : "mlp"},
            {"hidden_size", e->projector.hidden_size}}},
          {"output_size", e->output_size}};
}

ordered_json ConfigJson(const MimoModelConfig& c, const worker::TrainerOptions& o, int steps) {
  ordered_json moe = nullptr;
  if (c.language.moe.has_value()) {
    const MoeConfig& m = *c.language.moe;
    moe = {{"experts", m.router.experts},
           {"top_k", m.router.top_k},
           {"score", m.router.score == kernels::RouterScore::kSigmoid ? "sigmoid" : "softmax"},
           {"normalize", m.router.normalize},
           {"scaling_factor", m.router.scaling_factor},
           {"num_groups", m.router.num_groups},
           {"group_top_k", m.router.group_top_k},
           {"aux_loss_coeff", m.aux_loss_coeff},
           {"per_sequence_aux_loss", m.per_sequence_aux_loss},
           {"z_loss_coeff", m.z_loss_coeff},
           {"expert_ffn_hidden_size", m.expert_ffn_hidden_size > 0
                                          ? m.expert_ffn_hidden_size
                                          : c.language.transformer.ffn_hidden_size},
           {"shared_expert_ffn_hidden_size", m.shared_expert_ffn_hidden_size},
           {"capacity_factor", m.capacity_factor},
           {"expert_bias", m.expert_bias},
           {"align", m.align}};
  }
  const OptimizerConfig& opt = o.optimizer;
  return {{"seed", o.seed},
          {"steps", steps},
          {"micro_batches", o.micro_batches},
          {"micro_batch_size", o.micro_batch_size},
          {"seq_length", o.seq_length},
          {"optimizer",
           {{"lr", opt.lr},
            {"min_lr", opt.min_lr},
            {"weight_decay", opt.weight_decay},
            {"beta1", opt.beta1},
            {"beta2", opt.beta2},
            {"eps", opt.eps},
            {"clip_grad", opt.clip_grad},
            {"warmup_steps", opt.warmup_steps},
            {"decay_steps", opt.decay_steps}}},
          {"language",
           {{"transformer", TransformerJson(c.language.transformer)},
            {"vocab_size", c.language.vocab_size},
            {"moe_layer_freq", c.language.moe_layer_freq},
            {"moe", moe}}},
          {"vision", EncoderJson(c.vision)},
          {"audio", EncoderJson(c.audio)}};
}

// One step's metrics as losses.json holds them.
ordered_json StepJson(const worker::StepMetrics& m) {
  return {{"step", m.step},           {"loss", m.loss}, {"aux_loss", m.aux_loss},
          {"grad_norm", m.grad_norm}, {"lr", m.lr},     {"skipped", m.skipped}};
}

absl::StatusOr<std::unique_ptr<kernels::Ops>> NewOps(bool cuda, int device, bool deterministic) {
  if (!cuda) return kernels::NewCpuOps();
#if MIMO_REFERENCE_DUMP_CUDA
  return kernels::NewCudaOps({.device = device, .deterministic = deterministic});
#else
  (void)device;
  (void)deterministic;
  return absl::FailedPreconditionError("built without CUDA");
#endif
}

// Rank `rank` of the two-rank run of `layout` ("dp2" or "ep2"): its per-step metrics.
absl::StatusOr<ordered_json> TrainRank(const v1::JobSpec& spec, const MimoModelConfig& config,
                                       const std::string& layout, int steps, bool cuda,
                                       bool deterministic, int rank, comm::KeyValueStore& store) {
  std::vector<comm::GroupSpec> groups = {{.kind = "dp", .members = {0, 1}}};
  if (layout == "ep2") groups.push_back({.kind = "ep", .members = {0, 1}});
  const comm::ProcessGroupsOptions po{
      .rank = rank, .timeout = absl::Seconds(60), .hostname = "127.0.0.1", .cuda_device = rank};
  std::unique_ptr<comm::ProcessGroups> pg;
  if (cuda) {
#if MIMO_REFERENCE_DUMP_CUDA
    MIMO_ASSIGN_OR_RETURN(pg, comm::ProcessGroups::CreateNccl(groups, store, po));
#else
    return absl::FailedPreconditionError("built without CUDA");
#endif
  } else {
    MIMO_ASSIGN_OR_RETURN(pg, comm::ProcessGroups::CreateGloo(groups, store, po));
  }
  MIMO_ASSIGN_OR_RETURN(std::unique_ptr<kernels::Ops> ops, NewOps(cuda, rank, deterministic));
  MIMO_ASSIGN_OR_RETURN(worker::TrainerOptions options, worker::TrainerOptionsFromSpec(spec, 2));
  options.dp = pg->Get("dp");
  if (layout == "ep2") options.groups.ep = pg->Get("ep");
  MIMO_ASSIGN_OR_RETURN(auto trainer, worker::Trainer::Create(*ops, config, options));
  ordered_json losses = ordered_json::array();
  for (int s = 1; s <= steps; ++s) {
    absl::StatusOr<worker::StepMetrics> m = trainer->Step();
    if (!m.ok()) {
      pg->AbortAll();  // The peer then fails at once instead of waiting out the timeout.
      return m.status();
    }
    losses.push_back(StepJson(*m));
  }
  return losses;
}

// The two-rank run of `layout`: rank 0's metrics, written to losses_<layout>.json in `dir`.
absl::Status RunTwoRanks(const v1::JobSpec& spec, const MimoModelConfig& config,
                         const std::string& layout, int steps, bool cuda, bool deterministic,
                         const std::filesystem::path& dir) {
  std::vector<absl::StatusOr<ordered_json>> got(2, absl::UnknownError("not run"));
  comm::InMemoryStore store;
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      got[rank] = TrainRank(spec, config, layout, steps, cuda, deterministic, rank, store);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int rank = 0; rank < 2; ++rank) {
    if (!got[rank].ok()) {
      return absl::Status(got[rank].status().code(),
                          absl::StrCat(layout, " rank ", rank, ": ", got[rank].status().message()));
    }
  }
  std::ofstream(dir / absl::StrCat("losses_", layout, ".json")) << got[0]->dump(1) << "\n";
  const ordered_json& last = got[0]->back();
  std::cerr << layout << " step " << steps << ": loss " << last["loss"].get<double>()
            << ", grad norm " << last["grad_norm"].get<double>() << "\n";
  return absl::OkStatus();
}

absl::Status Run(const std::string& spec_path, const std::string& out, int steps, bool cuda,
                 bool deterministic, const std::string& layout) {
  MIMO_ASSIGN_OR_RETURN(const v1::JobSpec spec, tools::ReadJobSpecFile(spec_path));
  MIMO_ASSIGN_OR_RETURN(const MimoModelConfig config,
                        worker::MimoModelConfigFromSpec(spec, kernels::DType::kF32));
  MIMO_ASSIGN_OR_RETURN(worker::TrainerOptions options, worker::TrainerOptionsFromSpec(spec, 1));
  MIMO_ASSIGN_OR_RETURN(std::unique_ptr<kernels::Ops> ops, NewOps(cuda, 0, deterministic));
  MIMO_ASSIGN_OR_RETURN(auto trainer, worker::Trainer::Create(*ops, config, options));
  options = trainer->options();
  std::filesystem::create_directories(out);
  const std::filesystem::path dir(out);
  std::ofstream(dir / "config.json") << ConfigJson(config, options, steps).dump(1) << "\n";

  Archive init((dir / "init.bin").string());
  std::vector<Parameter*> params;
  trainer->AppendParameters(params);
  for (Parameter* p : params) {
    std::vector<float> values(p->numel());
    MIMO_RETURN_IF_ERROR(ops->CopyToHost(values.data(), p->master().data(), 4 * values.size()));
    const kernels::Shape& shape = p->master().shape();
    std::vector<int64_t> dims(shape.begin(), shape.end());
    init.Add(p->name(), dims, values.data());
  }
  if (!init.ok()) return absl::InternalError("cannot write init.bin");

  // The batches Trainer::Step packs (one rank: micro-batch i of a step takes samples
  // [base + i * mbs, base + (i + 1) * mbs)).
  Archive batches((dir / "batches.bin").string());
  const data::MicroBatchOptions pack{
      .seq_length = options.seq_length,
      .image_tokens = config.vision.has_value() ? config.vision->max_tokens() : 0,
      .frames_per_token = config.audio.has_value() ? config.audio->frames_per_token : 0};
  const int64_t mbs = options.micro_batch_size;
  // Every MoE layer's routing of every micro-batch (routing.bin), for the reference to replay.
  Archive routing((dir / "routing.bin").string());
  std::vector<RoutingRecord> log;
  trainer->set_routing_log(&log);
  ordered_json losses = ordered_json::array();
  for (int s = 1; s <= steps; ++s) {
    const int64_t base = (s - 1) * options.micro_batches * mbs;
    for (int64_t i = 0; i < options.micro_batches; ++i) {
      std::vector<data::Sample> samples;
      for (int64_t j = 0; j < mbs; ++j) {
        MIMO_ASSIGN_OR_RETURN(data::Sample sample, trainer->source().Get(base + i * mbs + j));
        samples.push_back(std::move(sample));
      }
      MIMO_ASSIGN_OR_RETURN(const data::HostMicroBatch b,
                            data::PackSamples(samples, pack, trainer->tokenizer()));
      const std::string at = absl::StrCat("s", s, ".m", i, ".");
      batches.Add(at + "tokens", b.tokens);
      batches.Add(at + "labels", b.labels);
      batches.Add(at + "lengths", b.lengths);
      // The samples' images and audio, one after another (as the upload copies them).
      std::vector<float> images, audio;
      for (const data::Sample& sample : samples) {
        images.insert(images.end(), sample.image.begin(), sample.image.end());
        if (sample.audio_frames > 0)
          audio.insert(audio.end(), sample.audio.begin(), sample.audio.end());
      }
      if (config.vision.has_value() && b.num_images > 0) {
        const ModalityEncoderConfig& v = *config.vision;
        if (static_cast<int64_t>(images.size()) !=
            b.num_images * v.num_channels * v.image_size * v.image_size) {
          return absl::InvalidArgumentError(
              absl::StrCat("step ", s, " micro-batch ", i, ": ", images.size(),
                           " image values for ", b.num_images, " images of ", v.num_channels, " x ",
                           v.image_size, " x ", v.image_size));
        }
        batches.Add(at + "images", {b.num_images, v.num_channels, v.image_size, v.image_size},
                    images.data());
        batches.Add(at + "vision_positions", b.vision_positions);
      }
      if (config.audio.has_value() && !b.audio_frames.empty()) {
        const int64_t bins = config.audio->num_mel_bins;
        batches.Add(at + "audio", {static_cast<int64_t>(audio.size()) / bins, bins}, audio.data());
        batches.Add(at + "audio_frames", b.audio_frames);
        batches.Add(at + "audio_positions", b.audio_positions);
      }
    }
    MIMO_ASSIGN_OR_RETURN(const worker::StepMetrics m, trainer->Step());
    // Record j of step s: "sS.rJ.layer" (its layer number), ".indices" and ".dispatched" (T, k).
    for (size_t j = 0; j < log.size(); ++j) {
      const std::string at = absl::StrCat("s", s, ".r", j, ".");
      const std::vector<int32_t> layer = {log[j].layer_number};
      routing.Add(at + "layer", layer);
      for (const auto& [what, t] :
           {std::pair<const char*, const kernels::Tensor*>{"indices", &log[j].indices},
            {"dispatched", &log[j].dispatched}}) {
        std::vector<int32_t> values(t->numel());
        MIMO_RETURN_IF_ERROR(ops->CopyToHost(values.data(), t->data(), 4 * values.size()));
        routing.Add(at + what, {t->size(0), t->size(1)}, values.data());
      }
    }
    log.clear();
    losses.push_back(StepJson(m));
    if (s == 1 || s % 20 == 0) {
      std::cerr << "step " << s << ": loss " << m.loss << ", grad norm " << m.grad_norm << "\n";
    }
  }
  if (!batches.ok()) return absl::InternalError("cannot write batches.bin");
  if (!routing.ok()) return absl::InternalError("cannot write routing.bin");
  std::ofstream(dir / "losses.json") << losses.dump(1) << "\n";
  if (layout == "one") return absl::OkStatus();
  return RunTwoRanks(spec, config, layout, steps, cuda, deterministic, dir);
}

}  // namespace
}  // namespace mimo

int main(int argc, char** argv) {
  CLI::App app("Dumps a single-rank fp32 training run for the PyTorch reference");
  std::string spec, out, device = "cpu", layout = "one";
  int steps = 200;
  bool deterministic = false;
  app.add_option("SPEC", spec, "job spec (.yaml/.json): model, batches, data, optimizer")
      ->required();
  app.add_option("--out", out, "folder for config.json, init.bin, batches.bin, losses.json")
      ->required();
  app.add_option("--steps", steps, "optimizer steps")->check(CLI::PositiveNumber);
  app.add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_flag("--deterministic", deterministic,
               "CUDA: bitwise reproducible kernels (kernels::CudaOpsOptions::deterministic), so "
               "that a rerun dumps the same losses");
  app.add_option("--layout", layout,
                 "also train on two ranks: dp2 (data parallel) or ep2 (and expert parallel), "
                 "their metrics in losses_LAYOUT.json")
      ->check(CLI::IsMember({"one", "dp2", "ep2"}));
  CLI11_PARSE(app, argc, argv);
  const absl::Status status = mimo::Run(spec, out, steps, device == "cuda", deterministic, layout);
  if (!status.ok()) {
    std::cerr << "error: " << status << "\n";
    return 1;
  }
  return 0;
}
