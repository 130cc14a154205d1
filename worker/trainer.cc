// Trainer::Step: pack, upload, forward/backward per micro-batch (embeddings and their gradients
// over the bridge links when the modules live on their own ranks), the gradient sums, the norm
// over the whole model, the optimizer and the metrics.
#include "worker/trainer.h"

#include <algorithm>
#include <chrono>
#include <type_traits>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/status_macros.h"
#include "data/byte_tokenizer.h"
#include "data/micro_batch.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/synthetic_source.h"
#include "mimo/comm_type.h"
#include "mimo/expert_load.h"
#include "mimo/model_flops.h"
#include "mimo/pipeline_schedule.h"
#include "mimo/tensor_checks.h"
#include "worker/bridge_link.h"
#include "worker/device_batch.h"
#include "worker/group_reduce.h"
#include "worker/rank_modules.h"
#include "worker/trainer_parts.h"

namespace mimo::worker {

using kernels::Tensor;
using trainer_parts::EncoderIndex;
using trainer_parts::EncoderName;
using trainer_parts::IsEncoder;
using trainer_parts::kAudio;
using trainer_parts::kVision;
using trainer_parts::SecondsSince;

Trainer::Trainer(kernels::Ops& ops, const MimoModelConfig& config, const TrainerOptions& options,
                 std::unique_ptr<Modules> modules, GradientUpdate update,
                 std::vector<Parameter*> dense, std::vector<Parameter*> experts)
    : ops_(ops),
      config_(config),
      options_(options),
      modules_(std::move(modules)),
      update_(std::move(update)),
      dense_(std::move(dense)),
      experts_(std::move(experts)) {}

GradientReadyHook* Trainer::GradientsReadyHook() const {
  return options_.overlap_grad_reduce ? update_.sync.get() : nullptr;
}

// The routed experts see every dp rank's tokens through the all-to-all: their gradients are
// summed over the ranks holding the same experts only (expt_dp; dp itself without EP and ETP).
comm::Communicator* Trainer::ExpertDataParallelGroup() const {
  if (options_.expt_dp == nullptr && ModelGroups::Size(options_.groups.ep) == 1 &&
      ModelGroups::Size(options_.groups.expt_tp) == 1) {
    return GradientGroup();
  }
  return options_.expt_dp;
}

std::vector<comm::Communicator*> Trainer::ExpertNormGroups() const {
  if (modules_->language.empty()) return {};
  return {options_.groups.ep, options_.groups.expt_tp};
}

std::vector<MoeLayer*> Trainer::MoeLayers() const { return modules_->moe_layers(); }

void Trainer::SetDropoutStream(StepContext& ctx, int64_t base, int64_t i) const {
  const int64_t samples = modules_->language_dp * options_.micro_batch_size;  // A global one's.
  const auto micro_batch = static_cast<uint64_t>(base / samples + i);
  ctx.dropout_seed = options_.seed + 100 * static_cast<uint64_t>(ModelGroups::Rank(options_.pp));
  ctx.dropout_kind = parallel::RngStreamKind::kDataParallel;
  ctx.dropout_offset = micro_batch << 40;
}

Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(kernels::Ops& ops,
                                                         const MimoModelConfig& model,
                                                         const TrainerOptions& options) {
  if (options.micro_batch_size < 1 || options.micro_batches < 1 || options.seq_length < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TrainerOptions: needs micro_batch_size, micro_batches and seq_length >= 1, got ",
        options.micro_batch_size, ", ", options.micro_batches, ", ", options.seq_length));
  }
  MIMO_RETURN_IF_ERROR(ValidateMimoModelConfig(model));
  TrainerOptions o = options;
  if (model.vision.has_value()) {
    o.data.image_size = model.vision->image_size;
    o.data.num_channels = model.vision->num_channels;
  }
  o.data.num_mel_bins = model.audio.has_value() ? model.audio->num_mel_bins : 0;
  if (model.audio.has_value()) {
    o.data.frames_per_token = model.audio->frames_per_token;
    o.data.max_frames = model.audio->max_frames;
  }
  if (o.webdataset.has_value()) {
    // Images are read only when the model has a vision encoder, and decoded only where its first
    // stage runs: other ranks keep and skip the same samples but only count their image tokens.
    o.webdataset->image_size = model.vision.has_value() ? o.data.image_size : 0;
    o.webdataset->decode_images = o.part == ModelPart::kWhole ||
                                  (o.part == ModelPart::kVision && ModelGroups::Rank(o.pp) == 0);
    o.webdataset->num_channels = o.data.num_channels;
    o.webdataset->num_mel_bins = o.data.num_mel_bins;
    o.webdataset->frames_per_token = o.data.frames_per_token;
    o.webdataset->max_frames = o.data.max_frames;
  }
  if (o.start_position < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("TrainerOptions: start_position ", o.start_position, " < 0"));
  }
  std::unique_ptr<data::SampleSource> source;
  std::string data_summary;
  if (o.webdataset.has_value()) {
    MIMO_ASSIGN_OR_RETURN(std::unique_ptr<data::WebDatasetSource> shards,
                          data::WebDatasetSource::Open(*o.webdataset));
    const data::WebDatasetStats& stats = shards->stats();
    data_summary =
        absl::StrCat("data: ", stats.shards, " shard(s), ", stats.members, " member(s), ",
                     stats.samples, " sample(s) kept; skipped ", stats.without_image,
                     " without an image and ", stats.without_caption, " without a caption");
    if (stats.unresolved_links > 0) {
      absl::StrAppend(&data_summary, "; left out ", stats.unresolved_links,
                      " link(s) naming no member, the first ", stats.first_unresolved_link);
    }
    source = std::move(shards);
  } else {
    MIMO_ASSIGN_OR_RETURN(source, data::SyntheticSource::Create(o.data));
  }
  std::unique_ptr<data::Tokenizer> owned_tokenizer;
  if (!o.tokenizer_model.empty()) {
    MIMO_ASSIGN_OR_RETURN(owned_tokenizer, data::SentencePieceTokenizer::Load(o.tokenizer_model));
  }
  const data::Tokenizer& tokenizer =
      owned_tokenizer != nullptr ? *owned_tokenizer
                                 : static_cast<const data::Tokenizer&>(data::DefaultTokenizer());
  if (tokenizer.vocab_size() > model.language.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the tokenizer's ", tokenizer.vocab_size(), " ids (with the image and audio placeholders",
        o.tokenizer_model.empty() ? "" : absl::StrCat("; SentencePiece model ", o.tokenizer_model),
        ") do not fit the language model's vocab_size ", model.language.vocab_size));
  }
  const bool has[2] = {model.vision.has_value(), model.audio.has_value()};
  const int dp_size = ModelGroups::Size(o.dp), dp_rank = ModelGroups::Rank(o.dp);
  auto modules = std::make_unique<Modules>();
  for (const BridgeEnd& l : o.links) {
    if (!IsEncoder(l.encoder) || !has[EncoderIndex(l.encoder)]) {
      return absl::InvalidArgumentError(
          "TrainerOptions: a link for an encoder the model does not have");
    }
    modules->links[EncoderIndex(l.encoder)].push_back(l);
  }
  const bool language = o.part == ModelPart::kWhole || o.part == ModelPart::kLanguage;
  if (o.part == ModelPart::kWhole && !o.links.empty()) {
    return absl::InvalidArgumentError("TrainerOptions: the whole model on a rank takes no links");
  }
  const PipelineStage stage{.index = ModelGroups::Rank(o.pp), .count = ModelGroups::Size(o.pp)};
  if (o.virtual_stages < 1 ||
      (o.virtual_stages > 1 && (!language || stage.count < 2 || o.micro_batches % stage.count))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TrainerOptions: ", o.virtual_stages, " virtual pipeline stages need a language model in ",
        "2 or more pipeline stages and micro-batches a multiple of them, got ", stage.count,
        " stages and ", o.micro_batches, " micro-batches", language ? "" : " on an encoder rank"));
  }
  const int cp = ModelGroups::Size(o.groups.cp);
  if (cp > 1) {
    if (ModelGroups::Size(o.dp_cp) != cp * dp_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TrainerOptions: context parallelism over ", cp, " ranks needs dp_cp (the ", cp * dp_size,
          " ranks of cp x dp), got ", ModelGroups::Size(o.dp_cp), " members"));
    }
  }
  if (language) {
    modules->language_dp = dp_size;
    for (int x : {kVision, kAudio}) {
      modules->encoder_dp[x] = dp_size;  // kWhole: the encoders are replicated with the rest.
      if (!has[x] || o.part == ModelPart::kWhole) continue;
      if (ModelGroups::Rank(o.groups.tp) != 0 || ModelGroups::Rank(o.groups.cp) != 0 ||
          !stage.first()) {
        // Only member (tp 0, cp 0) of the first stage holds the links (parallel/bridge.h).
        if (!modules->links[x].empty()) {
          return absl::InvalidArgumentError(
              "TrainerOptions: links on a language rank other than member 0 of its first "
              "pipeline stage's tp and cp groups");
        }
        continue;
      }
      MIMO_RETURN_IF_ERROR(CheckLinks(modules->links[x], EncoderName(x), false, dp_rank, dp_size,
                                      o.micro_batch_size));
      modules->encoder_dp[x] = modules->links[x][0].peer_dp;
    }
  } else {
    const int x = EncoderIndex(o.part);
    if (!has[x]) {
      return absl::InvalidArgumentError(absl::StrCat("TrainerOptions: the part is the ",
                                                     EncoderName(x),
                                                     " encoder, which the model does not have"));
    }
    // Only member (tp 0, cp 0) of the last pipeline stage holds links (parallel/bridge.h); it
    // tells the others the language module's replicas.
    int64_t language_dp[1] = {0};
    if (ModelGroups::Rank(o.groups.tp) == 0 && ModelGroups::Rank(o.groups.cp) == 0 &&
        stage.last()) {
      MIMO_RETURN_IF_ERROR(CheckLinks(modules->links[x], EncoderName(x), true, dp_rank, dp_size,
                                      o.micro_batch_size));
      language_dp[0] = modules->links[x][0].peer_dp;
    } else if (!modules->links[x].empty()) {
      return absl::InvalidArgumentError(
          "TrainerOptions: links on an encoder rank other than member 0 of its last pipeline "
          "stage's tp and cp groups");
    }
    for (comm::Communicator* group : {o.groups.tp, o.groups.cp, o.pp}) {
      if (ModelGroups::Size(group) > 1) {
        MIMO_RETURN_IF_ERROR(SumOverGroup(ops, *group, language_dp));
      }
    }
    modules->language_dp = static_cast<int>(language_dp[0]);
    modules->encoder_dp[x] = dp_size;
  }
  // The modules are built as MimoModel builds them (the same names, so the same initial values).
  MIMO_ASSIGN_OR_RETURN(RankModules built,
                        BuildRankModules(ops, model,
                                         {.part = o.part,
                                          .groups = o.groups,
                                          .stage = stage,
                                          .chunks = language ? o.virtual_stages : 1,
                                          .seed = o.seed}));
  static_cast<RankModules&>(*modules) = std::move(built);
  // Shared word embeddings over stages: the first and last stages sum their copies' gradients.
  Parameter* shared_copy = trainer_parts::SharedEmbeddingsCopy(modules->language);
  if (shared_copy != nullptr && ModelGroups::Size(o.embd) != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TrainerOptions: shared word embeddings over ", stage.count,
        " pipeline stages need the embedding group of the first and last stage (embd, 2 "
        "members), got ",
        ModelGroups::Size(o.embd)));
  }
  std::vector<Parameter*> experts, dense;
  for (MoeLayer* layer : modules->moe_layers()) layer->AppendExpertParameters(experts);
  // The order the backward finishes the parameters: the language model's from its output
  // layer back, then each encoder's from its projector back.
  std::vector<Parameter*> order;
  for (const auto& chunk : modules->language) chunk->AppendParameters(order);
  std::reverse(order.begin(), order.end());
  for (const auto& e : modules->encoders) {
    if (e == nullptr) continue;
    std::vector<Parameter*> encoder;
    e->AppendParameters(encoder);
    order.insert(order.end(), encoder.rbegin(), encoder.rend());
  }
  const absl::flat_hash_set<const Parameter*> routed(experts.begin(), experts.end());
  // Both sets in that order: their buckets fill in the order the backward finishes them.
  experts.clear();
  for (Parameter* p : order) (routed.contains(p) ? experts : dense).push_back(p);
  std::unique_ptr<Trainer> trainer(new Trainer(ops, model, o, std::move(modules), GradientUpdate{},
                                               std::move(dense), std::move(experts)));
  trainer->source_ = std::move(source);
  trainer->data_summary_ = std::move(data_summary);
  trainer->prefetcher_ = std::make_unique<SamplePrefetcher>(*trainer->source_, 4);
  trainer->tokenizer_ = &tokenizer;
  trainer->owned_tokenizer_ = std::move(owned_tokenizer);
  trainer->position_ = o.start_position;
  if (language) {
    if (o.virtual_stages == 1) {
      MIMO_ASSIGN_OR_RETURN(trainer->schedule_,
                            OneForwardOneBackward(stage.index, stage.count, o.micro_batches));
    } else {
      MIMO_ASSIGN_OR_RETURN(
          std::vector<std::vector<PipelineAction>> all,
          InterleavedOneForwardOneBackward(stage.count, o.virtual_stages, o.micro_batches));
      trainer->schedule_ = std::move(all[stage.index]);
    }
  }
  if (!trainer->experts_.empty() && o.expt_dp == nullptr && ModelGroups::Size(o.groups.tp) > 1 &&
      ModelGroups::Size(o.groups.ep) == 1 && ModelGroups::Size(o.groups.expt_tp) == 1) {
    // Each tp member's rows reach the same whole experts: their gradients must be summed over
    // tp as well as dp, which dp alone would not do.
    return absl::InvalidArgumentError(
        "TrainerOptions: MoE layers under tensor parallelism with every expert whole on every tp "
        "member need expt_dp (the tp x dp ranks holding the same experts)");
  }
  comm::Communicator* expt_dp = trainer->ExpertDataParallelGroup();
  // The gradients' collectives on dp and expt_dp run on a communication thread while the
  // backward uses the other groups: one communicator serves one thread at a time.
  if (o.overlap_grad_reduce && ops.device().is_cuda() &&
      (ModelGroups::Size(o.groups.tp) > 1 || stage.count > 1 || cp > 1 ||
       ModelGroups::Size(o.groups.ep) > 1 || ModelGroups::Size(o.groups.expt_tp) > 1)) {
    // Every layer's tp, cp or ep collectives (or the stages' transfers) on the step thread beside
    // the dp ones on the communication thread, in an order that differs per rank: NCCL kernels of
    // two communicators can then wait on each other (streams sharing a hardware queue run in order;
    // cudaMalloc, cudaFree and lazy module loads may wait for the whole device). The way out is
    // to enqueue each bucket's collective from the step thread, in the same order on every rank,
    // and wait for it in Finish. Not run on GPUs yet.
    return absl::InvalidArgumentError(
        "TrainerOptions: overlap_grad_reduce with tensor, pipeline, context or expert parallelism "
        "(tp, pp, cp, ep or etp > 1) on GPUs is not supported yet (set overlap_grad_reduce: "
        "false)");
  }
  if (o.overlap_grad_reduce) {
    std::vector<std::pair<const char*, comm::Communicator*>> others = {
        {"ep", o.groups.ep}, {"expt_tp", o.groups.expt_tp}, {"tp", o.groups.tp},
        {"cp", o.groups.cp}, {"tp_cp", o.groups.tp_cp},     {"pp", o.pp}};
    for (const BridgeEnd& l : o.links) others.push_back({"a bridge link", l.group});
    for (comm::Communicator* reduced : {trainer->GradientGroup(), expt_dp}) {
      if (ModelGroups::Size(reduced) == 1) continue;
      for (const auto& [name, other] : others) {
        if (other == reduced) {
          return absl::InvalidArgumentError(absl::StrCat(
              "TrainerOptions: ", name, " shares its communicator with a data-parallel group; ",
              "with overlap_grad_reduce each needs its own"));
        }
      }
    }
  }
  MIMO_ASSIGN_OR_RETURN(
      trainer->update_,
      CreateGradientUpdate(ops,
                           {.optimizer = o.optimizer,
                            .bucket_elements = o.bucket_elements,
                            .distributed_optimizer = o.distributed_optimizer,
                            .dense = trainer->dense_,
                            .experts = trainer->experts_,
                            .backward_order = std::move(order),
                            .dp = trainer->GradientGroup(),
                            .expt_dp = expt_dp,
                            .expert_norm_groups = trainer->ExpertNormGroups(),
                            .tp = o.groups.tp,
                            .shared = shared_copy != nullptr ? std::vector<Parameter*>{shared_copy}
                                                             : std::vector<Parameter*>{},
                            .shared_in_norm = stage.first()}));
  return trainer;
}

