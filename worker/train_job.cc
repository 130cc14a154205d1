// RunTraining: spec -> model config and trainer options, then the step loop with its log lines
// and metrics.
#include "worker/train_job.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <memory>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "checkpoint/checkpoint_dir.h"
#include "common/status_macros.h"
#include "google/protobuf/util/time_util.h"
#include "worker/group_reduce.h"
#include "worker/group_specs.h"
#include "worker/job_checkpoint.h"
#include "worker/model_spec.h"
#include "worker/rank_modules.h"
#include "worker/training_outputs.h"

namespace mimo::worker {
namespace {

// One save running on a thread of its own; at most one at a time.
class BackgroundSave {
 public:
  ~BackgroundSave() { Wait().IgnoreError(); }
  void Start(std::function<absl::Status()> save) {
    done_ = false;
    thread_ = std::thread([this, save = std::move(save)] {
      status_ = save();
      done_ = true;
    });
  }
  // Waits for the save in flight, if any; its status.
  absl::Status Wait() {
    if (!thread_.joinable()) return absl::OkStatus();
    thread_.join();
    return std::exchange(status_, absl::OkStatus());
  }
  // Without waiting: the status of a save that has ended (joined), OK while one runs or none
  // does. Checked after every step, so that a failed save ends the run at once.
  absl::Status Check() { return done_ ? Wait() : absl::OkStatus(); }

 private:
  std::thread thread_;
  std::atomic<bool> done_{false};
  absl::Status status_;  // Written by the thread before done_, read after the join.
};

}  // namespace

absl::StatusOr<std::vector<comm::GroupSpec>> TrainingGroupSpecs(const v1::Assignment& assignment) {
  MIMO_ASSIGN_OR_RETURN(std::vector<comm::GroupSpec> specs, GroupSpecsOf(assignment.rank()));
  if (!assignment.spec().checkpointing().dir().empty() && assignment.world_size() > 1) {
    // Connected first, by every rank: the same place in every rank's order.
    comm::GroupSpec world{.kind = kWorldGroup};
    for (int r = 0; r < assignment.world_size(); ++r) world.members.push_back(r);
    specs.insert(specs.begin(), std::move(world));
  }
  return specs;
}

absl::StatusOr<TrainerOptions> TrainerOptionsFromSpec(const v1::JobSpec& spec, int language_dp) {
  const v1::Training& t = spec.training();
  TrainerOptions o;
  const int64_t per_micro_batch = int64_t{t.micro_batch_size()} * language_dp;
  if (per_micro_batch < 1 || t.global_batch_size() % per_micro_batch != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "global_batch_size ", t.global_batch_size(), " is not a multiple of micro_batch_size ",
        t.micro_batch_size(), " * language dp ", language_dp));
  }
  o.micro_batch_size = t.micro_batch_size();
  o.micro_batches = t.global_batch_size() / per_micro_batch;
  o.seq_length = t.seq_length();
  o.seed = t.seed() != 0 ? static_cast<uint64_t>(t.seed()) : 1234;
  o.data.num_samples =
      spec.data().synthetic().num_samples() > 0 ? spec.data().synthetic().num_samples() : 10000;
  o.data.seed = o.seed;
  if (spec.data().has_webdataset()) {
    const v1::Data::WebDataset& w = spec.data().webdataset();
    o.webdataset =
        data::WebDatasetOptions{.shards = {w.shards().begin(), w.shards().end()}, .seed = o.seed};
    o.tokenizer_model = w.tokenizer_model();
  }
  const v1::Optimizer& opt = t.optimizer();
  o.optimizer = {.lr = static_cast<float>(opt.lr()),
                 .min_lr = static_cast<float>(opt.min_lr()),
                 .weight_decay = static_cast<float>(opt.weight_decay()),
                 .beta1 = static_cast<float>(opt.adam_beta1()),
                 .beta2 = static_cast<float>(opt.adam_beta2()),
                 .eps = static_cast<float>(opt.adam_eps()),
                 .clip_grad = static_cast<float>(opt.clip_grad()),
                 .warmup_steps = opt.warmup_steps(),
                 .decay_steps = opt.decay_steps()};
  o.distributed_optimizer = opt.use_distributed_optimizer();
  o.overlap_grad_reduce = OverlapGradReduce(spec, 1, 1, 1, 1, 1);
  return o;
}

