// The KIND_TRAIN job on one rank: the rank's part of the MIMO model built from the job spec and
// trained for training.steps optimizer steps over its process groups, progress logged in the
// lines Megatron-LM users read and reported as metrics.
#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/key_value_store.h"
#include "comm/process_groups.h"
#include "kernels/ops.h"
#include "mimo/v1/job.pb.h"
#include "mimo/v1/worker_service.pb.h"
#include "worker/log_interval.h"
#include "worker/trainer.h"

namespace mimo::worker {

// The options a job spec sets for every rank whose language module has `language_dp` replicas:
// micro-batches global_batch_size / (micro_batch_size * language_dp), seq_length, the data (the
// synthetic set, num_samples 0: 10000, or the WebDataset shards shuffled by the job seed), the
// optimizer (distributed or not) and the job seed (0: 1234). InvalidArgument when the global
// batch does not split so.
absl::StatusOr<TrainerOptions> TrainerOptionsFromSpec(const v1::JobSpec& spec, int language_dp);

// The trainer's options for the rank of `assignment` over `groups` (built by GroupSpecsOf): its
// part of the model (the module's kind), micro-batches global_batch_size / (micro_batch_size *
// language dp), the data and the optimizer from the spec (TrainerOptionsFromSpec), the job seed
// (0: 1234), the module's dp group, on language ranks ep and expt_dp, and the rank's
// bridge links. InvalidArgument when the spec or the groups do not fit (the coordinator's
// validation refuses such specs first).
absl::StatusOr<TrainerOptions> TrainerOptionsFor(const v1::Assignment& assignment,
                                                 const comm::ProcessGroups& groups);

// Whether a rank of a module with this tp, pp, cp, ep and etp overlaps its gradient reduction
// with the backward: the spec's training.optimizer.overlap_grad_reduce when set; unset, on,
// except on GPUs for a module with any of them > 1, whose backward makes collectives of its own
// beside the reduction, which the trainer cannot overlap there yet (the coordinator refuses an
// explicit true).
bool OverlapGradReduce(const v1::JobSpec& spec, int tp, int pp, int cp, int ep, int etp);

// The datasheet's dense peak TFLOP/s of a GPU for `dtype` (H100 SXM and H200: 989 in bf16, 67 in
// fp32), the denominator of MFU; 0 when unknown (a CPU, another GPU, an H100 PCIe or NVL).
double PeakTflops(const std::string& device_name, kernels::DType dtype);

// The report of an interval ending at iteration `r.mean.step` of `steps` in Megatron-LM's format
// ("iteration 5/ 50 | consumed samples: 80 | elapsed time per iteration (ms): 12.3 | throughput
// per GPU (TFLOP/s/GPU): 1.2 | learning rate: 3.000000E-04 | global batch size: 16 | lm loss:
// 5.123456E+00 | ... | number of skipped iterations: 0 | number of nan iterations: 0 |"): times,
// losses and throughput are the interval's means, the counts its steps' (log_interval.h).
std::string MegatronLogLine(const IntervalMetrics& r, int64_t steps, int64_t consumed_samples,
                            int64_t global_batch_size, double tflops_per_gpu);

// The group of every rank of a KIND_TRAIN job of more than one rank that saves checkpoints
// (members 0..world-1), where the ranks agree on checkpoint requests.
inline constexpr char kWorldGroup[] = "world";

// The groups a KIND_TRAIN rank connects: kWorldGroup first when the job has one, then
// GroupSpecsOf's.
absl::StatusOr<std::vector<comm::GroupSpec>> TrainingGroupSpecs(const v1::Assignment& assignment);

struct TrainJobHooks {
  std::function<void(const std::string&)> log;     // A line for the job's log.
  std::function<void(const v1::Metrics&)> report;  // Metrics of a step (the logging rank only).
  std::function<bool()> stopped;                   // Checked before every step.
  // The newest checkpoint request this rank has heard of (sequence 0: none); asked after every
  // step when the spec has checkpointing.dir. Null: none ever.
  std::function<v1::CheckpointRequest()> checkpoint_request;
  // The attempt's key-value store (not owned), where the ranks meet to commit a checkpoint;
  // needed with spec.checkpointing.dir and more than one rank. A save waits up to
  // store_timeout for the other ranks.
  comm::KeyValueStore* store = nullptr;
  absl::Duration store_timeout = absl::Minutes(10);
};

// How a run ended: after the last step, or earlier after a checkpoint-and-stop request.
struct TrainingEnd {
  int64_t iteration = 0;   // The last iteration done: training.steps, or fewer when stopped.
  std::string checkpoint;  // The checkpoint saved after it ("" when none was).
};

// Runs the job's steps on this rank with `ops` (CPU ops with Gloo groups, CUDA ops with NCCL
// groups). The logging rank (the language module's data-parallel replica 0, tp member 0) logs every
// training.log_interval steps (0: every step) and the last one, and reports the same steps'
// metrics, and with spec.output_dir writes them there too (training_outputs.h; `host` names its
// TensorBoard file): each report covers the steps since the previous one (IntervalMetrics: loss,
// aux loss, step time and throughput averaged over them, as Megatron-LM's iteration line);
// every rank logs its start and end. Cancelled once `stopped` says so. With
// spec.checkpointing it first resumes from the checkpoint job_checkpoint.h finds (the steps
// after the saved one; the same samples, losses and updates as a run never interrupted) and
// saves every interval_steps and after the last step. After every step the ranks agree (a max
// over kWorldGroup) on the newest checkpoint request any of them has heard of: a new one is
// saved after that step, and one that asks to stop ends the run there, once the save is done.
absl::StatusOr<TrainingEnd> RunTraining(const v1::Assignment& assignment,
                                        const comm::ProcessGroups& groups, kernels::Ops& ops,
                                        bool cuda, const std::string& device_name,
                                        const std::string& host, const TrainJobHooks& hooks);

}  // namespace mimo::worker