absl::StatusOr<data::Sample> Trainer::ReadSample(int64_t index) {
  offsets_.push_back(index - base_);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<data::Sample> sample = prefetcher_->Take(index);
  data_wait_ += SecondsSince(start);
  if (!sample.ok()) {
    return absl::Status(
        sample.status().code(),
        absl::StrCat("sample ", index, " of the data: ", sample.status().message()));
  }
  return sample;
}

void Trainer::AppendParameters(std::vector<Parameter*>& out) const {
  modules_->AppendParameters(out);
}

absl::StatusOr<StepMetrics> Trainer::Step() {
  const auto start = std::chrono::steady_clock::now();
  const int64_t base = position_;
  const int64_t per_step =
      modules_->language_dp * options_.micro_batches * options_.micro_batch_size;
  position_ += per_step;
  base_ = base;
  offsets_.clear();
  data_wait_ = 0;
  batch_seconds_ = 0;
  // Zeroed, or stale where the first backward writes them whole (the routed experts').
  for (const GradientBuffer* g : update_.buffers) MIMO_RETURN_IF_ERROR(g->Reset(ops_));
  for (Parameter* p : update_.unbuffered) MIMO_RETURN_IF_ERROR(p->ResetGrad(ops_));
  StepMetrics m;
  const bool language = !modules_->language.empty();
  if (absl::Status s = language ? LanguageStep(base, m) : EncoderStep(base); !s.ok()) {
    // Buckets may be on their way: the next step must find the sync idle and reset.
    if (update_.sync != nullptr) update_.sync->Abandon();
    return s;
  }
  // Every step reads the same offsets from its base: the next two steps' samples are read on
  // background threads while this one reduces and updates, and the next computes.
  for (const int64_t next : {base + per_step, base + 2 * per_step}) {
    if (next <= fetched_base_) continue;
    std::vector<int64_t> indices;
    for (const int64_t offset : offsets_) indices.push_back(next + offset);
    prefetcher_->Fetch(indices);
    fetched_base_ = next;
  }
  // A gradient no backward wrote (stale) is zero: those the sync reduces it zeroes itself.
  for (Parameter* p : update_.unbuffered) MIMO_RETURN_IF_ERROR(p->ZeroGradIfStale(ops_));
  // Every gradient summed over its module's replicas (each already carries 1 / the labelled
  // tokens of the step): all-reduced, or reduce-scattered into the distributed optimizer's shards;
  // the buckets the backward finished have been on their way since.
  if (update_.sync != nullptr) {
    MIMO_RETURN_IF_ERROR(update_.sync->Finish());
    m.overlapped_buckets = update_.sync->started_early();
  }
  if (Parameter* copy = trainer_parts::SharedEmbeddingsCopy(modules_->language)) {
    // The first and last stages' copies of the shared word embeddings, each summed over its
    // replicas: both get the sum of the two (after the data-parallel sums, as Megatron does, so
    // the copies stay bitwise equal). With the distributed optimizer, this rank's shard of them
    // (their set laid out alike on both stages).
    const Tensor& grad = update_.shared_set >= 0
                             ? update_.distributed->gradient_shard(update_.shared_set)
                             : copy->grad();
    MIMO_RETURN_IF_ERROR(ops_.Synchronize());
    MIMO_RETURN_IF_ERROR(options_.embd->AllReduce(grad.data(), static_cast<size_t>(grad.numel()),
                                                  comm::DataType::kFloat32, comm::ReduceOp::kSum));
  }
  if (language) MIMO_RETURN_IF_ERROR(ReduceLanguageMetrics(m));
  MIMO_ASSIGN_OR_RETURN(const float squared, WholeModelSquaredNorm());
  // Both take the same decision (step, rate, clip factor, skip) from the same norm.
  MIMO_ASSIGN_OR_RETURN(OptimizerStepStats stats, update_.adamw->Apply(ops_, squared));
  if (update_.distributed != nullptr) {
    MIMO_ASSIGN_OR_RETURN(stats, update_.distributed->Apply(ops_, squared));
  }
  m.step = stats.step;
  m.lr = stats.lr;
  m.grad_norm = stats.grad_norm;
  m.skipped = stats.skipped;
  if (language) {
    MIMO_ASSIGN_OR_RETURN(ExpertLoads loads, FinishExpertLoadStep(ops_, MoeLayers(),
                                                                  {options_.dp, options_.groups.tp,
                                                                   options_.groups.cp}));
    if (config_.language.moe.has_value())
      m.expert_load.assign(config_.language.moe->router.experts, 0);
    // Each layer's busiest expert and its total, at the layer's place in the whole stack.
    const int layers = config_.language.transformer.num_layers;
    std::vector<int64_t> busiest_and_total(2 * static_cast<size_t>(layers), 0);
    const std::vector<MoeLayer*> moe_layers = MoeLayers();
    for (size_t i = 0; i < loads.size(); ++i) {
      const std::vector<int64_t>& layer = loads[i];
      for (size_t e = 0; e < layer.size() && e < m.expert_load.size(); ++e) {
        m.expert_load[e] += layer[e];
      }
      const int at = moe_layers[i]->layer_number();
      if (at < 0 || at >= layers || layer.empty()) continue;
      busiest_and_total[2 * at] = *std::max_element(layer.begin(), layer.end());
      for (int64_t n : layer) busiest_and_total[2 * at + 1] += n;
    }
    if (ModelGroups::Size(options_.pp) > 1) {
      // Each stage's MoE layers: the per-expert sums, and the layers' figures, over the stages.
      MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *options_.pp, absl::MakeSpan(m.expert_load)));
      MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *options_.pp, absl::MakeSpan(busiest_and_total)));
    }
    if (config_.language.moe.has_value()) {
      const double experts = static_cast<double>(config_.language.moe->router.experts);
      for (int l = 0; l < layers; ++l) {
        if (l % config_.language.moe_layer_freq != 0) continue;
        const int64_t total = busiest_and_total[2 * l + 1];
        m.expert_load_imbalance[l] =
            total > 0 ? static_cast<double>(busiest_and_total[2 * l]) * experts / total : 0.0;
      }
    }
  }
  MIMO_RETURN_IF_ERROR(ops_.Synchronize());
  m.peak_memory_bytes = ops_.allocator().stats().peak_allocated_bytes;
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  m.data_wait_seconds = data_wait_;
  m.batch_seconds = batch_seconds_;
  return m;
}

