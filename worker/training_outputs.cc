// TrainingOutputs: a CSV row, a TensorBoard event and a redrawn loss curve per logged step.
#include "worker/training_outputs.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "worker/loss_plot.h"

namespace mimo::worker {
namespace {

double Value(const v1::Metrics& m, const std::string& name) {
  auto it = m.values().find(name);
  return it == m.values().end() ? 0.0 : it->second;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TrainingOutputs>> TrainingOutputs::Create(const std::string& dir,
                                                                         const std::string& host,
                                                                         int64_t first_step) {
  MIMO_ASSIGN_OR_RETURN(
      auto events,
      TensorBoardWriter::Create((std::filesystem::path(dir) / "tensorboard").string(), host));
  const std::filesystem::path csv = std::filesystem::path(dir) / "metrics.csv";
  // The rows kept: those of the steps before first_step (none when the run starts afresh).
  std::string kept = std::string(kCsvHeader) + "\n";
  std::vector<std::pair<int64_t, double>> losses;
  if (std::ifstream in(csv); in) {
    std::string line;
    std::getline(in, line);  // The header.
    while (std::getline(in, line)) {
      const std::vector<std::string> fields = absl::StrSplit(line, ',');
      int64_t step = 0;
      double loss = 0;
      if (fields.size() < 2 || !absl::SimpleAtoi(fields[0], &step) ||
          !absl::SimpleAtod(fields[1], &loss) || step >= first_step) {
        continue;
      }
      absl::StrAppend(&kept, line, "\n");
      losses.emplace_back(step, loss);
    }
  }
  // Written beside and renamed over: a crash leaves the old file or the new one.
  const std::string tmp = csv.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << kept;
    if (!out.flush()) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
    }
  }
  std::error_code error;
  std::filesystem::rename(tmp, csv, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write ", csv.string(), ": ", error.message()));
  }
  std::unique_ptr<TrainingOutputs> out(new TrainingOutputs(dir, std::move(events)));
  out->losses_ = std::move(losses);
  return out;
}

absl::Status TrainingOutputs::Add(const v1::Metrics& m) {
  const std::filesystem::path dir(dir_);
  {
    std::ofstream out(dir / "metrics.csv", std::ios::app);
    out << absl::StrFormat("%d,%.9g,%.9g,%.9g,%.9g,%.6g,%.6g,%.6g,%d,%.6g\n", m.step(), m.loss(),
                           Value(m, "aux_loss"), Value(m, "grad_norm"), Value(m, "lr"),
                           m.tokens_per_second(), m.tflops_per_gpu(), m.mfu(),
                           m.peak_memory_bytes(), Value(m, "step_seconds"));
    if (!out.flush()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot write ", (dir / "metrics.csv").string(), ": ", std::strerror(errno)));
    }
  }
  MIMO_RETURN_IF_ERROR(events_->WriteScalars(
      m.step(), {{"lm loss", m.loss()},
                 {"aux loss", Value(m, "aux_loss")},
                 {"grad-norm", Value(m, "grad_norm")},
                 {"learning-rate", Value(m, "lr")},
                 {"tokens-per-second", m.tokens_per_second()},
                 {"throughput", m.tflops_per_gpu()},
                 {"mfu", m.mfu()},
                 {"mem-max-allocated-bytes", static_cast<double>(m.peak_memory_bytes())},
                 {"iteration-time", Value(m, "step_seconds")}}));
  losses_.emplace_back(m.step(), m.loss());
  // Drawn beside and renamed over, so a reader never sees half a picture.
  const std::string png = (dir / "loss.png").string();
  MIMO_RETURN_IF_ERROR(WriteLossPlot(png + ".tmp", losses_));
  std::error_code error;
  std::filesystem::rename(png + ".tmp", png, error);
  if (error) {
    return absl::FailedPreconditionError(absl::StrCat("cannot write ", png, ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace mimo::worker
