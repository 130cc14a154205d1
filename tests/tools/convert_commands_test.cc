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
  EXPECT_EQ(RunVerify(root_ + "/a", root_ + "/b", out, err), 0) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("equal: 1 tensors"));
  Write(/*changed=*/5);
  std::ostringstream out2, err2;
  EXPECT_EQ(RunVerify(root_ + "/a", root_ + "/b", out2, err2), 1);
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

}  // namespace
}  // namespace mimo::tools
