// ConsolidatedReader: parameters assembled from hand-made rank files (rows split over two ranks,
// fused rows in unequal ranges, columns split, a replicated bias and scalar, a 3-D expert
// stack), equal to the full tensors they were cut from; regions of them (another layout's
// slices) read from only the files that hold them; the distributed optimizer's runs of a slice
// over dp ranks placed by "pieces"; a missing rank, overlapping slices and disagreeing shapes
// are named.
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

TEST_F(ConsolidatedReaderTest, ReadsRegionsOfAnotherLayout) {
  // w (6, 5) split by rows over two ranks; a region of rows {1, 4, 5} and columns {0, 3, 4}, and
  // one of rank 0's rows alone.
  std::vector<float> w(6 * 5);
  std::iota(w.begin(), w.end(), 0.5f);
  for (int r = 0; r < 2; ++r) {
    WriteRank(
        r,
        {{"w",
          {3, 5},
          Cut(w, 5, {{3 * r, 3}}, {{0, 5}}),
          nlohmann::json::array(
              {{{"dim", 0}, {"full_size", 6}, {"ranges", nlohmann::json::array({{3 * r, 3}})}}})}});
  }
  auto reader = ConsolidatedReader::Open(dir_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const Region region = {{{1, 1}, {4, 2}}, {{0, 1}, {3, 2}}};
  std::vector<float> got(9, -1.0f);
  ASSERT_TRUE(reader->ReadRegion("w", region, {reinterpret_cast<char*>(got.data()), 36}).ok());
  EXPECT_EQ(got, Cut(w, 5, {{1, 1}, {4, 2}}, {{0, 1}, {3, 2}}));
  EXPECT_EQ(reader->FilesOf("w", region), (std::vector<int>{0, 1}));
  EXPECT_EQ(reader->FilesOf("w", {{{0, 2}}, {{0, 5}}}), std::vector<int>{0});
  // Outside the tensor, or a buffer of another size: refused.
  EXPECT_EQ(reader->ReadRegion("w", {{{5, 2}}, {{0, 5}}}, {reinterpret_cast<char*>(got.data()), 36})
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(reader->ReadRegion("w", region, {reinterpret_cast<char*>(got.data()), 32}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ConsolidatedReaderTest, PlacesTheDistributedOptimizersRuns) {
  // "w.exp_avg" of a (4, 5) parameter split by rows over tp 2; each tp slice (2, 5) held by two
  // dp ranks as runs of 7 and 3 of its 10 elements (a run crossing a row); "bias.exp_avg" whole,
  // in runs of 2 and 1.
  std::vector<float> m(4 * 5), bias = {1, 2, 3};
  std::iota(m.begin(), m.end(), 0.25f);
  int rank = 0;
  for (int tp = 0; tp < 2; ++tp) {
    const std::vector<float> slice = Cut(m, 5, {{2 * tp, 2}}, {{0, 5}});
    for (int dp = 0; dp < 2; ++dp, ++rank) {
      const int64_t begin = dp == 0 ? 0 : 7, end = dp == 0 ? 7 : 10;
      const std::vector<float> run(slice.begin() + begin, slice.begin() + end);
      const int64_t bias_begin = dp == 0 ? 0 : 2, bias_end = dp == 0 ? 2 : 3;
      const std::vector<float> bias_run(bias.begin() + bias_begin, bias.begin() + bias_end);
      const nlohmann::json shards = {
          {"w", nlohmann::json::array({{{"dim", 0},
                                        {"full_size", 4},
                                        {"ranges", nlohmann::json::array({{2 * tp, 2}})}}})}};
      const nlohmann::json pieces = {{"w", {{"offset", begin}, {"shape", {2, 5}}}},
                                     {"bias", {{"offset", bias_begin}, {"shape", {3}}}}};
      char name[64];
      std::snprintf(name, sizeof(name), "/optim_rank_%05d.safetensors", rank);
      ASSERT_TRUE(
          WriteSafetensors(
              dir_ + name,
              {{.name = "w.exp_avg", .dtype = "F32", .shape = {end - begin}, .data = run.data()},
               {.name = "bias.exp_avg",
                .dtype = "F32",
                .shape = {bias_end - bias_begin},
                .data = bias_run.data()}},
              {{"shards", shards.dump()}, {"pieces", pieces.dump()}})
              .ok());
      // The model files hold the weights (whole here; the test reads the optimizer's).
      WriteRank(rank, {{"bias", {3}, bias, nullptr}});
    }
  }
  auto reader = ConsolidatedReader::Open(dir_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const WholeTensor& t = reader->tensors().at("w.exp_avg");
  EXPECT_TRUE(t.optimizer);
  EXPECT_EQ(t.shape, (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(ReadWhole(*reader, "w.exp_avg"), m);
  EXPECT_EQ(ReadWhole(*reader, "bias.exp_avg"), bias);
  // Rows 1-2 (across the tp slices and the runs), columns 2-4.
  const Region region = {{{1, 2}}, {{2, 3}}};
  std::vector<float> got(6, -1.0f);
  ASSERT_TRUE(
      reader->ReadRegion("w.exp_avg", region, {reinterpret_cast<char*>(got.data()), 24}).ok());
  EXPECT_EQ(got, Cut(m, 5, {{1, 2}}, {{2, 3}}));
  // Only the runs that hold part of it are read: rank 1's (row 1, columns 2-4) and rank 2's (row
  // 2); rank 0's run ends at row 1 column 1, rank 3's is row 3. (Files: model 0-3, optim 4-7.)
  EXPECT_EQ(reader->FilesOf("w.exp_avg", region), (std::vector<int>{5, 6}));
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
  // Ranges of one dimension overlapping within a slice, and a start that would overflow.
  auto one = [](nlohmann::json ranges) {
    return nlohmann::json::array({{{"dim", 0}, {"full_size", 5}, {"ranges", ranges}}});
  };
  WriteRank(0, {{"w", {4}, std::vector<float>(4, 1.0f), one({{0, 2}, {1, 2}})}});
  WriteRank(1, {{"w", {1}, {1.0f}, one({{4, 1}})}});
  EXPECT_THAT(ConsolidatedReader::Open(dir_).status().message(), HasSubstr("overlap"));
  WriteRank(0, {{"w", {4}, std::vector<float>(4, 1.0f), one({{int64_t{9223372036854775806}, 4}})}});
  EXPECT_THAT(ConsolidatedReader::Open(dir_).status().message(),
              HasSubstr("outside the full dimension"));
  // A partial open (rank 1's file alone) reads what it holds and names what it does not.
  WriteRank(0, {{"w", {4}, std::vector<float>(4, 1.0f), one({{0, 4}})}});
  auto partial = ConsolidatedReader::OpenFiles({dir_ + "/model_rank_00001.safetensors"}, true);
  ASSERT_TRUE(partial.ok()) << partial.status();
  float x = 0;
  EXPECT_TRUE(partial->ReadRegion("w", {{{4, 1}}}, {reinterpret_cast<char*>(&x), 4}).ok());
  EXPECT_EQ(x, 1.0f);
  std::vector<float> two(2);
  const absl::Status lacking =
      partial->ReadRegion("w", {{{3, 2}}}, {reinterpret_cast<char*>(two.data()), 8});
  EXPECT_EQ(lacking.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(lacking.message(), HasSubstr("hold 1 of the region's 2 elements"));
  // A region overlapping itself is refused.
  std::vector<float> three(3);
  auto whole = ConsolidatedReader::Open(dir_);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->ReadRegion("w", {{{0, 2}, {1, 1}}}, {reinterpret_cast<char*>(three.data()), 12})
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mimo::checkpoint
