// The files a training job leaves in its output folder, written by its logging rank as the job
// runs: metrics.csv (a header, then one row per logged step), tensorboard/events.out.tfevents.*
// (the same values under Megatron-LM's TensorBoard tags: "lm loss", "learning-rate",
// "grad-norm", ...) and loss.png (the loss curve so far, redrawn at every row).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "mimo/v1/job.pb.h"
#include "worker/tensorboard_writer.h"

namespace mimo::worker {

class TrainingOutputs {
 public:
  // Creates `dir` and its tensorboard/ folder; metrics.csv gets its header unless it exists. A
  // run that starts at `first_step` (> 1: resumed from a checkpoint) keeps an existing
  // metrics.csv's rows of the steps before it and drops the later ones (an earlier attempt's
  // steps after its last checkpoint, which this run computes again), so every step has one row;
  // loss.png is redrawn from the rows kept. The OS error, naming the path, on failure.
  static absl::StatusOr<std::unique_ptr<TrainingOutputs>> Create(const std::string& dir,
                                                                 const std::string& host,
                                                                 int64_t first_step = 1);
  // One logged step, to all three files.
  absl::Status Add(const v1::Metrics& metrics);

  static constexpr char kCsvHeader[] =
      "step,loss,aux_loss,grad_norm,lr,tokens_per_second,tflops_per_gpu,mfu,peak_memory_bytes,"
      "step_seconds";

 private:
  TrainingOutputs(std::string dir, std::unique_ptr<TensorBoardWriter> events)
      : dir_(std::move(dir)), events_(std::move(events)) {}

  std::string dir_;
  std::unique_ptr<TensorBoardWriter> events_;
  std::vector<std::pair<int64_t, double>> losses_;
};

}  // namespace mimo::worker
