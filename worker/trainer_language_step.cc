// Trainer::LanguageStep: a language rank's micro-batches (the encoders' embeddings from the
// links or computed here, the pipeline schedule, the gradients back to the encoders) and the
// step's language metrics summed over the groups.
#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "data/micro_batch.h"
#include "mimo/comm_type.h"
#include "mimo/model_flops.h"
#include "mimo/pipeline_schedule.h"
#include "mimo/tensor_checks.h"
#include "worker/bridge_link.h"
#include "worker/device_batch.h"
#include "worker/group_reduce.h"
#include "worker/trainer.h"
#include "worker/trainer_parts.h"

namespace mimo::worker {

using kernels::Tensor;
using trainer_parts::EncoderIndex;
using trainer_parts::EncoderName;
using trainer_parts::kAudio;
using trainer_parts::kVision;
using trainer_parts::RowsPerSample;
using trainer_parts::SecondsSince;
using trainer_parts::SumRows;

namespace {

// t = Tensor(): its memory freed now. GCC 12 takes the empty tensor's inlined shape vectors
// for uninitialized in this file (a false positive of -W(maybe-)uninitialized on absl's
// InlinedVector move), hence the one place that says so.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
[[gnu::noinline]] void Drop(Tensor& t) { t = Tensor(); }
#pragma GCC diagnostic pop

}  // namespace

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
    // Tokens only: each micro-batch's images and audio go to the device from its samples when
    // its first forward here starts, so the later ones' copies overlap the compute before.
    const auto pack_start = std::chrono::steady_clock::now();
    MIMO_ASSIGN_OR_RETURN(data::HostMicroBatch b, data::PackSamples(samples[i], pack, *tokenizer_));
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
  // Pipeline stages: this stage's part of the language model (its chunks, interleaved), the
  // micro-batches in the 1F1B order (one stage: each micro-batch's forward then its backward).
  const std::vector<std::unique_ptr<LanguageModel>>& chunks = modules_->language;
  const int rank = ModelGroups::Rank(options_.pp), ranks = ModelGroups::Size(options_.pp);
  const bool encoders_here = whole && rank == 0;
  if (!encoders_here) {  // Encoders elsewhere: their inputs are not uploaded here.
    upload.vision.reset();
    upload.audio.reset();
  }
  // Each micro-batch's upload, from the forward of its first chunk here to the backward of its
  // last.
  std::vector<DeviceBatch> batches(options_.micro_batches);
  std::vector<int> chunks_done(options_.micro_batches, 0);
  // A micro-batch of a chunk from its forward to its backward.
  struct InFlight {
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
  std::vector<std::vector<InFlight>> flight(chunks.size());
  for (std::vector<InFlight>& f : flight) f.resize(options_.micro_batches);
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
  auto forward = [&](int c, int64_t i) -> absl::Status {
    InFlight& f = flight[c][i];
    const PipelineStage stage = chunks[c]->stage();
    data::HostMicroBatch& b = host[i];
    DeviceBatch& d = batches[i];
    if (d.sequences == nullptr) {  // The micro-batch's first chunk here.
      const auto upload_start = std::chrono::steady_clock::now();
      // The media only where the encoders run (`upload` has none elsewhere).
      MIMO_ASSIGN_OR_RETURN(d, UploadMicroBatch(ops_, b, samples[i], upload, cp, cp_rank));
      batch_seconds_ += SecondsSince(upload_start);
    }
    const bool last = i + 1 == options_.micro_batches;
    f.ctx = StepContext{.ops = &ops_,
                        .sequences = d.sequences.get(),
                        .loss_scale = 1.0f / static_cast<float>(options_.micro_batches * replicas),
                        .aux_losses = &aux,
                        .routing = routing_log_,
                        .padding_rows = b.padding,
                        .gradients_ready = last ? GradientsReadyHook() : nullptr};
    SetDropoutStream(f.ctx, base, i);
    const StepContext& ctx = f.ctx;
    LanguageModelBatch& text = f.text;
    text = d.batch.text;
    text.embedding_positions.clear();
    text.hidden = std::move(f.received);  // A later stage: the input rows received.
    Drop(f.received);
    if (!stage.first()) return absl::OkStatus();
    const std::vector<int32_t>* positions[2] = {&b.vision_positions, &b.audio_positions};
    const EncoderBatch* inputs[2] = {&d.batch.vision, &d.batch.audio};
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
      for (const parallel::TokenRun& r : d.sequences->runs()) {
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
    if (!whole && cp > 1 && tp_rank == 0 && rows[kVision] + rows[kAudio] > 0) {
      // Every cp member places the rows of its tokens.
      MIMO_ASSIGN_OR_RETURN(const comm::DataType type, CommType(dtype));
      MIMO_RETURN_IF_ERROR(options_.groups.cp->Broadcast(
          text.embeddings.data(), static_cast<size_t>(text.embeddings.numel()), type, /*root=*/0));
    }
    return absl::OkStatus();
  };
  auto backward = [&](int c, int64_t i) -> absl::Status {
    InFlight& f = flight[c][i];
    const PipelineStage stage = chunks[c]->stage();
    MIMO_ASSIGN_OR_RETURN(Tensor grad,
                          chunks[c]->Backward(f.ctx, std::move(f.saved), loss_grad, f.received));
    Drop(f.received);
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
      if (cp > 1 && ModelGroups::Rank(options_.groups.tp) == 0 &&
          f.rows[kVision] + f.rows[kAudio] > 0) {
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
  // The neighbours: activations go up to the next rank (the last rank's to rank 0's next chunk),
  // gradients down.
  const int next = (rank + 1) % ranks, previous = (rank + ranks - 1) % ranks;
  // The micro-batch's upload goes once every chunk here is done with it.
  auto done = [&](int c, int64_t i) {
    flight[c][i] = InFlight();
    if (++chunks_done[i] == static_cast<int>(chunks.size())) batches[i] = DeviceBatch();
  };
  for (const PipelineAction& a : schedule_) {
    const int c = a.chunk;
    const int64_t i = a.micro_batch;
    InFlight& f = flight[c][i];
    const PipelineStage stage = chunks[c]->stage();
    switch (a.kind) {
      case PipelineAction::kRecvActivation:
        MIMO_RETURN_IF_ERROR(transfer(i, false, previous, f.received));
        break;
      case PipelineAction::kForward: {
        MIMO_RETURN_IF_ERROR(forward(c, i));
        MIMO_ASSIGN_OR_RETURN(LanguageModelOutput out, chunks[c]->Forward(f.ctx, f.text));
        f.text = LanguageModelBatch();
        f.saved = std::move(out.saved);
        if (stage.last()) losses.push_back(std::move(out.loss_sum));
        f.send = std::move(out.hidden);
        break;
      }
      case PipelineAction::kSendActivation:
        MIMO_RETURN_IF_ERROR(transfer(i, true, next, f.send));
        Drop(f.send);
        break;
      case PipelineAction::kRecvGradient:
        MIMO_RETURN_IF_ERROR(transfer(i, false, next, f.received));
        break;
      case PipelineAction::kBackward:
        MIMO_RETURN_IF_ERROR(backward(c, i));
        if (stage.first()) done(c, i);
        break;
      case PipelineAction::kSendGradient:
        MIMO_RETURN_IF_ERROR(transfer(i, true, previous, f.send));
        done(c, i);
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

}  // namespace mimo::worker
