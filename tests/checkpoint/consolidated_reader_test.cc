// ConsolidatedReader: parameters assembled from hand-made rank files (rows split over two ranks,
// fused rows in unequal ranges, columns split, a replicated bias and scalar, a 3-D expert
// stack), equal to the full tensors they were cut from; a missing rank, overlapping slices and
// disagreeing shapes are named.
#include "checkpoint/consolidated_reader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace mimo::checkpoint {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class ConsolidatedReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/consolidated-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The elements of `full` (rows x cols, row-major) in the given row and column ranges.
  static std::vector<float> Cut(const std::vector<float>& full, int64_t cols,
                                const std::vector<std::pair<int64_t, int64_t>>& rows,
                                const std::vector<std::pair<int64_t, int64_t>>& columns) {
    std::vector<float> out;
    for (const auto& [r0, nr] : rows) {
      for (int64_t r = r0; r < r0 + nr; ++r) {
        for (const auto& [c0, nc] : columns) {
          for (int64_t c = c0; c < c0 + nc; ++c) out.push_back(full[r * cols + c]);
        }
      }
    }
    return out;
  }

  struct Part {
    std::string name;
    std::vector<int64_t> shape;  // Local.
    std::vector<float> values;
    nlohmann::json shards;  // Null: whole.
  };
  void WriteRank(int rank, const std::vector<Part>& parts) {
    std::vector<TensorToWrite> tensors;
    nlohmann::json shards = nlohmann::json::object();
    for (const Part& p : parts) {
      tensors.push_back(
          {.name = p.name, .dtype = "F32", .shape = p.shape, .data = p.values.data()});
      if (!p.shards.is_null()) shards[p.name] = p.shards;
    }
    char name[64];
    std::snprintf(name, sizeof(name), "/model_rank_%05d.safetensors", rank);
    ASSERT_TRUE(WriteSafetensors(dir_ + name, tensors, {{"shards", shards.dump()}}).ok());
  }
  std::vector<float> ReadWhole(const ConsolidatedReader& r, const std::string& name) {
    const WholeTensor& t = r.tensors().at(name);
    std::vector<float> out(t.bytes() / 4, -1.0f);
    EXPECT_TRUE(r.Read(name, {reinterpret_cast<char*>(out.data()), t.bytes()}).ok());
    return out;
  }

  std::string dir_;
};

TEST_F(ConsolidatedReaderTest, AssemblesEveryKindOfSlice) {
  std::vector<float> w(6 * 5), qkv(8 * 3), cols(2 * 6), experts(4 * 2 * 3), bias = {7, 8, 9};
  for (auto* v : {&w, &qkv, &cols, &experts}) std::iota(v->begin(), v->end(), 0.5f);
  const float scalar = 42;
  auto shard = [](int dim, int64_t full, std::vector<std::pair<int64_t, int64_t>> ranges) {
    nlohmann::json r = nlohmann::json::array();
    for (const auto& [s, n] : ranges) r.push_back({s, n});
    return nlohmann::json::array({{{"dim", dim}, {"full_size", full}, {"ranges", r}}});
  };
  // Rank r: rows [3r, 3r + 3) of w; the fused rows [Q; K; V] of sizes 4, 2, 2 split in halves
  // (rows 2r..2r+1 of Q, then r of K, then r of V); columns [3r, 3r + 3); experts [2r, 2r + 2) of
  // a (4, 2, 3) stack; the bias and scalar whole on both.
  for (int r = 0; r < 2; ++r) {
    const std::vector<std::pair<int64_t, int64_t>> fused = {{2 * r, 2}, {4 + r, 1}, {6 + r, 1}};
    WriteRank(
        r,
        {{"w", {3, 5}, Cut(w, 5, {{3 * r, 3}}, {{0, 5}}), shard(0, 6, {{3 * r, 3}})},
         {"qkv", {4, 3}, Cut(qkv, 3, fused, {{0, 3}}), shard(0, 8, fused)},
         {"cols", {2, 3}, Cut(cols, 6, {{0, 2}}, {{3 * r, 3}}), shard(1, 6, {{3 * r, 3}})},
         {"experts", {2, 2, 3}, Cut(experts, 6, {{2 * r, 2}}, {{0, 6}}), shard(0, 4, {{2 * r, 2}})},
         {"bias", {3}, bias, nullptr},
         {"scalar", {}, {scalar}, nullptr}});
  }
  auto reader = ConsolidatedReader::Open(dir_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->tensors().at("qkv").shape, (std::vector<int64_t>{8, 3}));
  EXPECT_EQ(reader->tensors().at("bias").slices.size(), 1u);  // One copy of the replicas.
  EXPECT_EQ(ReadWhole(*reader, "w"), w);
  EXPECT_EQ(ReadWhole(*reader, "qkv"), qkv);
  EXPECT_EQ(ReadWhole(*reader, "cols"), cols);
  EXPECT_EQ(ReadWhole(*reader, "experts"), experts);
  EXPECT_EQ(ReadWhole(*reader, "bias"), bias);
  EXPECT_EQ(ReadWhole(*reader, "scalar"), std::vector<float>{scalar});
}

TEST_F(ConsolidatedReaderTest, NamesMissingOverlappingAndDisagreeingSlices) {
  const std::vector<float> half(6, 1.0f);
  auto rows = [](int64_t start) {
    return nlohmann::json::array(
        {{{"dim", 0}, {"full_size", 4}, {"ranges", nlohmann::json::array({{start, 2}})}}});
  };
  WriteRank(0, {{"w", {2, 3}, half, rows(0)}});
  auto missing = ConsolidatedReader::Open(dir_);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(missing.status().message(), HasSubstr("hold 6 of its 12 elements"));
  WriteRank(1, {{"w", {2, 3}, half, rows(1)}});  // Rows 1-2: overlaps rank 0's 0-1.
  auto overlap = ConsolidatedReader::Open(dir_);
  EXPECT_EQ(overlap.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(overlap.status().message(), HasSubstr("overlapping"));
  WriteRank(1, {{"w", {2, 4}, std::vector<float>(8, 1.0f), nullptr}});
  auto shape = ConsolidatedReader::Open(dir_);
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(shape.status().message(), HasSubstr("another dtype or full shape"));
  fs::remove_all(dir_);
  fs::create_directories(dir_);
  EXPECT_EQ(ConsolidatedReader::Open(dir_).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace mimo::checkpoint
