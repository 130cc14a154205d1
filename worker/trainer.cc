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

namespace mimo::worker {

namespace {

using kernels::Tensor;

constexpr int kVision = 0, kAudio = 1;  // Indices of the encoders.

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

const char* EncoderName(int x) { return x == kVision ? "vision" : "audio"; }
int EncoderIndex(ModelPart part) { return part == ModelPart::kVision ? kVision : kAudio; }
bool IsEncoder(ModelPart part) { return part == ModelPart::kVision || part == ModelPart::kAudio; }

// The rows encoder `x` makes for each sample.
std::vector<int64_t> RowsPerSample(const MimoModelConfig& config, int x,
                                   const std::vector<data::Sample>& samples) {
  std::vector<int64_t> rows;
  for (const data::Sample& s : samples) {
    rows.push_back(x == kVision ? config.vision->max_tokens()
                                : s.audio_frames / config.audio->frames_per_token);
  }
  return rows;
}

// Sum of rows[i] over i in [begin, end).
int64_t SumRows(const std::vector<int64_t>& rows, int64_t begin, int64_t end) {
  int64_t sum = 0;
  for (int64_t i = begin; i < end; ++i) sum += rows[i];
  return sum;
}

}  // namespace

struct Trainer::Modules {
  std::unique_ptr<ModalityEncoder> encoders[2];  // Vision, audio; null where not on this rank.
  std::unique_ptr<LanguageModel> language;       // Null on encoder ranks.
  std::vector<BridgeEnd> links[2];               // Per encoder, by peer replica.
  int language_dp = 1;                           // L.
  int encoder_dp[2] = {1, 1};                    // E of each encoder.
};

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
  if (modules_->language == nullptr) return {};
  return {options_.groups.ep, options_.groups.expt_tp};
}

