// Training the MIMO model on a rank, alone, data parallel, or with its modules on their own
// ranks: each step packs this rank's micro-batches of synthetic samples, runs forward and
// backward on each (gradients accumulated, the loss averaged over the whole step's labelled
// tokens on every language replica, auxiliary losses over its micro-batches), sums the gradients
// over each module's data-parallel group, then the optimizer update (clipped by the norm over the
// whole model) and the per-expert load; it reports the step's metrics. With modules on their own
// ranks the encoders' embeddings travel to the language ranks over the bridge links
// (parallel/bridge.h) and their gradients back.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/safetensors.h"
#include "comm/communicator.h"
#include "data/sample_source.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "data/webdataset.h"
#include "kernels/ops.h"
#include "mimo/distributed_optimizer.h"
#include "mimo/gradient_buffer.h"
#include "mimo/gradient_sync.h"
#include "mimo/language_model.h"
#include "mimo/mimo_model.h"
#include "mimo/modality_encoder.h"
#include "mimo/model_groups.h"
#include "mimo/optimizer.h"
#include "mimo/pipeline_schedule.h"
#include "worker/bridge_link.h"
#include "worker/gradient_update.h"
#include "worker/rank_state_format.h"
#include "worker/sample_prefetcher.h"

namespace mimo::worker {

struct TrainerOptions {
  int64_t micro_batch_size = 1;  // Samples per language replica's forward/backward; >= 1.
  int64_t micro_batches = 1;     // Per optimizer step (gradient accumulation); >= 1.
  int64_t seq_length = 0;        // Tokens per sample at most; > 0.
  // The samples: the built-in synthetic dataset (`data`) unless `webdataset` is set (its shards
  // indexed at Create, shuffled per epoch by its seed); either way their image and audio sizes
  // are set from the model.
  data::SyntheticOptions data;
  std::optional<data::WebDatasetOptions> webdataset;
  std::string tokenizer_model;  // A SentencePiece model file (data/sentencepiece_tokenizer.h) whose
                                // pieces plus the two placeholders must fit the language model's
                                // vocabulary; empty: the byte-level tokenizer.
  // Samples the group consumed before this trainer (a resumed job's Trainer::position()): the
  // first step reads on from there. >= 0.
  int64_t start_position = 0;
  OptimizerConfig optimizer;
  uint64_t seed = 1234;  // The job seed: keys the initial parameters.
  // The data-parallel group of this rank's module (not owned; null or one member: this rank
  // alone). Every member calls Step together. Each step takes L * micro_batches *
  // micro_batch_size samples (L: the language model's replicas); language replica r takes
  // [base + r * k, base + (r + 1) * k) (k = micro_batches * micro_batch_size), so the group sees
  // what one rank with L times the micro-batches would, and the replicas stay identical.
  comm::Communicator* dp = nullptr;
  // Expert parallelism of the language model (ModelGroups::ep and expt_tp): the routed experts'
  // gradients are summed over expt_dp (the ranks holding the same expert shards; null: dp
  // without EP, expt_tp and tp, none with EP or expt_tp; required with tp alone) instead of dp,
  // and their squared norms over ep and expt_tp. Tensor parallelism of the language model
  // (ModelGroups::tp; on GPUs without overlap_grad_reduce): its members read the same samples, each
  // micro-batch is padded to a multiple of tp tokens, only member 0 holds the links to the
  // encoders, the slices' squared norms and the MoE layers' auxiliary losses and loads are summed
  // over tp, and on a rank of the whole model the encoders are computed whole by every member.
  //
  // Context parallelism of the language model (ModelGroups::cp, Megatron's cp): its members
  // read the same samples, every sequence is padded to a multiple of 2 cp (2 cp tp with tp > 1)
  // with unlabelled EOS ids, and member r computes chunks r and 2cp-1-r of each
  // (parallel/context_split.h; the attention is ring attention). The dense gradients are summed
  // over dp_cp (the [cp, dp] group, required with cp > 1; also the distributed optimizer's
  // shards), the routed experts' over expt_dp (dp_cp without EP and expt_tp); losses, auxiliary
  // losses and expert loads are summed over cp. Only member (tp 0, cp 0) holds the links to the
  // encoders and broadcasts the modality rows over cp; on a rank of the whole model every member
  // computes the encoders whole. Not on GPUs with overlap_grad_reduce. The padding tokens are
  // routed by the MoE layers like any token (as in Megatron): they count in the expert loads and
  // the auxiliary losses, so an MoE model trains like cp 1 exactly only when no sequence needs
  // padding. On an encoder's ranks, cp is all-to-all attention over whole samples
  // (mimo/modality_encoder.h): the members read the same samples, each carries its block of the
  // rows, the gradients are summed over dp_cp, and member (tp 0, cp 0) of the last stage holds
  // the links and broadcasts d(embeddings) over cp and tp.
  ModelGroups groups;
  comm::Communicator* dp_cp = nullptr;
  comm::Communicator* expt_dp = nullptr;
  // Pipeline parallelism of the language model (Megatron's pp; not owned; null or one member:
  // none): this rank holds stage pp->rank() of pp->size() (mimo/transformer_block.h's
  // PipelineStage; the layers must divide by the stages) and runs the step's micro-batches in the
  // 1F1B schedule (mimo/pipeline_schedule.h), each stage's output rows and their gradients sent
  // between neighbouring stages over this group. Every stage reads the same samples; only the
  // first stage holds the links to the encoders (on a rank of the whole model: the encoders);
  // the stages' squared norms, losses and expert loads are summed over it. On an encoder's own
  // ranks: its stages run every micro-batch's forward in turn, the last stage's member (tp 0, cp 0)
  // holding the links, then the backwards from the last stage back; their norms summed over pp.
  comm::Communicator* pp = nullptr;
  // Interleaved pipeline stages of the language model (Megatron's
  // virtual_pipeline_model_parallel_size): with v > 1 its layers are pp x v chunks, this rank
  // holding chunks c * pp + rank (c < v), run in the interleaved 1F1B schedule (a bubble of
  // (pp - 1) / (v m + pp - 1) of the step instead of (pp - 1) / (m + pp - 1)); activations of a
  // chunk go to the next rank, the last rank's to rank 0's next chunk. Needs pp > 1 and
  // micro_batches a multiple of pp.
  int virtual_stages = 1;
  // With pp > 1 and shared word embeddings (LanguageModelConfig::
  // share_embeddings_and_output_weights): the first and last stages' ranks (Megatron's
  // embedding group, two members; not owned), over which the two copies' gradients are summed
  // before the update. The last stage's copy is left out of the gradient norm.
  comm::Communicator* embd = nullptr;
  // Modules on their own ranks: which part this rank computes, and its links to the other side.
  // Micro-batch i of every language replica together makes a global micro-batch of L *
  // micro_batch_size samples; an encoder with E replicas (E divides L or L divides E, and E
  // divides L * micro_batch_size) encodes them in E contiguous blocks, one per replica, and
  // sends each language replica the rows of its samples (parallel/bridge.h pairs the replicas).
  // On a language rank: for every encoder of the model, one link per encoder replica feeding
  // it; on an encoder rank: one per language replica it feeds. kWhole: no links.
  ModelPart part = ModelPart::kWhole;
  std::vector<BridgeEnd> links;
  // Gradients are summed over dp (dp_cp; and expt_dp) in buckets of about this many fp32 elements
  // (mimo/gradient_buffer.h); > 0.
  int64_t bucket_elements = GradientBuffer::kDefaultBucketElements;
  // Each bucket's reduction starts on a communication thread as soon as the last micro-batch's
  // backward has finished its gradients (mimo/gradient_sync.h), overlapping the rest of the
  // backward; false: every bucket starts after the backward. The same sums either way.
  bool overlap_grad_reduce = true;
  // Megatron's distributed optimizer (mimo/distributed_optimizer.h): the gradients are
  // reduce-scattered over dp (the routed experts' over expt_dp) instead of all-reduced, each
  // replica keeps and updates its shard of the fp32 masters and AdamW moments, and the weights
  // are all-gathered. The same training, a 1/dp share of the optimizer's memory. Parameters
  // without replicas (dp or expt_dp of one rank) are updated by the plain optimizer.
  bool distributed_optimizer = false;
};
// Loss, token counts, model FLOPs and expert loads are the language ranks': 0 (empty) on
// encoder ranks.
struct StepMetrics {
  int64_t step = 0;  // The optimizer update's number, 1 for the first (a skipped step takes none).
  double loss = 0;   // Mean loss per labelled token.
  double aux_loss = 0;   // The MoE layers' load-balancing + z losses, mean per micro-batch.
  double grad_norm = 0;  // Over the whole model, every module's gradients.
  double lr = 0;
  bool skipped = false;
  int64_t tokens = 0;                // Packed tokens of the step (not tp's or cp's padding).
  int64_t labelled = 0;              // Of which with a label.
  std::vector<int64_t> expert_load;  // Per expert, summed over the MoE layers and the group.
  // Per MoE layer of the whole stack, by its layer number: the busiest expert's load over the
  // mean load, summed over the group (1: balanced; 0: the layer routed nothing).
  std::map<int, double> expert_load_imbalance;
  // The whole model's training FLOPs of the step, over all ranks (mimo/model_flops.h: the
  // language model and the encoders on the step's samples).
  double model_flops = 0;
  double seconds = 0;  // Wall time of the step.
  // Of which waiting for samples the background readers had not finished (the data loading
  // is the bottleneck when it is a large share).
  double data_wait_seconds = 0;
  // Of which packing micro-batches and copying them to the device on the step's thread (the
  // device may idle meanwhile: the step's first micro-batch has nothing before it to overlap).
  double batch_seconds = 0;
  // Of this rank's gradient buckets (mimo/gradient_sync.h), those whose reduction started
  // during the backward, overlapping it; the rest started after it.
  int64_t overlapped_buckets = 0;
  // This rank's most memory live at once so far (its ops' allocator), every rank.
  int64_t peak_memory_bytes = 0;
};

class Trainer {
 public:
  // InvalidArgument for options that do not fit the model or each other (links not those the
  // layout pairs, sizes that do not divide).
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(kernels::Ops& ops,
                                                         const MimoModelConfig& model,
                                                         const TrainerOptions& options);
  ~Trainer();
  // One optimizer step on the next L * micro_batches * micro_batch_size samples.
  absl::StatusOr<StepMetrics> Step();
  // From the next step on, the language MoE layers' routing of every micro-batch is appended to
  // `log` (not owned; null: none is kept), in the order of the forwards: micro-batch by
  // micro-batch, layer by layer (bench/reference_dump replays it in the PyTorch reference).
  void set_routing_log(std::vector<RoutingRecord>* log) { routing_log_ = log; }
  // Samples consumed so far by the whole group (the data position).
  int64_t position() const { return position_; }
  // For WebDataset shards, what they held: shards, members, samples kept and skipped (for a log
  // line); "" for the synthetic set.
  const std::string& data_summary() const { return data_summary_; }
  // The options as resolved (the data's image and audio sizes set from the model).
  const TrainerOptions& options() const { return options_; }
  // Where the samples come from and how their captions become token ids.
  const data::SampleSource& source() const { return *source_; }
  const data::Tokenizer& tokenizer() const { return *tokenizer_; }
  // The parameters of this rank's modules (vision.*, audio.*, language.*).
  void AppendParameters(std::vector<Parameter*>& out) const;