absl::StatusOr<TrainerOptions> TrainerOptionsFor(const v1::Assignment& assignment,
                                                 const comm::ProcessGroups& groups) {
  const v1::JobSpec& spec = assignment.spec();
  const v1::RankAssignment& rank = assignment.rank();
  TrainerOptions o;
  MIMO_ASSIGN_OR_RETURN(o.part, PartOfModule(spec, rank.module()));
  const bool language = o.part == ModelPart::kLanguage;
  o.dp = groups.Get("dp");
  o.dp_cp = groups.Get("dp_cp");
  o.groups = ModelGroupsOf(groups);
  o.pp = groups.Get("pp");
  if (language) {
    o.expt_dp = groups.Get("expt_dp");
    o.embd = groups.Get("embd");
  }
  for (const v1::RankLink& link : rank.links()) {
    MIMO_ASSIGN_OR_RETURN(const ModelPart encoder, PartOfModule(spec, link.encoder()));
    comm::Communicator* group = groups.Get(link.kind());
    if (group == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("no process group for link ", link.kind()));
    }
    o.links.push_back({.encoder = encoder,
                       .peer_replica = language ? link.encoder_replica() : link.language_replica(),
                       .peer_dp = language ? link.encoder_dp() : link.language_dp(),
                       .group = group});
  }
  int language_dp = ModelGroups::Size(o.dp);
  for (const v1::ModulePlan& m : assignment.modules()) {
    if (m.language() && language) o.virtual_stages = std::max(1, m.vpp());
  }
  if (!language) {
    // Tensor-parallel encoder members other than 0 hold no link: the plan says.
    language_dp = 0;
    for (const v1::ModulePlan& m : assignment.modules()) {
      if (m.language()) language_dp = m.dp();
    }
    if (language_dp < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "encoder rank ", rank.rank(), ": the assignment has no language module's plan (its dp)"));
    }
  }
  MIMO_ASSIGN_OR_RETURN(const TrainerOptions from_spec, TrainerOptionsFromSpec(spec, language_dp));
  o.micro_batch_size = from_spec.micro_batch_size;
  o.micro_batches = from_spec.micro_batches;
  o.seq_length = from_spec.seq_length;
  o.seed = from_spec.seed;
  o.data = from_spec.data;
  o.webdataset = from_spec.webdataset;
  o.tokenizer_model = from_spec.tokenizer_model;
  o.optimizer = from_spec.optimizer;
  o.distributed_optimizer = from_spec.distributed_optimizer;
  o.overlap_grad_reduce = OverlapGradReduce(
      spec, ModelGroups::Size(o.groups.tp), ModelGroups::Size(o.pp), ModelGroups::Size(o.groups.cp),
      ModelGroups::Size(o.groups.ep), ModelGroups::Size(o.groups.expt_tp));
  return o;
}

bool OverlapGradReduce(const v1::JobSpec& spec, int tp, int pp, int cp, int ep, int etp) {
  const v1::Optimizer& opt = spec.training().optimizer();
  if (opt.has_overlap_grad_reduce()) return opt.overlap_grad_reduce();
  return spec.resources().device() == v1::DEVICE_KIND_CPU ||
         (tp == 1 && pp == 1 && cp == 1 && ep == 1 && etp == 1);
}

