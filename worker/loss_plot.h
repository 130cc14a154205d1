// The loss curve of a job as a PNG (data/image_encode.h): loss against step on a white canvas,
// with axes and four horizontal grid lines at quarters of the loss range (the numbers are in
// metrics.csv).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace mimo::worker {

struct LossPlotOptions {
  int width = 640;   // Pixels; >= 64.
  int height = 360;  // Pixels; >= 64.
};

// Writes `points` (step, loss), in step order, to `path` (replaced): the x axis spans the first to
// the last step, the y axis 0 to the largest finite loss; non-finite losses are left out.
// InvalidArgument without a finite point; the OS or encoder error, naming the path.
absl::Status WriteLossPlot(const std::string& path,
                           const std::vector<std::pair<int64_t, double>>& points,
                           const LossPlotOptions& options = {});

}  // namespace mimo::worker