  // This rank's part of the training state, written into `dir` (a checkpoint's staging folder,
  // checkpoint/checkpoint_dir.h) as two safetensors files named by `rank` (its global rank):
  // model_rank_NNNNN.safetensors, every parameter's weights in the compute dtype under its
  // name; optim_rank_NNNNN.safetensors, the fp32 masters (when the weights are bf16;
  // "<name>.master"), AdamW's moments ("<name>.exp_avg", ".exp_avg_sq") and the MoE layers'
  // expert biases ("<layer>.mlp.router.expert_bias", when they balance by bias); both with the
  // step, data position and rank in their metadata and "shards": for each parameter split over
  // ranks (tp, ep, expt_tp), per split dimension its full size and the [start, size] ranges of
  // it this rank holds (the optimizer's tensors of a parameter lie where its weight does). With
  // the distributed optimizer, a parameter's optimizer tensors are this rank's run of its
  // elements, (n,) each, placed by the optimizer file's "pieces" ({name: {"offset": the run's
  // first element, "shape": the parameter's on this rank}}). So every tensor has a place in its
  // parameter's full tensor: any layout's ranks read them (mimo-convert reshard). Between steps
  // only. Returns each file's digest (by file name), for the checkpoint's metadata.
  absl::StatusOr<std::map<std::string, checkpoint::FileDigest>> SaveState(const std::string& dir,
                                                                          int rank) const;
  // The same state copied to host memory (every tensor; the device is done with it on return),
  // for WriteRankState to write the same files while training goes on (an asynchronous save).
  absl::StatusOr<std::unique_ptr<HostRankState>> CaptureState(int rank) const;
  // Restores what SaveState wrote for `rank`, into a trainer of the same model and layout just
  // created (or files mimo-convert wrote for this layout: the distributed optimizer takes its
  // run of whole optimizer tensors): the next Step continues as the saved run's would (the same
  // samples, learning rate, moments and weights). NotFound, DataLoss or InvalidArgument naming
  // the file and the tensor that is missing, damaged or of another dtype or shape, before any
  // state is changed only for the metadata check; a tensor that fails midway leaves the trainer
  // to be discarded.
  // The replicas this rank did not save (SaveState writes each once) are read from the files of
  // `sources` (the global ranks of member 0 of its data-parallel groups; empty: from every
  // rank's files of `dir`, whose headers are read then).
  absl::Status LoadState(const std::string& dir, int rank, const std::vector<int>& sources = {});