double PeakTflops(const std::string& device_name, kernels::DType dtype) {
  // SXM parts only ("NVIDIA H100 80GB HBM3", "NVIDIA H200"); PCIe and NVL parts peak lower.
  if (absl::StrContains(device_name, "H100 80GB HBM3") ||
      absl::StrContains(device_name, "H100 SXM") || absl::StrContains(device_name, "H200")) {
    return dtype == kernels::DType::kBF16 ? 989.0 : 67.0;
  }
  return 0;
}

std::string MegatronLogLine(const IntervalMetrics& r, int64_t steps, int64_t consumed_samples,
                            int64_t global_batch_size, double tflops_per_gpu) {
  const StepMetrics& m = r.mean;
  std::string line = absl::StrFormat(
      " [%s] iteration %8d/%8d | consumed samples: %12d | elapsed time per iteration (ms): %.1f "
      "| throughput per GPU (TFLOP/s/GPU): %.1f | learning rate: %E | global batch size: %5d "
      "| lm loss: %E | aux loss: %E | grad norm: %.3f | tokens per second: %.0f | ",
      absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::Now(), absl::LocalTimeZone()), m.step, steps,
      consumed_samples, m.seconds * 1e3, tflops_per_gpu, m.lr, global_batch_size, m.loss,
      m.aux_loss, m.grad_norm, m.seconds > 0 ? m.tokens / m.seconds : 0.0);
  absl::StrAppend(&line, "number of skipped iterations: ", absl::StrFormat("%3d", r.skipped),
                  " | number of nan iterations: ", absl::StrFormat("%3d", r.nan), " |");
  return line;
}

