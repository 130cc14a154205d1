// Trainer::Step: pack, upload, forward/backward per micro-batch, optimizer, metrics.
#include "worker/trainer.h"

#include <algorithm>
#include <chrono>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "data/micro_batch.h"
#include "mimo/expert_load.h"
#include "worker/device_batch.h"

namespace mimo::worker {

namespace {

// `values` (N of them) summed over `group` in place, through a buffer of the ops' memory (what
// the communicator reads: host memory for Gloo, device memory for NCCL).
template <typename T, size_t N>
absl::Status SumOverGroup(kernels::Ops& ops, comm::Communicator& group, T (&values)[N]) {
  constexpr bool kInt = std::is_same_v<T, int64_t>;
  static_assert(kInt || std::is_same_v<T, float>);
  MIMO_ASSIGN_OR_RETURN(kernels::Tensor buffer,
                        kernels::Tensor::Empty({static_cast<int64_t>(N)},
                                               kInt ? kernels::DType::kI64 : kernels::DType::kF32,
                                               ops.allocator(), ops.stream()));
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(buffer.data(), values, sizeof(values)));
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  MIMO_RETURN_IF_ERROR(group.AllReduce(buffer.data(), N,
                                       kInt ? comm::DataType::kInt64 : comm::DataType::kFloat32,
                                       comm::ReduceOp::kSum));
  return ops.CopyToHost(values, buffer.data(), sizeof(values));
}

}  // namespace

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
  if (ModelGroups::Size(o.groups.expt_tp) > 1) {
    return absl::UnimplementedError(
        "Trainer: expert tensor parallelism (expt_tp > 1) is not yet supported by the training "
        "step");
  }
  BuildContext build{
      .ops = &ops, .config = &model.language.transformer, .seed = o.seed, .groups = o.groups};
  MIMO_ASSIGN_OR_RETURN(auto built, MimoModel::Create(build, model));
  std::vector<Parameter*> all, experts, dense;
  built->AppendParameters(all);
  for (MoeLayer* layer : built->moe_layers()) layer->AppendExpertParameters(experts);
  for (Parameter* p : all) {
    if (std::find(experts.begin(), experts.end(), p) == experts.end()) dense.push_back(p);
  }
  MIMO_ASSIGN_OR_RETURN(auto optimizer, AdamWOptimizer::Create(ops, o.optimizer, dense, experts));
  return std::unique_ptr<Trainer>(new Trainer(ops, model, o, std::move(built), std::move(optimizer),
                                              std::move(dense), std::move(experts)));
}

