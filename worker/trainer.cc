// Trainer::Step: pack, upload, forward/backward per micro-batch, optimizer, metrics.
#include "worker/trainer.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "data/micro_batch.h"
#include "mimo/expert_load.h"
#include "worker/device_batch.h"

namespace mimo::worker {

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(kernels::Ops& ops,
                                                         const MimoModelConfig& model,
                                                         const TrainerOptions& options) {
  if (options.micro_batch_size < 1 || options.micro_batches < 1 || options.seq_length < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TrainerOptions: needs micro_batch_size, micro_batches and seq_length >= 1, got ",
        options.micro_batch_size, ", ", options.micro_batches, ", ", options.seq_length));
  }
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
  MIMO_RETURN_IF_ERROR(data::ValidateSyntheticOptions(o.data));
  BuildContext build{.ops = &ops, .config = &model.language.transformer, .seed = o.seed};
  MIMO_ASSIGN_OR_RETURN(auto built, MimoModel::Create(build, model));
  std::vector<Parameter*> params;
  built->AppendParameters(params);
  MIMO_ASSIGN_OR_RETURN(auto optimizer, AdamWOptimizer::Create(ops, o.optimizer, params));
  return std::unique_ptr<Trainer>(
      new Trainer(ops, model, o, std::move(built), std::move(optimizer), std::move(params)));
}

absl::StatusOr<StepMetrics> Trainer::Step() {
  const auto start = std::chrono::steady_clock::now();
  const data::MicroBatchOptions pack{
      .seq_length = options_.seq_length,
      .image_tokens = config_.vision.has_value() ? config_.vision->max_tokens() : 0,
      .frames_per_token = config_.audio.has_value() ? config_.audio->frames_per_token : 0};
  // Every micro-batch packed first: the loss is averaged over the whole step's labels.
  std::vector<data::HostMicroBatch> host;
  StepMetrics m;
  for (int64_t i = 0; i < options_.micro_batches; ++i) {
    std::vector<data::Sample> samples;
    for (int64_t j = 0; j < options_.micro_batch_size; ++j) {
      samples.push_back(data::MakeSyntheticSample(options_.data, position_++));
    }
    MIMO_ASSIGN_OR_RETURN(data::HostMicroBatch b, data::PackSamples(samples, pack));
    m.labelled += b.labelled;
    m.tokens += static_cast<int64_t>(b.tokens.size());
    host.push_back(std::move(b));
  }
  for (Parameter* p : params_) MIMO_RETURN_IF_ERROR(p->ZeroGrad(ops_));
  const float loss_grad = m.labelled > 0 ? 1.0f / static_cast<float>(m.labelled) : 0.0f;
  double loss_sum = 0;
  for (const data::HostMicroBatch& b : host) {
    MIMO_ASSIGN_OR_RETURN(DeviceBatch d, UploadMicroBatch(ops_, b, config_));
    std::vector<AuxLossRecord> aux;
    const StepContext ctx{.ops = &ops_,
                          .sequences = d.sequences.get(),
                          .loss_scale = 1.0f / static_cast<float>(options_.micro_batches),
                          .aux_losses = &aux};
    MIMO_ASSIGN_OR_RETURN(MimoOutput out, model_->Forward(ctx, d.batch));
    MIMO_RETURN_IF_ERROR(model_->Backward(ctx, std::move(out.saved), loss_grad));
    float value = 0;
    MIMO_RETURN_IF_ERROR(ops_.CopyToHost(&value, out.loss_sum.data(), sizeof(float)));
    loss_sum += value;
    for (const AuxLossRecord& r : aux) {
      float losses[2];
      MIMO_RETURN_IF_ERROR(ops_.CopyToHost(losses, r.losses.data(), sizeof(losses)));
      m.aux_loss += (losses[0] + losses[1]) / static_cast<double>(options_.micro_batches);
    }
  }
  m.loss = m.labelled > 0 ? loss_sum / static_cast<double>(m.labelled) : 0.0;
  MIMO_ASSIGN_OR_RETURN(OptimizerStepStats stats, optimizer_->Step(ops_));
  m.step = stats.step;
  m.lr = stats.lr;
  m.grad_norm = stats.grad_norm;
  m.skipped = stats.skipped;
  const std::vector<MoeLayer*> layers = model_->moe_layers();
  MIMO_ASSIGN_OR_RETURN(ExpertLoads loads, FinishExpertLoadStep(ops_, layers, nullptr));
  for (const std::vector<int64_t>& layer : loads) {
    m.expert_load.resize(layer.size(), 0);
    for (size_t e = 0; e < layer.size(); ++e) m.expert_load[e] += layer[e];
  }
  MIMO_RETURN_IF_ERROR(ops_.Synchronize());
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return m;
}

}  // namespace mimo::worker
