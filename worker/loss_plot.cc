// WriteLossPlot: rasterize the polyline into an RGB image, then encode it (data/image_encode.h).
#include "worker/loss_plot.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "data/image_encode.h"

namespace mimo::worker {
namespace {

struct Rgb {
  uint8_t r, g, b;
};
constexpr Rgb kAxis = {60, 60, 60}, kGrid = {225, 225, 225}, kCurve = {31, 119, 180};

class Canvas {
 public:
  Canvas(int w, int h) : w_(w), h_(h), pixels_(3 * static_cast<size_t>(w) * h, 255) {}
  void Set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
    uint8_t* p = &pixels_[3 * (static_cast<size_t>(y) * w_ + x)];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }
  // A line two pixels thick (Bresenham).
  void Line(int x0, int y0, int x1, int y1, Rgb c) {
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
    const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    while (true) {
      Set(x0, y0, c);
      Set(x0, y0 + 1, c);
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) {
        err += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        err += dx;
        y0 += sy;
      }
    }
  }
  const std::vector<uint8_t>& pixels() const { return pixels_; }

 private:
  int w_, h_;
  std::vector<uint8_t> pixels_;
};

}  // namespace

absl::Status WriteLossPlot(const std::string& path,
                           const std::vector<std::pair<int64_t, double>>& points,
                           const LossPlotOptions& o) {
  if (o.width < 64 || o.height < 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("LossPlotOptions: ", o.width, "x", o.height, " is below 64x64"));
  }
  std::vector<std::pair<int64_t, double>> finite;
  for (const auto& p : points) {
    if (std::isfinite(p.second)) finite.push_back(p);
  }
  if (finite.empty()) return absl::InvalidArgumentError("WriteLossPlot: no finite loss to plot");
  double top = 0;
  for (const auto& p : finite) top = std::max(top, p.second);
  if (top <= 0) top = 1;
  const int64_t first = finite.front().first, last = std::max(finite.back().first, first + 1);
  // The plot area: a margin of 40 pixels left and below, 16 right and above.
  const int left = 40, right = o.width - 16, bottom = o.height - 40, upper = 16;
  auto x_of = [&](int64_t step) {
    return left + static_cast<int>(std::lround(static_cast<double>(step - first) /
                                               static_cast<double>(last - first) * (right - left)));
  };
  auto y_of = [&](double loss) {
    return bottom - static_cast<int>(std::lround(loss / top * (bottom - upper)));
  };
  Canvas canvas(o.width, o.height);
  for (int q = 1; q <= 4; ++q) {
    const int y = y_of(top * q / 4);
    canvas.Line(left, y, right, y, kGrid);
  }
  canvas.Line(left, bottom, right, bottom, kAxis);
  canvas.Line(left, bottom, left, upper, kAxis);
  for (size_t i = 0; i < finite.size(); ++i) {
    const int x = x_of(finite[i].first), y = y_of(finite[i].second);
    if (i == 0) {
      canvas.Set(x, y, kCurve);
    } else {
      canvas.Line(x_of(finite[i - 1].first), y_of(finite[i - 1].second), x, y, kCurve);
    }
  }

  const absl::StatusOr<std::string> png = data::EncodePng(o.width, o.height, 3, canvas.pixels());
  if (!png.ok()) {
    return absl::Status(png.status().code(), absl::StrCat(path, ": ", png.status().message()));
  }
  FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  const bool written = std::fwrite(png->data(), 1, png->size(), file) == png->size();
  if (std::fclose(file) != 0 || !written) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace mimo::worker