absl::StatusOr<StepMetrics> Trainer::Step() {
  const auto start = std::chrono::steady_clock::now();
  const data::MicroBatchOptions pack{
      .seq_length = options_.seq_length,
      .image_tokens = config_.vision.has_value() ? config_.vision->max_tokens() : 0,
      .frames_per_token = config_.audio.has_value() ? config_.audio->frames_per_token : 0};
  // Every micro-batch packed first: the loss is averaged over the whole step's labels.
  comm::Communicator* dp =
      options_.dp != nullptr && options_.dp->size() > 1 ? options_.dp : nullptr;
  const int64_t replicas = dp != nullptr ? dp->size() : 1, rank = dp != nullptr ? dp->rank() : 0;
  const int64_t per_rank = options_.micro_batches * options_.micro_batch_size;
  int64_t next = position_ + rank * per_rank;
  position_ += replicas * per_rank;
  std::vector<data::HostMicroBatch> host;
  StepMetrics m;
  for (int64_t i = 0; i < options_.micro_batches; ++i) {
    std::vector<data::Sample> samples;
    for (int64_t j = 0; j < options_.micro_batch_size; ++j) {
      samples.push_back(data::MakeSyntheticSample(options_.data, next++));
    }
    MIMO_ASSIGN_OR_RETURN(data::HostMicroBatch b, data::PackSamples(samples, pack));
    m.labelled += b.labelled;
    m.tokens += static_cast<int64_t>(b.tokens.size());
    host.push_back(std::move(b));
  }
  // The loss is averaged over every replica's labelled tokens.
  if (dp != nullptr) {
    int64_t both[2] = {m.labelled, m.tokens};
    MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *dp, both));
    m.labelled = both[0];
    m.tokens = both[1];
  }
  for (const auto* set : {&dense_, &experts_}) {
    for (Parameter* p : *set) MIMO_RETURN_IF_ERROR(p->ZeroGrad(ops_));
  }
  const float loss_grad = m.labelled > 0 ? 1.0f / static_cast<float>(m.labelled) : 0.0f;
  // Each micro-batch's losses stay on the device until the last backward is enqueued: one wait
  // for all of them.
  std::vector<kernels::Tensor> losses;
  std::vector<AuxLossRecord> aux;
  for (const data::HostMicroBatch& b : host) {
    MIMO_ASSIGN_OR_RETURN(DeviceBatch d, UploadMicroBatch(ops_, b, config_));
    const StepContext ctx{
        .ops = &ops_,
        .sequences = d.sequences.get(),
        .loss_scale = 1.0f / static_cast<float>(options_.micro_batches * replicas),
        .aux_losses = &aux};
    MIMO_ASSIGN_OR_RETURN(MimoOutput out, model_->Forward(ctx, d.batch));
    MIMO_RETURN_IF_ERROR(model_->Backward(ctx, std::move(out.saved), loss_grad));
    losses.push_back(std::move(out.loss_sum));
  }
  double loss_sum = 0;
  for (const kernels::Tensor& t : losses) {
    float value = 0;
    MIMO_RETURN_IF_ERROR(ops_.CopyToHost(&value, t.data(), sizeof(float)));
    loss_sum += value;
  }
  for (const AuxLossRecord& r : aux) {
    float pair[2];
    MIMO_RETURN_IF_ERROR(ops_.CopyToHost(pair, r.losses.data(), sizeof(pair)));
    m.aux_loss += (pair[0] + pair[1]) / static_cast<double>(options_.micro_batches);
  }
  if (dp != nullptr) {
    // Data parallel: every gradient summed over the replicas (each already carries 1 / the
    // group's labelled tokens), and the reported losses too.
    MIMO_RETURN_IF_ERROR(ops_.Synchronize());
    for (Parameter* p : dense_) {
      MIMO_RETURN_IF_ERROR(dp->AllReduce(p->grad().data(), p->numel(), comm::DataType::kFloat32,
                                         comm::ReduceOp::kSum));
    }
    float global[2] = {static_cast<float>(loss_sum), static_cast<float>(m.aux_loss)};
    MIMO_RETURN_IF_ERROR(SumOverGroup(ops_, *dp, global));
    loss_sum = global[0];
    m.aux_loss = global[1] / static_cast<double>(replicas);
  }
  m.loss = m.labelled > 0 ? loss_sum / static_cast<double>(m.labelled) : 0.0;
  // Each rank's experts see every dp rank's tokens through the all-to-all: their gradients are
  // summed over the ranks holding the same experts only.
  comm::Communicator* expt_dp = options_.expt_dp;
  if (expt_dp == nullptr && ModelGroups::Size(options_.groups.ep) == 1) expt_dp = dp;
  if (expt_dp != nullptr && expt_dp->size() == 1) expt_dp = nullptr;
  if (expt_dp != nullptr) {
    MIMO_RETURN_IF_ERROR(ops_.Synchronize());
    for (Parameter* p : experts_) {
      MIMO_RETURN_IF_ERROR(expt_dp->AllReduce(p->grad().data(), p->numel(),
                                              comm::DataType::kFloat32, comm::ReduceOp::kSum));
    }
  }
  MIMO_ASSIGN_OR_RETURN(OptimizerStepStats stats, optimizer_->Step(ops_, options_.groups.ep));
  m.step = stats.step;
  m.lr = stats.lr;
  m.grad_norm = stats.grad_norm;
  m.skipped = stats.skipped;
  const std::vector<MoeLayer*> layers = model_->moe_layers();
  MIMO_ASSIGN_OR_RETURN(ExpertLoads loads, FinishExpertLoadStep(ops_, layers, dp));
  for (const std::vector<int64_t>& layer : loads) {
    m.expert_load.resize(layer.size(), 0);
    for (size_t e = 0; e < layer.size(); ++e) m.expert_load[e] += layer[e];
  }
  MIMO_RETURN_IF_ERROR(ops_.Synchronize());
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return m;
}

}  // namespace mimo::worker
