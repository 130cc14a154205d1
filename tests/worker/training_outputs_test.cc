// Tests of worker/tensorboard_writer.h, worker/loss_plot.h and worker/training_outputs.h: event
// files read back record by record (framing and checksums, a flipped byte detected), the Event
// protos' steps, tags and values; the PNG decoded by libpng with the curve where the losses put
// it; the CSV's header and rows, appended to by a restarted attempt.
#include "worker/training_outputs.h"

#include <gtest/gtest.h>
#include <png.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tensorboard/event.pb.h"
#include "worker/loss_plot.h"
#include "worker/tensorboard_writer.h"

namespace mimo::worker {
namespace {

std::filesystem::path TempDir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("mimo-outputs-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir;
}

TEST(TensorBoardWriterTest, EventsReadBackWithTheirChecksums) {
  const auto dir = TempDir("events");
  auto writer = TensorBoardWriter::Create(dir.string(), "host-a", absl::FromUnixSeconds(1700));
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_EQ((*writer)->path(), (dir / "events.out.tfevents.1700.host-a").string());
  ASSERT_TRUE((*writer)->WriteScalars(5, {{"lm loss", 2.5}, {"grad-norm", 0.75}}).ok());
  ASSERT_TRUE((*writer)->WriteScalars(10, {{"lm loss", 1.25}}).ok());
  auto records = ReadTfRecords((*writer)->path());
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 3u);
  tensorboard::Event e;
  ASSERT_TRUE(e.ParseFromString((*records)[0]));
  EXPECT_EQ(e.file_version(), "brain.Event:2");
  EXPECT_DOUBLE_EQ(e.wall_time(), 1700);
  ASSERT_TRUE(e.ParseFromString((*records)[1]));
  EXPECT_EQ(e.step(), 5);
  ASSERT_EQ(e.summary().value_size(), 2);
  EXPECT_EQ(e.summary().value(0).tag(), "lm loss");
  EXPECT_FLOAT_EQ(e.summary().value(0).simple_value(), 2.5f);
  EXPECT_EQ(e.summary().value(1).tag(), "grad-norm");
  ASSERT_TRUE(e.ParseFromString((*records)[2]));
  EXPECT_EQ(e.step(), 10);
  EXPECT_FLOAT_EQ(e.summary().value(0).simple_value(), 1.25f);

  // A flipped byte in the last record's data fails its checksum.
  const std::string path = (*writer)->path();
  writer->reset();
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  bytes[bytes.size() - 6] ^= 1;
  std::ofstream(path, std::ios::binary) << bytes;
  EXPECT_EQ(ReadTfRecords(path).status().code(), absl::StatusCode::kDataLoss);
  std::filesystem::remove_all(dir);
}

TEST(TensorBoardWriterTest, AFolderThatCannotBeMadeIsAnError) {
  const auto dir = TempDir("blocked");
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "file") << "x";
  auto writer = TensorBoardWriter::Create((dir / "file" / "sub").string(), "h");
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(writer.status().message().find("file/sub"), absl::string_view::npos);
  std::filesystem::remove_all(dir);
}

struct Image {
  int width = 0, height = 0;
  std::vector<std::vector<uint8_t>> rows;  // RGB.
  bool Blue(int x, int y) const { return rows[y][3 * x + 2] == 180 && rows[y][3 * x] == 31; }
};

// Decoded with libpng's simplified API, as RGB.
Image ReadPng(const std::string& path) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&png, path.c_str())) return Image{};
  png.format = PNG_FORMAT_RGB;
  std::vector<uint8_t> pixels(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, pixels.data(), 0, nullptr)) return Image{};
  Image image;
  image.width = static_cast<int>(png.width);
  image.height = static_cast<int>(png.height);
  for (int y = 0; y < image.height; ++y) {
    image.rows.emplace_back(pixels.begin() + 3 * y * image.width,
                            pixels.begin() + 3 * (y + 1) * image.width);
  }
  return image;
}

TEST(LossPlotTest, FallingLossRunsFromUpperLeftToLowerRight) {
  const auto dir = TempDir("plot");
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "loss.png").string();
  std::vector<std::pair<int64_t, double>> points;
  for (int step = 1; step <= 50; ++step) points.emplace_back(step, 5.0 / step);
  points.emplace_back(51, std::nan(""));  // Left out.
  ASSERT_TRUE(WriteLossPlot(path, points, {.width = 200, .height = 100}).ok());
  const Image image = ReadPng(path);
  ASSERT_EQ(image.width, 200);
  ASSERT_EQ(image.height, 100);
  // Plot area x [40, 184], y [16, 60]: step 1 at (40, 16), step 50 near the bottom right.
  EXPECT_TRUE(image.Blue(40, 16));
  bool low_right = false;
  for (int y = 50; y <= 61; ++y) low_right = low_right || image.Blue(184, y);
  EXPECT_TRUE(low_right);
  int blue = 0;
  for (int y = 0; y < 100; ++y) {
    for (int x = 0; x < 200; ++x) blue += image.Blue(x, y) ? 1 : 0;
  }
  EXPECT_GT(blue, 150);  // A connected curve, not just points.
  EXPECT_EQ(WriteLossPlot(path, {{1, std::nan("")}}).code(), absl::StatusCode::kInvalidArgument);
  std::filesystem::remove_all(dir);
}

TEST(TrainingOutputsTest, CsvTensorBoardAndPlotPerStepAndAResumedRunReplacesLaterSteps) {
  const auto dir = TempDir("outputs");
  v1::Metrics m;
  m.set_step(5);
  m.set_loss(3.5);
  m.set_tokens_per_second(1000);
  (*m.mutable_values())["grad_norm"] = 1.5;
  (*m.mutable_values())["lr"] = 0.001;
  {
    auto outputs = TrainingOutputs::Create(dir.string(), "h");
    ASSERT_TRUE(outputs.ok()) << outputs.status();
    ASSERT_TRUE((*outputs)->Add(m).ok());
    m.set_step(10);
    m.set_loss(2.0);
    ASSERT_TRUE((*outputs)->Add(m).ok());
  }
  {
    // A restarted attempt resuming after step 7 (its checkpoint): the earlier attempt's row of
    // step 10 is dropped, the new one's kept, step 15 appended.
    auto again = TrainingOutputs::Create(dir.string(), "h2", /*first_step=*/8);
    ASSERT_TRUE(again.ok()) << again.status();
    m.set_step(10);
    m.set_loss(2.25);
    ASSERT_TRUE((*again)->Add(m).ok());
    m.set_step(15);
    m.set_loss(1.0);
    ASSERT_TRUE((*again)->Add(m).ok());
  }
  std::ifstream csv(dir / "metrics.csv");
  std::vector<std::string> lines;
  for (std::string line; std::getline(csv, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0], TrainingOutputs::kCsvHeader);
  EXPECT_EQ(lines[1], "5,3.5,0,1.5,0.001,1000,0,0,0,0");
  EXPECT_EQ(lines[2].substr(0, 8), "10,2.25,");
  EXPECT_EQ(lines[3].substr(0, 5), "15,1,");
  EXPECT_FALSE(std::filesystem::exists(dir / "metrics.csv.tmp"));
  int event_files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir / "tensorboard")) {
    ++event_files;
    auto records = ReadTfRecords(entry.path().string());
    ASSERT_TRUE(records.ok()) << records.status();
    EXPECT_GE(records->size(), 2u);
  }
  EXPECT_EQ(event_files, 2);
  EXPECT_EQ(ReadPng((dir / "loss.png").string()).width, 640);
  EXPECT_FALSE(std::filesystem::exists(dir / "loss.png.tmp"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mimo::worker