 private:
  struct Modules;
  // One of the two files SaveState writes: its device tensors, by name, and metadata.
  struct StateFile {
    const char* kind = "";
    std::vector<std::pair<std::string, kernels::Tensor>> tensors;
    std::map<std::string, std::string> metadata;
  };
  absl::StatusOr<std::vector<StateFile>> StateFiles(int rank) const;
  Trainer(kernels::Ops& ops, const MimoModelConfig& config, const TrainerOptions& options,
          std::unique_ptr<Modules> modules, GradientUpdate update, std::vector<Parameter*> dense,
          std::vector<Parameter*> experts);
  // Hidden dropout's stream for micro-batch i of the step that starts at sample `base`:
  // Megatron's data-parallel seed of this rank (the job seed + 100 x its pipeline stage) and an
  // offset of its own per micro-batch of the run (2^40 elements apart), so no two micro-batches
  // share a mask and a resumed run draws the masks an uninterrupted one would.
  void SetDropoutStream(StepContext& ctx, int64_t base, int64_t i) const;
  // The MoE layers of this rank's part of the language model (none on encoder ranks).
  std::vector<MoeLayer*> MoeLayers() const;
  // The group the dense gradients are summed over: dp, or dp_cp with context parallelism.
  comm::Communicator* GradientGroup() const {
    return ModelGroups::Size(options_.groups.cp) > 1 ? options_.dp_cp : options_.dp;
  }
  // The routed experts' data-parallel group (TrainerOptions::expt_dp as resolved).
  comm::Communicator* ExpertDataParallelGroup() const;
  // The groups over which the routed experts' squared norms are summed (ep, expt_tp); none on
  // encoder ranks.
  std::vector<comm::Communicator*> ExpertNormGroups() const;
  // Sample `index` of the global order (read ahead when it was asked for); recorded, so that
  // the next steps' indices (the same offsets from their base) are read ahead.
  absl::StatusOr<data::Sample> ReadSample(int64_t index);
  // The language side of a step (kWhole, kLanguage) and an encoder's (kVision, kAudio).
  absl::Status LanguageStep(int64_t base, StepMetrics& m);
  absl::Status EncoderStep(int64_t base);
  absl::StatusOr<float> WholeModelSquaredNorm();
  // The loss (summed by LanguageStep), aux loss and FLOPs over the language replicas; the loss
  // divided by the step's labelled tokens.
  absl::Status ReduceLanguageMetrics(StepMetrics& m);
  // What the last micro-batch's backward reports finished gradients to (null: none).
  GradientReadyHook* GradientsReadyHook() const;