std::vector<MoeLayer*> Trainer::MoeLayers() const {
  if (modules_->language == nullptr) return {};
  return modules_->language->moe_layers();
}

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
    // Images are read only when the model has a vision encoder.
    o.webdataset->image_size = model.vision.has_value() ? o.data.image_size : 0;
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
  if (o.webdataset.has_value()) {
    MIMO_ASSIGN_OR_RETURN(source, data::WebDatasetSource::Open(*o.webdataset));
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
  MIMO_ASSIGN_OR_RETURN(
      RankModules built,
      BuildRankModules(ops, model,
                       {.part = o.part, .groups = o.groups, .stage = stage, .seed = o.seed}));
  for (int x : {kVision, kAudio}) modules->encoders[x] = std::move(built.encoders[x]);
  modules->language = std::move(built.language);
  // Shared word embeddings over stages: the first and last stages sum their copies' gradients.
  Parameter* shared_copy =
      modules->language != nullptr ? modules->language->shared_embeddings_copy() : nullptr;
  if (shared_copy != nullptr && ModelGroups::Size(o.embd) != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TrainerOptions: shared word embeddings over ", stage.count,
        " pipeline stages need the embedding group of the first and last stage (embd, 2 "
        "members), got ",
        ModelGroups::Size(o.embd)));
  }
  std::vector<Parameter*> experts, dense;
  if (modules->language != nullptr) {
    for (MoeLayer* layer : modules->language->moe_layers()) layer->AppendExpertParameters(experts);
  }
  // The order the backward finishes the parameters: the language model's from its output
  // layer back, then each encoder's from its projector back.
  std::vector<Parameter*> order;
  if (modules->language != nullptr) modules->language->AppendParameters(order);
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
  trainer->prefetcher_ = std::make_unique<SamplePrefetcher>(*trainer->source_, 4);
  trainer->tokenizer_ = &tokenizer;
  trainer->owned_tokenizer_ = std::move(owned_tokenizer);
  trainer->position_ = o.start_position;
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
      (ModelGroups::Size(o.groups.tp) > 1 || stage.count > 1 || cp > 1)) {
    // Every layer's tp collectives (or the stages' transfers) on the step thread beside the dp
    // ones on the communication thread, in an order that differs per rank: NCCL kernels of two
    // communicators can then wait on each other. Not run on GPUs yet.
    return absl::InvalidArgumentError(
        "TrainerOptions: overlap_grad_reduce with tensor, pipeline or context parallelism (tp, pp "
        "or cp > 1) on GPUs is not supported yet (set overlap_grad_reduce: false)");
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
  for (const auto& e : modules_->encoders) {
    if (e != nullptr) e->AppendParameters(out);
  }
  if (modules_->language != nullptr) modules_->language->AppendParameters(out);
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
  for (const GradientBuffer* g : update_.buffers) MIMO_RETURN_IF_ERROR(g->Zero(ops_));
  for (Parameter* p : update_.unbuffered) MIMO_RETURN_IF_ERROR(p->ZeroGrad(ops_));
  StepMetrics m;
  const bool language = modules_->language != nullptr;
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
  // Every gradient summed over its module's replicas (each already carries 1 / the labelled
  // tokens of the step): all-reduced, or reduce-scattered into the distributed optimizer's shards;
  // the buckets the backward finished have been on their way since.
  if (update_.sync != nullptr) {
    MIMO_RETURN_IF_ERROR(update_.sync->Finish());
    m.overlapped_buckets = update_.sync->started_early();
  }
  if (Parameter* copy = language ? modules_->language->shared_embeddings_copy() : nullptr) {
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
    MIMO_ASSIGN_OR_RETURN(
        ExpertLoads loads,
        FinishExpertLoadStep(ops_, modules_->language->moe_layers(),
                             {options_.dp, options_.groups.tp, options_.groups.cp}));
    if (config_.language.moe.has_value())
      m.expert_load.assign(config_.language.moe->router.experts, 0);
    for (const std::vector<int64_t>& layer : loads) {
      for (size_t e = 0; e < layer.size() && e < m.expert_load.size(); ++e) {
        m.expert_load[e] += layer[e];
      }
    }
    if (ModelGroups::Size(options_.pp) > 1) {
      // Each stage's MoE layers: the per-expert sums over the stages.
      MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *options_.pp, absl::MakeSpan(m.expert_load)));
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
  const bool language = modules_->language != nullptr;
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

absl::Status Trainer::LanguageStep(int64_t base, StepMetrics& m) {
  const int64_t mbs = options_.micro_batch_size, k = options_.micro_batches * mbs;
  const int64_t replicas = modules_->language_dp;
  const int64_t replica = ModelGroups::Rank(options_.dp);
  const int64_t hidden = config_.language.transformer.hidden_size;
  const kernels::DType dtype = config_.language.transformer.dtype;
  const bool whole = options_.part == ModelPart::kWhole;
  const bool has[2] = {config_.vision.has_value(), config_.audio.has_value()};
  const int tp = ModelGroups::Size(options_.groups.tp), cp = ModelGroups::Size(options_.groups.cp);
  const int cp_rank = ModelGroups::Rank(options_.groups.cp);
  // Sequence parallel: the micro-batch padded to tp row blocks; context parallel: each sequence
  // to 2 cp chunks (of a multiple of tp rows each with tp, so the members' rows split too).
  const data::MicroBatchOptions pack{
      .seq_length = options_.seq_length,
      .image_tokens = has[kVision] ? config_.vision->max_tokens() : 0,
      .frames_per_token = has[kAudio] ? config_.audio->frames_per_token : 0,
      .pad_to_multiple = cp > 1 ? 1 : tp,
      .sequence_multiple = cp > 1 ? 2 * cp * tp : 1};
  MimoModelConfig upload = config_;
  // Every micro-batch packed first: the loss is averaged over the whole step's labels.
  std::vector<std::vector<data::Sample>> samples(options_.micro_batches);
  std::vector<data::HostMicroBatch> host;
  for (int64_t i = 0; i < options_.micro_batches; ++i) {
    for (int64_t j = 0; j < mbs; ++j) {
      MIMO_ASSIGN_OR_RETURN(data::Sample s, ReadSample(base + replica * k + i * mbs + j));
      samples[i].push_back(std::move(s));
    }
    // Tokens only: each micro-batch's images and audio are packed just before its upload, so
    // the later ones' overlap the compute of the ones before.
    const auto pack_start = std::chrono::steady_clock::now();
    MIMO_ASSIGN_OR_RETURN(data::HostMicroBatch b, data::PackTokens(samples[i], pack, *tokenizer_));
    batch_seconds_ += SecondsSince(pack_start);
    m.labelled += b.labelled;
    // The samples' sequences, without tp's padding sequence and cp's padding (not counted as
    // work).
    std::vector<int32_t> lengths(b.lengths.begin(), b.lengths.begin() + samples[i].size());
    for (size_t s = 0; s < lengths.size(); ++s) lengths[s] -= b.sequence_padding[s];
    for (int32_t n : lengths) m.tokens += n;
    m.model_flops += LanguageModelTrainingFlops(config_.language, lengths);
    for (int x : {kVision, kAudio}) {
      if (!has[x]) continue;
      std::vector<int64_t> tokens;
      for (int64_t n : RowsPerSample(config_, x, samples[i])) {
        if (n > 0) tokens.push_back(n);
      }
      m.model_flops +=
          EncoderTrainingFlops(x == kVision ? *config_.vision : *config_.audio, tokens);
    }
    host.push_back(std::move(b));
  }
  comm::Communicator* dp = replicas > 1 ? options_.dp : nullptr;
  if (dp != nullptr) {
    int64_t both[2] = {m.labelled, m.tokens};
    MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *dp, both));
    m.labelled = both[0];
    m.tokens = both[1];
  }
  const float loss_grad = m.labelled > 0 ? 1.0f / static_cast<float>(m.labelled) : 0.0f;
  // A remote encoder's rows of one micro-batch per link, for the gradients sent back after the
  // last backward (the encoders run their backward once every language replica is done).
  struct Pending {
    Tensor dembeddings;                 // (M, C): vision rows, then audio rows.
    std::vector<int64_t> link_rows[2];  // Per encoder, per link.
  };
  std::vector<Pending> pending;
  // Each micro-batch's losses stay on the device until the last backward is enqueued: one wait
  // for all of them.
  std::vector<Tensor> losses;
  std::vector<AuxLossRecord> aux;
  // Pipeline stages: this stage's part of the language model, the micro-batches in the 1F1B
  // order (one stage: each micro-batch's forward then its backward).
  LanguageModel& lm = *modules_->language;
  const PipelineStage stage = lm.stage();
  const bool encoders_here = whole && stage.first();
  if (!encoders_here) {  // Encoders elsewhere: their inputs are not uploaded here.
    upload.vision.reset();
    upload.audio.reset();
  }
  // A micro-batch from its forward to its backward.
  struct InFlight {
    DeviceBatch d;
    StepContext ctx;
    LanguageModelBatch text;
    int64_t rows[2] = {0, 0};
    std::unique_ptr<SavedActivations> saved, encoder_saved[2];
    Pending p;
    Tensor send;  // The forward's output rows for the next stage, or the input's gradient.
    // From a neighbouring stage: the input rows (before the forward), or the gradient of the
    // output rows (before the backward).
    Tensor received;
  };
  std::vector<InFlight> flight(options_.micro_batches);
  // The stages' transfers: this member's rows of the micro-batch, in the compute dtype. The
  // communicator works on its own stream: the tensors' work must be done (and a receive buffer,
  // perhaps memory freed to this stream, idle) first.
  MIMO_ASSIGN_OR_RETURN(const comm::DataType rows_type, CommType(dtype));
  auto transfer = [&](int64_t i, bool send, int peer, Tensor& t) -> absl::Status {
    if (!send) {
      const int64_t tokens = static_cast<int64_t>(host[i].tokens.size()) / cp;
      MIMO_ASSIGN_OR_RETURN(
          t, Tensor::Empty({tokens / tp, hidden}, dtype, ops_.allocator(), ops_.stream()));
    }
    MIMO_RETURN_IF_ERROR(ops_.Synchronize());
    const size_t count = static_cast<size_t>(t.numel());
    return send ? options_.pp->Send(t.data(), count, rows_type, peer)
                : options_.pp->Recv(t.data(), count, rows_type, peer);
  };
  auto forward = [&](int64_t i) -> absl::Status {
    InFlight& f = flight[i];
    data::HostMicroBatch& b = host[i];
    const auto upload_start = std::chrono::steady_clock::now();
    if (encoders_here) data::PackMedia(samples[i], pack, b);  // Else the encoders' ranks read them.
    MIMO_ASSIGN_OR_RETURN(f.d, UploadMicroBatch(ops_, b, upload, cp, cp_rank));
    b.images = {};  // Copied (staged) already.
    b.audio = {};
    batch_seconds_ += SecondsSince(upload_start);
    const bool last = i + 1 == options_.micro_batches;
    f.ctx = StepContext{.ops = &ops_,
                        .sequences = f.d.sequences.get(),
                        .loss_scale = 1.0f / static_cast<float>(options_.micro_batches * replicas),
                        .aux_losses = &aux,
                        .padding_rows = b.padding,
                        .gradients_ready = last ? GradientsReadyHook() : nullptr};
    SetDropoutStream(f.ctx, base, i);
    const StepContext& ctx = f.ctx;
    LanguageModelBatch& text = f.text;
    text = f.d.batch.text;
    text.embedding_positions.clear();
    text.hidden = std::move(f.received);  // A later stage: the input rows received.
    f.received = Tensor();
    if (!stage.first()) return absl::OkStatus();
    const std::vector<int32_t>* positions[2] = {&b.vision_positions, &b.audio_positions};
    const EncoderBatch* inputs[2] = {&f.d.batch.vision, &f.d.batch.audio};
    int64_t* rows = f.rows;
    rows[kVision] = static_cast<int64_t>(positions[kVision]->size());
    rows[kAudio] = static_cast<int64_t>(positions[kAudio]->size());
    if (rows[kVision] + rows[kAudio] > 0) {
      MIMO_ASSIGN_OR_RETURN(text.embeddings, Tensor::Empty({rows[kVision] + rows[kAudio], hidden},
                                                           dtype, ops_.allocator(), ops_.stream()));
    }
    // A communicator writes on its own stream: the buffer it receives into (perhaps memory the
    // previous micro-batch's work still reads, freed to this stream) must be idle first.
    if (!whole) MIMO_RETURN_IF_ERROR(ops_.Synchronize());
    // Context parallel: a placeholder's row among this member's, or -1.
    std::vector<int32_t> local_row;
    if (cp > 1) {
      local_row.assign(b.tokens.size(), -1);
      for (const parallel::TokenRun& r : f.d.sequences->runs()) {
        for (int64_t j = 0; j < r.length; ++j) local_row[r.global + j] = r.local + j;
      }
    }
    const int tp_rank = ModelGroups::Rank(options_.groups.tp);
    for (int x : {kVision, kAudio}) {
      if (rows[x] == 0) continue;
      const int64_t offset = x == kVision ? 0 : rows[kVision];
      for (const int32_t p : *positions[x]) {
        text.embedding_positions.push_back(cp > 1 ? local_row[p] : p);
      }
      if (!whole && tp_rank != 0) {
        // Not member 0 of a tp group: no links; the language model reads member 0's rows only.
        MIMO_RETURN_IF_ERROR(
            ops_.SetZero(RowAt(text.embeddings, offset, hidden),
                         static_cast<size_t>(rows[x] * hidden) * kernels::DTypeSize(dtype)));
        continue;
      }
      if (!whole && cp_rank != 0) continue;  // Member 0 of the cp group broadcasts them below.
      if (whole) {
        MIMO_ASSIGN_OR_RETURN(EncoderOutput out, modules_->encoders[x]->Forward(ctx, *inputs[x]));
        if (out.embeddings.size(0) != rows[x]) {
          return absl::InternalError(absl::StrCat("the ", EncoderName(x), " encoder made ",
                                                  out.embeddings.size(0), " tokens for ", rows[x],
                                                  " placeholders"));
        }
        MIMO_RETURN_IF_ERROR(ops_.Copy(RowAt(text.embeddings, offset, hidden),
                                       out.embeddings.data(), out.embeddings.nbytes()));
        f.encoder_saved[x] = std::move(out.saved);
        continue;
      }
      // The rows of this replica's samples [replica * mbs, (replica + 1) * mbs) of the global
      // micro-batch, from the encoder replicas whose blocks hold them, in sample order.
      const std::vector<int64_t> per_sample = RowsPerSample(config_, x, samples[i]);
      const int64_t block = replicas * mbs / modules_->encoder_dp[x];
      int64_t row = offset;
      for (const BridgeEnd& l : modules_->links[x]) {
        const int64_t from = std::max(l.peer_replica * block, replica * mbs) - replica * mbs;
        const int64_t to =
            std::min((l.peer_replica + 1) * block, (replica + 1) * mbs) - replica * mbs;
        const int64_t n = SumRows(per_sample, from, to);
        MIMO_RETURN_IF_ERROR(RecvRows(l, text.embeddings, row, n));
        f.p.link_rows[x].push_back(n);
        row += n;
      }
      if (row != offset + rows[x]) {
        return absl::InternalError(absl::StrCat("the ", EncoderName(x), " links bring ",
                                                row - offset, " rows for ", rows[x],
                                                " placeholders"));
      }
    }
    if (!whole && cp > 1 && tp_rank == 0 && text.embeddings.numel() > 0) {
      // Every cp member places the rows of its tokens.
      MIMO_ASSIGN_OR_RETURN(const comm::DataType type, CommType(dtype));
      MIMO_RETURN_IF_ERROR(options_.groups.cp->Broadcast(
          text.embeddings.data(), static_cast<size_t>(text.embeddings.numel()), type, /*root=*/0));
    }
    return absl::OkStatus();
  };
  auto backward = [&](int64_t i) -> absl::Status {
    InFlight& f = flight[i];
    MIMO_ASSIGN_OR_RETURN(Tensor grad,
                          lm.Backward(f.ctx, std::move(f.saved), loss_grad, f.received));
    f.received = Tensor();
    if (!stage.first()) {
      f.send = std::move(grad);  // The gradient of the stage's input rows.
    } else if (whole) {
      for (int x : {kVision, kAudio}) {
        if (f.rows[x] == 0) continue;
        const int64_t offset = x == kVision ? 0 : f.rows[kVision];
        MIMO_ASSIGN_OR_RETURN(Tensor dx, grad.Slice(0, offset, offset + f.rows[x]));
        MIMO_RETURN_IF_ERROR(
            modules_->encoders[x]->Backward(f.ctx, std::move(f.encoder_saved[x]), dx).status());
      }
    } else {
      if (cp > 1 && ModelGroups::Rank(options_.groups.tp) == 0 && grad.numel() > 0) {
        // Each cp member's gradient holds its tokens' rows: their sum goes up the links.
        MIMO_ASSIGN_OR_RETURN(const comm::DataType type, CommType(grad.dtype()));
        MIMO_RETURN_IF_ERROR(ops_.Synchronize());
        MIMO_RETURN_IF_ERROR(options_.groups.cp->AllReduce(
            grad.data(), static_cast<size_t>(grad.numel()), type, comm::ReduceOp::kSum));
      }
      f.p.dembeddings = std::move(grad);
      pending.push_back(std::move(f.p));
    }
    return absl::OkStatus();
  };
  MIMO_ASSIGN_OR_RETURN(const std::vector<PipelineAction> schedule,
                        OneForwardOneBackward(stage.index, stage.count, options_.micro_batches));
  for (const PipelineAction& a : schedule) {
    InFlight& f = flight[a.micro_batch];
    switch (a.kind) {
      case PipelineAction::kRecvActivation:
        MIMO_RETURN_IF_ERROR(transfer(a.micro_batch, false, stage.index - 1, f.received));
        break;
      case PipelineAction::kForward: {
        MIMO_RETURN_IF_ERROR(forward(a.micro_batch));
        MIMO_ASSIGN_OR_RETURN(LanguageModelOutput out, lm.Forward(f.ctx, f.text));
        f.text = LanguageModelBatch();
        f.saved = std::move(out.saved);
        if (stage.last()) losses.push_back(std::move(out.loss_sum));
        f.send = std::move(out.hidden);
        break;
      }
      case PipelineAction::kSendActivation:
        MIMO_RETURN_IF_ERROR(transfer(a.micro_batch, true, stage.index + 1, f.send));
        f.send = Tensor();
        break;
      case PipelineAction::kRecvGradient:
        MIMO_RETURN_IF_ERROR(transfer(a.micro_batch, false, stage.index + 1, f.received));
        break;
      case PipelineAction::kBackward:
        MIMO_RETURN_IF_ERROR(backward(a.micro_batch));
        if (stage.first()) f = InFlight();  // Done with the micro-batch.
        break;
      case PipelineAction::kSendGradient:
        MIMO_RETURN_IF_ERROR(transfer(a.micro_batch, true, stage.index - 1, f.send));
        f = InFlight();
        break;
    }
  }
  if (!whole) {
    // The embeddings' gradients back to the encoders, micro-batch by micro-batch, in the order
    // the rows came.
    MIMO_RETURN_IF_ERROR(ops_.Synchronize());
    for (const Pending& p : pending) {
      int64_t row = 0;
      for (int x : {kVision, kAudio}) {
        for (size_t n = 0; n < p.link_rows[x].size(); ++n) {
          MIMO_RETURN_IF_ERROR(
              SendRows(modules_->links[x][n], p.dembeddings, row, p.link_rows[x][n]));
          row += p.link_rows[x][n];
        }
      }
    }
  }
  double loss_sum = 0;
  for (const Tensor& t : losses) {
    float value = 0;
    MIMO_RETURN_IF_ERROR(ops_.CopyToHost(&value, t.data(), sizeof(float)));
    loss_sum += value;
  }
  for (const AuxLossRecord& r : aux) {
    float pair[2];
    MIMO_RETURN_IF_ERROR(ops_.CopyToHost(pair, r.losses.data(), sizeof(pair)));
    m.aux_loss += (pair[0] + pair[1]) / static_cast<double>(options_.micro_batches);
  }
  // Summed over dp by ReduceLanguageMetrics once the gradients' collectives are done.
  m.loss = loss_sum;
  return absl::OkStatus();
}