absl::StatusOr<TrainingEnd> RunTraining(const v1::Assignment& assignment,
                                        const comm::ProcessGroups& groups, kernels::Ops& ops,
                                        bool cuda, const std::string& device_name,
                                        const std::string& host, const TrainJobHooks& hooks) {
  const v1::JobSpec& spec = assignment.spec();
  const v1::Training& t = spec.training();
  const kernels::DType dtype = ComputeDType(t.precision(), cuda);
  MIMO_ASSIGN_OR_RETURN(const MimoModelConfig model, MimoModelConfigFromSpec(spec, dtype));
  MIMO_ASSIGN_OR_RETURN(const TrainerOptions options, TrainerOptionsFor(assignment, groups));
  MIMO_ASSIGN_OR_RETURN(auto trainer, Trainer::Create(ops, model, options));
  std::vector<Parameter*> params;
  trainer->AppendParameters(params);
  int64_t numel = 0;
  for (const Parameter* p : params) numel += p->numel();
  const v1::RankAssignment& rank = assignment.rank();
  // One rank: data-parallel replica 0, tensor- and context-parallel member 0 (the members log
  // the same loss) of the last pipeline stage (as Megatron logs).
  const bool logs = options.part == ModelPart::kLanguage && rank.dense().dp() == 0 &&
                    rank.dense().tp() == 0 && rank.dense().cp() == 0 &&
                    rank.dense().pp() == ModelGroups::Size(options.pp) - 1;
  const int64_t interval = t.log_interval() > 0 ? t.log_interval() : 1;
  const double peak = PeakTflops(device_name, dtype);
  const int world = spec.resources().workers();
  // Every rank reads the same shards: one says what they held (the skipped samples' counts).
  if (logs && !trainer->data_summary().empty()) hooks.log(trainer->data_summary());
  hooks.log(absl::StrCat("training module ", rank.module(), ": ", numel,
                         " parameters on this rank, ", options.micro_batches, " micro-batches of ",
                         options.micro_batch_size, " samples per step, ", kernels::DTypeName(dtype),
                         ", ", t.steps(), " steps"));
  const v1::Checkpointing& checkpointing = spec.checkpointing();
  MIMO_RETURN_IF_ERROR(CheckCheckpointDirWritable(spec, rank.rank()));
  MIMO_ASSIGN_OR_RETURN(const std::optional<ResumePoint> resume,
                        AgreeOnResumePoint(assignment, hooks.store, hooks.store_timeout));
  int64_t first_step = 1;
  if (resume.has_value()) {
    absl::Status s = VerifyRankFiles(*resume, rank.rank());
    // The replicas this rank lacks are in the files of member 0 of its data-parallel groups.
    std::vector<int> sources;
    for (const char* kind : {"dp", "dp_cp", "expt_dp"}) {
      const auto group = rank.groups().find(kind);
      if (group != rank.groups().end() && !group->second.ranks().empty()) {
        sources.push_back(group->second.ranks(0));
      }
    }
    if (s.ok()) s = trainer->LoadState(resume->dir, rank.rank(), sources);
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("resuming from ", resume->dir, ": ", s.message()));
    }
    first_step = resume->iteration + 1;
    hooks.log(absl::StrCat("resumed from ", resume->dir, " after iteration ", resume->iteration,
                           " (consumed samples: ", trainer->position(), ")"));
  }
  std::unique_ptr<TrainingOutputs> outputs;
  if (logs && !spec.output_dir().empty()) {
    MIMO_ASSIGN_OR_RETURN(outputs, TrainingOutputs::Create(spec.output_dir(), host, first_step));
    hooks.log(
        absl::StrCat("writing metrics.csv, tensorboard/ and loss.png to ", spec.output_dir()));
  }
  const int64_t save_interval = checkpointing.interval_steps();
  auto ms = [](absl::Duration d) {
    return absl::FormatDuration(absl::Trunc(d, absl::Milliseconds(1)));
  };
  // An asynchronous save in flight: joined before the next save and before this function
  // returns, however it returns.
  BackgroundSave background;
  double seconds = 0;
  comm::Communicator* world_group = groups.Get(kWorldGroup);
  int64_t requests_done = 0;  // Checkpoint requests saved so far.
  TrainingEnd end{.iteration = first_step - 1};
  LogInterval interval_steps;  // The steps since the last report.
  for (int64_t step = first_step; step <= t.steps(); ++step) {
    if (hooks.stopped && hooks.stopped()) return absl::CancelledError("the job was stopped");
    MIMO_ASSIGN_OR_RETURN(StepMetrics step_metrics, trainer->Step());
    // Reports count iterations, as Megatron's: a skipped step is one too, though the optimizer's
    // update count (the trainer's step, which the learning rate follows) stays.
    step_metrics.step = step;
    MIMO_RETURN_IF_ERROR(background.Check());
    seconds += step_metrics.seconds;
    if (logs) interval_steps.Add(step_metrics);
    end.iteration = step;
    // The newest request any rank has heard of, as 2 * sequence + stop: a stop request is its
    // attempt's last, so the max names it whenever a rank knows of it.
    bool requested = false, stop = false;
    if (!checkpointing.dir().empty()) {
      const v1::CheckpointRequest heard =
          hooks.checkpoint_request ? hooks.checkpoint_request() : v1::CheckpointRequest();
      int64_t newest[1] = {2 * heard.sequence() + (heard.stop() ? 1 : 0)};
      if (world_group != nullptr) {
        MIMO_RETURN_IF_ERROR(
            ReduceOverGroup(ops, *world_group, absl::MakeSpan(newest), comm::ReduceOp::kMax));
      }
      requested = newest[0] / 2 > requests_done;
      stop = requested && newest[0] % 2 == 1;
      if (requested) {
        requests_done = newest[0] / 2;
        if (rank.rank() == 0) {
          hooks.log(absl::StrCat("saving a checkpoint after iteration ", step, " as requested",
                                 stop ? ", then stopping" : ""));
        }
      }
    }
    if (!checkpointing.dir().empty() &&
        ((save_interval > 0 && step % save_interval == 0) || step == t.steps() || requested)) {
      const absl::Time save_start = absl::Now();
      const std::string dir = checkpoint::CheckpointDir(checkpointing.dir(), step);
      end.checkpoint = dir;
      if (checkpointing.async_save()) {
        // Training waits only for the previous save and the copy to host memory.
        MIMO_RETURN_IF_ERROR(background.Wait());
        MIMO_ASSIGN_OR_RETURN(std::shared_ptr<const HostRankState> state,
                              trainer->CaptureState(rank.rank()));
        if (rank.rank() == 0) {
          hooks.log(absl::StrCat("copied iteration ", step, "'s state to host memory in ",
                                 ms(absl::Now() - save_start), "; saving it in the background"));
        }
        background.Start([&assignment, &hooks, &ms, state, step, dir, save_start,
                          logs_saves = rank.rank() == 0]() {
          const absl::Status saved = SaveJobCheckpoint(
              assignment, step, state->position,
              [&state](const std::string& staging) { return WriteRankState(*state, staging); },
              hooks.store, hooks.store_timeout);
          if (saved.ok() && logs_saves) {
            hooks.log(absl::StrCat("saved checkpoint ", dir, " (in the background) in ",
                                   ms(absl::Now() - save_start)));
          }
          return saved;
        });
      } else {
        MIMO_RETURN_IF_ERROR(SaveJobCheckpoint(
            assignment, step, trainer->position(),
            [&](const std::string& staging) { return trainer->SaveState(staging, rank.rank()); },
            hooks.store, hooks.store_timeout));
        if (rank.rank() == 0) {
          hooks.log(absl::StrCat("saved checkpoint ", dir, " in ", ms(absl::Now() - save_start)));
        }
      }
    }
    if (!logs || (step % interval != 0 && step != t.steps() && !stop)) {
      if (stop) break;
      continue;
    }
    const IntervalMetrics report = interval_steps.Take();
    const StepMetrics& m = report.mean;
    const double tflops = m.seconds > 0 ? m.model_flops / m.seconds / world / 1e12 : 0;
    hooks.log(
        MegatronLogLine(report, t.steps(), trainer->position(), t.global_batch_size(), tflops));
    v1::Metrics metrics;
    metrics.set_step(m.step);
    metrics.set_loss(m.loss);
    auto& values = *metrics.mutable_values();
    values["aux_loss"] = m.aux_loss;
    values["grad_norm"] = m.grad_norm;
    values["lr"] = m.lr;
    values["skipped"] = static_cast<double>(report.skipped);
    values["interval_steps"] = static_cast<double>(report.steps);
    values["tokens"] = static_cast<double>(m.tokens);
    values["step_seconds"] = m.seconds;
    int64_t routed = 0;
    for (int64_t load : m.expert_load) routed += load;
    for (size_t e = 0; e < m.expert_load.size(); ++e) {
      values[absl::StrCat("expert_load_", e)] =
          routed > 0 ? static_cast<double>(m.expert_load[e]) / routed : 0;
    }
    for (const auto& [layer, imbalance] : m.expert_load_imbalance) {
      values[absl::StrCat("expert_load_imbalance_layer_", layer)] = imbalance;
    }
    metrics.set_tokens_per_second(m.seconds > 0 ? m.tokens / m.seconds : 0);
    metrics.set_tflops_per_gpu(tflops);
    if (peak > 0) metrics.set_mfu(tflops / peak);
    metrics.set_peak_memory_bytes(m.peak_memory_bytes);
    *metrics.mutable_time() =
        google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(absl::Now()));
    if (outputs != nullptr) MIMO_RETURN_IF_ERROR(outputs->Add(metrics));
    if (hooks.report) hooks.report(metrics);
    if (stop) break;
  }
  MIMO_RETURN_IF_ERROR(background.Wait());
  hooks.log(absl::StrFormat("training %s: %d steps in %.1f s; memory on this rank: %s",
                            end.iteration < t.steps() ? "stopped" : "done",
                            end.iteration - first_step + 1, seconds,
                            ops.allocator().stats().ToString()));
  return end;
}

}  // namespace mimo::worker