  kernels::Ops& ops_;
  const MimoModelConfig config_;
  const TrainerOptions options_;
  std::unique_ptr<Modules> modules_;
  GradientUpdate update_;
  std::unique_ptr<data::SampleSource> source_;
  std::string data_summary_;  // data_summary().
  std::unique_ptr<SamplePrefetcher> prefetcher_;
  std::vector<int64_t> offsets_;  // Of this step's reads from its base.
  int64_t base_ = 0;              // This step's.
  int64_t fetched_base_ = 0;      // The last base whose samples were asked for ahead.
  double data_wait_ = 0;          // This step's, in seconds (StepMetrics::data_wait_seconds).
  double batch_seconds_ = 0;      // This step's (StepMetrics::batch_seconds).
  std::vector<RoutingRecord>* routing_log_ = nullptr;  // set_routing_log's.
  // The byte-level tokenizer, or owned_tokenizer_ (options_.tokenizer_model's SentencePiece model).
  const data::Tokenizer* tokenizer_ = nullptr;
  std::unique_ptr<data::Tokenizer> owned_tokenizer_;
  std::vector<Parameter*> dense_;  // Every parameter but the routed experts'.
  // A language rank's actions each step: its pipeline stage's 1F1B or interleaved schedule (one
  // stage: each micro-batch's forward, then its backward). Made once: the interleaved one is
  // a simulation of every rank.
  std::vector<PipelineAction> schedule_;
  std::vector<Parameter*> experts_;  // The routed experts' (this rank's experts with EP).
  int64_t position_ = 0;
};

}  // namespace mimo::worker
