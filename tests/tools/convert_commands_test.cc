// mimo-convert inspect and verify on hand-made checkpoints: a row-split two-rank checkpoint and
// a one-rank one of the same tensor verify equal, a changed element is named with its size; inspect
// lists the layout, files and tensors and fails on a file whose CRC-32C differs from metadata.json.
#include "tools/convert/convert_commands.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"
#include "nlohmann/json.hpp"

namespace mimo::tools {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class ConvertCommandsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "/convert-" + std::to_string(::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_ + "/a");
    fs::create_directories(root_ + "/b");
  }
  void TearDown() override { fs::remove_all(root_); }

  // w (4, 2): rows split over two ranks in a/, whole on one rank in b/ (element `changed` + 1).
  void Write(int changed = -1) {
    std::vector<float> w = {0, 1, 2, 3, 4, 5, 6, 7};
    nlohmann::json files = nlohmann::json::object();
    for (int r = 0; r < 2; ++r) {
      const nlohmann::json shards = {
          {"w", {{{"dim", 0}, {"full_size", 4}, {"ranges", {{2 * r, 2}}}}}}};
      const std::string file = "model_rank_0000" + std::to_string(r) + ".safetensors";
      auto d = checkpoint::WriteSafetensors(
          root_ + "/a/" + file, {{.name = "w", .dtype = "F32", .shape = {2, 2}, .data = &w[4 * r]}},
          {{"shards", shards.dump()}});
      ASSERT_TRUE(d.ok());
      files[file] = {{"bytes", d->bytes}, {"crc32c", d->crc32c}};
    }
    std::ofstream(root_ + "/a/metadata.json")
        << nlohmann::json(
               {{"iteration", 6}, {"world_size", 2}, {"layout", "language=tp=2"}, {"files", files}})
               .dump();
    if (changed >= 0) w[changed] += 1;
    ASSERT_TRUE(checkpoint::WriteSafetensors(
                    root_ + "/b/model_rank_00000.safetensors",
                    {{.name = "w", .dtype = "F32", .shape = {4, 2}, .data = w.data()}})
                    .ok());
  }

  std::string root_;
};

TEST_F(ConvertCommandsTest, VerifyComparesWholeTensorsOfAnyLayouts) {
  Write();
  std::ostringstream out, err;
  EXPECT_EQ(RunVerify(root_ + "/a", root_ + "/b", false, out, err), 0) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("equal: 1 tensors"));
  Write(/*changed=*/5);
  std::ostringstream out2, err2;
  EXPECT_EQ(RunVerify(root_ + "/a", root_ + "/b", false, out2, err2), 1);
  EXPECT_THAT(err2.str(), HasSubstr("differ: tensor w: largest absolute difference 1"));
}

TEST_F(ConvertCommandsTest, InspectListsAndChecksTheFiles) {
  Write();
  std::ostringstream out, err;
  EXPECT_EQ(RunInspect(root_ + "/a", out, err), 0) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("iteration 6, 2 ranks"));
  EXPECT_THAT(out.str(), HasSubstr("model_rank_00001.safetensors"));
  EXPECT_THAT(out.str(), HasSubstr("crc32c ok"));
  EXPECT_THAT(out.str(), HasSubstr("w  F32 [4, 2]  2 slices"));
  {  // One byte of rank 1's data changed: same size, another CRC-32C.
    std::fstream f(root_ + "/a/model_rank_00001.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.put('\x7f');
  }
  std::ostringstream out2, err2;
  EXPECT_EQ(RunInspect(root_ + "/a", out2, err2), 1);
  EXPECT_THAT(out2.str(), HasSubstr("CHECKSUM MISMATCH"));
  EXPECT_THAT(err2.str(), HasSubstr("1 file(s)"));
  std::ostringstream out3, err3;
  EXPECT_EQ(RunInspect(root_ + "/missing", out3, err3), 1);
}

// Export: a module per subfolder, files of at most --max-shard-bytes with the index's weight map
// and total size, the tensors whole; a second export is refused without --overwrite.
TEST_F(ConvertCommandsTest, ExportWritesEachModuleAsHuggingFaceFiles) {
  // a/: vision.w (2, 2) whole, language.a (4, 2) split over two ranks, language.b (3,) whole.
  const std::vector<float> a = {0, 1, 2, 3, 4, 5, 6, 7}, b = {8, 9, 10}, v = {11, 12, 13, 14};
  for (int r = 0; r < 2; ++r) {
    const nlohmann::json shards = {
        {"language.a", {{{"dim", 0}, {"full_size", 4}, {"ranges", {{2 * r, 2}}}}}}};
    ASSERT_TRUE(checkpoint::WriteSafetensors(
                    root_ + "/a/model_rank_0000" + std::to_string(r) + ".safetensors",
                    {{.name = "language.a", .dtype = "F32", .shape = {2, 2}, .data = &a[4 * r]},
                     {.name = "language.b", .dtype = "F32", .shape = {3}, .data = b.data()},
                     {.name = "vision.w", .dtype = "F32", .shape = {2, 2}, .data = v.data()}},
                    {{"shards", shards.dump()}})
                    .ok());
  }
  std::ofstream(root_ + "/a/metadata.json")
      << nlohmann::json({{"iteration", 6},
                         {"layout", "vision=tp=1 language=tp=2"},
                         {"modules", {{{"name", "language"}, {"spec", {{"vocab_size", 256}}}}}}})
             .dump();
  const ExportOptions options{.from = root_ + "/a", .to = root_ + "/out", .max_shard_bytes = 32};
  std::ostringstream out, err;
  ASSERT_EQ(RunExport(options, out, err), 0) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("language: 2 tensors, 44 bytes in 2 files"));
  const std::string lang = root_ + "/out/language";
  std::ifstream index_file(lang + "/model.safetensors.index.json");
  const nlohmann::json index = nlohmann::json::parse(index_file);
  EXPECT_EQ(index["metadata"]["total_size"], 44);
  EXPECT_EQ(index["weight_map"]["language.a"], "model-00001-of-00002.safetensors");
  EXPECT_EQ(index["weight_map"]["language.b"], "model-00002-of-00002.safetensors");
  auto first = checkpoint::SafetensorsReader::Open(lang + "/model-00001-of-00002.safetensors");
  ASSERT_TRUE(first.ok()) << first.status();
  std::vector<float> whole(8);
  ASSERT_TRUE(first->Read("language.a", {reinterpret_cast<char*>(whole.data()), 32}).ok());
  EXPECT_EQ(whole, a);
  std::ifstream config_file(lang + "/config.json");
  const nlohmann::json config = nlohmann::json::parse(config_file);
  EXPECT_EQ(config["spec"]["vocab_size"], 256);
  EXPECT_EQ(config["iteration"], 6);
  EXPECT_TRUE(fs::exists(root_ + "/out/vision/model-00001-of-00001.safetensors"));
  std::ostringstream out2, err2;
  EXPECT_EQ(RunExport(options, out2, err2), 1);
  EXPECT_THAT(err2.str(), HasSubstr("--overwrite"));
  ExportOptions again = options;
  again.overwrite = true;
  std::ostringstream out3, err3;
  EXPECT_EQ(RunExport(again, out3, err3), 0) << err3.str();
}

}  // namespace
}  // namespace mimo::tools