absl::Status Trainer::ReduceLanguageMetrics(StepMetrics& m) {
  if (ModelGroups::Size(options_.groups.tp) > 1) {
    // Sequence-parallel MoE layers: each tp member holds its share of the auxiliary losses.
    float aux[1] = {static_cast<float>(m.aux_loss)};
    MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *options_.groups.tp, aux));
    m.aux_loss = aux[0];
  }
  if (ModelGroups::Size(options_.groups.cp) > 1) {
    // Each cp member holds its tokens' losses and its share of the auxiliary losses.
    float both[2] = {static_cast<float>(m.loss), static_cast<float>(m.aux_loss)};
    MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *options_.groups.cp, both));
    m.loss = both[0];
    m.aux_loss = both[1];
  }
  if (ModelGroups::Size(options_.pp) > 1) {
    // The loss is the last stage's, the auxiliary losses each stage's layers'.
    float both[2] = {static_cast<float>(m.loss), static_cast<float>(m.aux_loss)};
    MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *options_.pp, both));
    m.loss = both[0];
    m.aux_loss = both[1];
  }
  const int64_t replicas = modules_->language_dp;
  if (replicas > 1) {
    float global[3] = {static_cast<float>(m.loss), static_cast<float>(m.aux_loss),
                       static_cast<float>(m.model_flops)};
    MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *options_.dp, global));
    m.loss = global[0];
    m.aux_loss = global[1] / static_cast<double>(replicas);
    m.model_flops = global[2];
  }
  m.loss = m.labelled > 0 ? m.loss / static_cast<double>(m.labelled) : 0.0;
  return absl::OkStatus();
}