// The squared gradient norm of the whole model, the same value on every rank: the language
// ranks add the encoders' parts (sent up the links) to theirs and send the total back down.
absl::StatusOr<float> Trainer::WholeModelSquaredNorm() {
  const bool language = !modules_->language.empty();
  MIMO_ASSIGN_OR_RETURN(float local, update_.adamw->SquaredGradNorm(ops_));
  if (update_.distributed != nullptr) {
    MIMO_ASSIGN_OR_RETURN(const float shards, update_.distributed->SquaredGradNorm(ops_));
    local += shards;
  }
  if (!language) {
    // The encoder's stages' parts summed; member (tp 0, cp 0) of the last stage holds the links:
    // the total comes down to it, then to the other members and stages.
    if (ModelGroups::Size(options_.pp) > 1) {
      float part[1] = {local};
      MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *options_.pp, part));
      local = part[0];
    }
    const std::vector<BridgeEnd>& links = modules_->links[EncoderIndex(options_.part)];
    for (const BridgeEnd& l : links) MIMO_RETURN_IF_ERROR(SendFloat(ops_, l, local));
    float total[1] = {0};
    for (size_t i = 0; i < links.size(); ++i) {
      MIMO_ASSIGN_OR_RETURN(const float t, RecvFloat(ops_, links[i]));
      if (i == 0) total[0] = t;  // Every language replica computes the same total.
    }
    for (comm::Communicator* group : {options_.groups.tp, options_.groups.cp, options_.pp}) {
      if (ModelGroups::Size(group) > 1) MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *group, total));
    }
    return total[0];
  }
  // Pipeline stages: each holds its part of the model (every tp member the same squares).
  if (ModelGroups::Size(options_.pp) > 1) {
    float part[1] = {local};
    MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *options_.pp, part));
    local = part[0];
  }
  if (options_.part == ModelPart::kWhole) return local;
  // The encoders' parts come up the links of the first stage's member (tp 0, cp 0), which sends
  // the total back down, then shares them with its tp, cp and pp peers.
  float encoders[1] = {0};
  for (int x : {kVision, kAudio}) {
    const std::vector<BridgeEnd>& links = modules_->links[x];
    for (size_t i = 0; i < links.size(); ++i) {
      MIMO_ASSIGN_OR_RETURN(const float e, RecvFloat(ops_, links[i]));
      if (i == 0) encoders[0] += e;  // The encoder's replicas hold the same gradients.
    }
  }
  for (int x : {kVision, kAudio}) {
    for (const BridgeEnd& l : modules_->links[x]) {
      MIMO_RETURN_IF_ERROR(SendFloat(ops_, l, local + encoders[0]));
    }
  }
  for (comm::Communicator* group : {options_.groups.tp, options_.groups.cp, options_.pp}) {
    if (ModelGroups::Size(group) > 1) MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *group, encoders));
  }
  return local + encoders[0];
}

}  // namespace mimo::worker
