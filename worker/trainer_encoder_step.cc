// Trainer::EncoderStep: an encoder rank's micro-batches (through its pipeline stages), their
// embeddings sent up the links and the gradients that come back.
#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "data/micro_batch.h"
#include "mimo/comm_type.h"
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
  // Pipeline stages: this member's block of a micro-batch's rows (the tp x cp padding included) to
  // or from a neighbouring stage. The communicator works on its own stream: the tensor's work must
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
    MIMO_ASSIGN_OR_RETURN(data::HostMicroBatch host, data::PackSamples(samples, pack, *tokenizer_));
    Pending p;
    p.index = i;
    MIMO_ASSIGN_OR_RETURN(p.batch, UploadMicroBatch(ops_, host, samples, upload));
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
      const bool tp0 = ModelGroups::Rank(options_.groups.tp) == 0;
      for (comm::Communicator* group : {options_.groups.cp, options_.groups.tp}) {
        if (ModelGroups::Size(group) == 1 || (group == options_.groups.cp && !tp0)) continue;
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