absl::Status Trainer::EncoderStep(int64_t base) {
  const int x = EncoderIndex(options_.part);
  ModalityEncoder& encoder = *modules_->encoders[x];
  const PipelineStage stage = encoder.stage();
  const std::vector<BridgeEnd>& links = modules_->links[x];
  const int64_t mbs = options_.micro_batch_size, k = options_.micro_batches * mbs;
  const int64_t block = modules_->language_dp * mbs / modules_->encoder_dp[x];
  const int64_t first = ModelGroups::Rank(options_.dp) * block;  // In the global micro-batch.
  const int64_t hidden = config_.language.transformer.hidden_size;
  const ModalityEncoderConfig& ec = x == kVision ? *config_.vision : *config_.audio;
  const kernels::DType dtype = ec.transformer.dtype;
  // The encoder's rows split in tp x cp equal blocks (tp's and cp's padding included).
  const int members = ModelGroups::Size(options_.groups.tp) * ModelGroups::Size(options_.groups.cp);
  const data::MicroBatchOptions pack{
      .seq_length = options_.seq_length,
      .image_tokens = config_.vision.has_value() ? config_.vision->max_tokens() : 0,
      .frames_per_token = config_.audio.has_value() ? config_.audio->frames_per_token : 0};
  MimoModelConfig upload = config_;  // Only this encoder's inputs, on its first stage.
  (x == kVision ? upload.audio : upload.vision).reset();
  if (!stage.first()) (x == kVision ? upload.vision : upload.audio).reset();
  // Pipeline stages: this member's block of a micro-batch's rows (tp's padding included) to or
  // from a neighbouring stage. The communicator works on its own stream: the tensor's work must
  // be done (and a receive buffer, perhaps memory freed to this stream, idle) first.
  MIMO_ASSIGN_OR_RETURN(const comm::DataType rows_type, CommType(dtype));
  auto transfer = [&](bool send, int peer, int64_t rows, Tensor& t) -> absl::Status {
    if (!send) {
      const int64_t padded = rows + (members - rows % members) % members;
      MIMO_ASSIGN_OR_RETURN(t, Tensor::Empty({padded / members, ec.transformer.hidden_size}, dtype,
                                             ops_.allocator(), ops_.stream()));
    }
    MIMO_RETURN_IF_ERROR(ops_.Synchronize());
    const size_t count = static_cast<size_t>(t.numel());
    return send ? options_.pp->Send(t.data(), count, rows_type, peer)
                : options_.pp->Recv(t.data(), count, rows_type, peer);
  };
  struct Pending {
    DeviceBatch batch;
    std::unique_ptr<SavedActivations> saved;
    std::vector<int64_t> link_rows;
    int64_t rows = 0;
    int64_t index = 0;  // In the step.
  };
  std::vector<Pending> pending;
  std::vector<AuxLossRecord> aux;  // Encoders make none.
  // Every micro-batch's forward through the stages in turn, then (once the language ranks are
  // done with them all) the backwards from the last stage back.
  for (int64_t i = 0; i < options_.micro_batches; ++i) {
    // Position j of the global micro-batch is sample j % mbs of language replica j / mbs.
    std::vector<data::Sample> samples;
    for (int64_t j = first; j < first + block; ++j) {
      MIMO_ASSIGN_OR_RETURN(data::Sample s, ReadSample(base + (j / mbs) * k + i * mbs + j % mbs));
      samples.push_back(std::move(s));
    }
    // Packed as the language ranks pack them (the same checks fail the same way).
    const auto batch_start = std::chrono::steady_clock::now();
    MIMO_ASSIGN_OR_RETURN(data::HostMicroBatch host,
                          stage.first() ? data::PackSamples(samples, pack, *tokenizer_)
                                        : data::PackTokens(samples, pack, *tokenizer_));
    Pending p;
    p.index = i;
    MIMO_ASSIGN_OR_RETURN(p.batch, UploadMicroBatch(ops_, host, upload));
    batch_seconds_ += SecondsSince(batch_start);
    const std::vector<int64_t> per_sample = RowsPerSample(config_, x, samples);
    // Every tp and cp member returns the block's rows; member (tp 0, cp 0) of the last stage
    // holds the links, which split them.
    p.rows = SumRows(per_sample, 0, block);
    for (const BridgeEnd& l : links) {
      const int64_t from = std::max(first, l.peer_replica * mbs) - first;
      const int64_t to = std::min(first + block, (l.peer_replica + 1) * mbs) - first;
      p.link_rows.push_back(SumRows(per_sample, from, to));
    }
    if (p.rows > 0) {
      StepContext ctx{.ops = &ops_, .sequences = p.batch.sequences.get(), .aux_losses = &aux};
      SetDropoutStream(ctx, base, i);
      EncoderBatch in = x == kVision ? p.batch.batch.vision : p.batch.batch.audio;
      if (!stage.first()) {
        in.frames = host.audio_frames;
        in.images = host.num_images;
        MIMO_RETURN_IF_ERROR(transfer(false, stage.index - 1, p.rows, in.hidden));
      }
      MIMO_ASSIGN_OR_RETURN(EncoderOutput out, encoder.Forward(ctx, in));
      p.saved = std::move(out.saved);
      if (!stage.last()) {
        MIMO_RETURN_IF_ERROR(transfer(true, stage.index + 1, p.rows, out.hidden));
      } else {
        if (out.embeddings.size(0) != p.rows) {
          return absl::InternalError(absl::StrCat("the ", EncoderName(x), " encoder made ",
                                                  out.embeddings.size(0), " tokens for ", p.rows,
                                                  " placeholders"));
        }
        MIMO_RETURN_IF_ERROR(ops_.Synchronize());
        int64_t row = 0;
        for (size_t n = 0; n < links.size(); ++n) {
          MIMO_RETURN_IF_ERROR(SendRows(links[n], out.embeddings, row, p.link_rows[n]));
          row += p.link_rows[n];
        }
      }
    }
    pending.push_back(std::move(p));
  }
  // The gradients come back once every language replica has run its micro-batches.
  for (Pending& p : pending) {
    if (p.rows == 0) continue;
    const bool last = &p == &pending.back();
    Tensor grad;
    if (stage.last()) {
      MIMO_ASSIGN_OR_RETURN(grad,
                            Tensor::Empty({p.rows, hidden}, config_.language.transformer.dtype,
                                          ops_.allocator(), ops_.stream()));
      MIMO_RETURN_IF_ERROR(ops_.Synchronize());  // The receive buffer idle (see LanguageStep).
      int64_t row = 0;
      for (size_t n = 0; n < links.size(); ++n) {
        MIMO_RETURN_IF_ERROR(RecvRows(links[n], grad, row, p.link_rows[n]));
        row += p.link_rows[n];
      }
      // Member (tp 0, cp 0)'s gradient to the other members (each returned the embeddings
      // whole): over cp to the tp 0 members, then over each tp group from its member 0.
      for (comm::Communicator* group : {options_.groups.cp, options_.groups.tp}) {
        if (ModelGroups::Size(group) == 1) continue;
        MIMO_ASSIGN_OR_RETURN(const comm::DataType type, CommType(grad.dtype()));
        MIMO_RETURN_IF_ERROR(
            group->Broadcast(grad.data(), static_cast<size_t>(grad.numel()), type, /*root=*/0));
      }
    } else {
      MIMO_RETURN_IF_ERROR(transfer(false, stage.index + 1, p.rows, grad));
    }
    StepContext ctx{.ops = &ops_,
                    .sequences = p.batch.sequences.get(),
                    .aux_losses = &aux,
                    .gradients_ready = last ? GradientsReadyHook() : nullptr};
    SetDropoutStream(ctx, base, p.index);
    MIMO_ASSIGN_OR_RETURN(Tensor dinput, encoder.Backward(ctx, std::move(p.saved), grad));
    if (!stage.first()) MIMO_RETURN_IF_ERROR(transfer(true, stage.index - 1, p.rows, dinput));
  }
  return absl::OkStatus();
}

}  // namespace mimo::worker
