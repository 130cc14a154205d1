// mimo-convert inspect and verify on hand-made checkpoints: a row-split two-rank checkpoint and
// a one-rank one of the same tensor verify equal, a changed element is named with its size; inspect
// lists the layout, files and tensors and fails on a file whose CRC-32C differs from metadata.json;
// export writes Hugging Face folders and refuses a checkpoint whose files do not match its
// metadata.json.
#include "tools/convert/convert_commands.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
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

  // The sizes and CRC-32C of dir's .safetensors files, as metadata.json lists them.
  static nlohmann::json FilesOf(const std::string& dir) {
    nlohmann::json files = nlohmann::json::object();
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.path().extension() != ".safetensors") continue;
      const auto d = checkpoint::DigestOf(e.path().string());
      EXPECT_TRUE(d.ok()) << d.status();
      files[e.path().filename().string()] = {{"bytes", d->bytes}, {"crc32c", d->crc32c}};
    }
    return files;
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

// Inspect checks a checkpoint as a resume does: a metadata.json that is missing, does not parse,
// lists no files or holds a size that is not a number, a rank file it does not list or one that
// is missing are errors (exit 1), the file named; none is a crash or "ok".
TEST_F(ConvertCommandsTest, InspectFailsOnMetadataThatDoesNotCheck) {
  Write();
  const std::string dir = root_ + "/a", metadata = dir + "/metadata.json";
  std::string original;
  {
    std::ifstream in(metadata);
    original.assign(std::istreambuf_iterator<char>(in), {});
  }
  struct Case {
    std::string what, metadata, want_out, want_err;
  };
  nlohmann::json text_size = nlohmann::json::parse(original);
  text_size["files"]["model_rank_00000.safetensors"]["bytes"] = "80";
  const std::vector<Case> cases = {
      {"a size that is a string", text_size.dump(),
       "model_rank_00000.safetensors  168 bytes  CHECKSUM MISMATCH", "1 file(s)"},
      {"truncated", original.substr(0, original.size() / 2), "(no readable metadata.json)",
       "metadata.json is missing, unreadable or lists no files"},
      {"no files", R"({"iteration": 6})", "iteration 6", "lists no files"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::ofstream(metadata, std::ios::trunc) << c.metadata;
    std::ostringstream out, err;
    EXPECT_EQ(RunInspect(dir, out, err), 1);
    EXPECT_THAT(out.str(), HasSubstr(c.want_out));
    EXPECT_THAT(err.str(), HasSubstr(c.want_err));
  }
  {
    SCOPED_TRACE("no metadata.json");
    fs::remove(metadata);
    std::ostringstream out, err;
    EXPECT_EQ(RunInspect(dir, out, err), 1);
    EXPECT_THAT(err.str(), HasSubstr("metadata.json is missing"));
  }
  std::ofstream(metadata, std::ios::trunc) << original;
  {
    SCOPED_TRACE("a rank file metadata.json does not list");
    fs::copy_file(dir + "/model_rank_00001.safetensors", dir + "/model_rank_00002.safetensors");
    std::ostringstream out, err;
    EXPECT_EQ(RunInspect(dir, out, err), 1);
    EXPECT_THAT(out.str(), HasSubstr("model_rank_00002.safetensors  NOT LISTED IN metadata.json"));
    fs::remove(dir + "/model_rank_00002.safetensors");
  }
  {
    SCOPED_TRACE("a missing rank file");
    fs::remove(dir + "/model_rank_00001.safetensors");
    std::ostringstream out, err;
    EXPECT_EQ(RunInspect(dir, out, err), 1);
    EXPECT_THAT(out.str(), HasSubstr("model_rank_00001.safetensors  ? bytes  CHECKSUM MISMATCH OR "
                                     "UNREADABLE"));
  }
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
      << nlohmann::json(
             {{"iteration", 6},
              {"layout", "vision=tp=1 language=tp=2"},
              {"files", FilesOf(root_ + "/a")},
              {"modules",
               {{{"name", "language"},
                 {"spec", {{"name", "language"}, {"language", {{"vocab_size", 256}}}}}}}}})
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
  EXPECT_EQ(config["spec"]["language"]["vocab_size"], 256);
  EXPECT_EQ(config["iteration"], 6);
  EXPECT_TRUE(fs::exists(root_ + "/out/vision/model-00001-of-00001.safetensors"));
  std::ostringstream out2, err2;
  EXPECT_EQ(RunExport(options, out2, err2), 1);
  EXPECT_THAT(err2.str(), HasSubstr("--overwrite"));
  ExportOptions again = options;
  again.overwrite = true;
  // A module of an earlier export that this checkpoint lacks is removed with --overwrite.
  fs::create_directories(root_ + "/out/audio");
  std::ofstream(root_ + "/out/audio/model.safetensors.index.json") << "{}";
  std::ostringstream out3, err3;
  EXPECT_EQ(RunExport(again, out3, err3), 0) << err3.str();
  EXPECT_FALSE(fs::exists(root_ + "/out/audio"));
  EXPECT_TRUE(fs::exists(root_ + "/out/vision/model-00001-of-00001.safetensors"));
  // Each module was written aside and moved into place: nothing of that is left.
  for (const auto& e : fs::directory_iterator(root_ + "/out")) {
    EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
  }
}

// An export over an earlier one that fails at its second module (here: vision's fused QKV
// without a spec to order it; a full disk alike) leaves the earlier export whole: no module of it
// replaced by the new checkpoint's, which import would mix with the rest.
TEST_F(ConvertCommandsTest, AFailedExportLeavesTheEarlierExportWhole) {
  auto checkpoint = [&](int iteration, bool vision_qkv) {
    fs::remove_all(root_ + "/a");
    fs::create_directories(root_ + "/a");
    const std::vector<float> values = {float(iteration), float(iteration) + 1};
    std::vector<checkpoint::TensorToWrite> tensors = {
        {.name = "language.w", .dtype = "F32", .shape = {2}, .data = values.data()},
        {.name = "vision.w", .dtype = "F32", .shape = {2}, .data = values.data()}};
    if (vision_qkv) {
      tensors.push_back({.name = "vision.decoder.layers.0.self_attention.linear_qkv.weight",
                         .dtype = "F32",
                         .shape = {2, 1},
                         .data = values.data()});
    }
    ASSERT_TRUE(
        checkpoint::WriteSafetensors(root_ + "/a/model_rank_00000.safetensors", tensors).ok());
    std::ofstream(root_ + "/a/metadata.json")
        << nlohmann::json({{"iteration", iteration}, {"files", FilesOf(root_ + "/a")}}).dump();
  };
  checkpoint(6, /*vision_qkv=*/false);
  const ExportOptions options{.from = root_ + "/a", .to = root_ + "/out", .overwrite = true};
  std::ostringstream out, err;
  ASSERT_EQ(RunExport(options, out, err), 0) << err.str();
  auto contents = [&](const std::string& path) {
    std::ifstream in(root_ + "/out/" + path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string language = contents("language/model-00001-of-00001.safetensors");
  const std::string config = contents("language/config.json");
  ASSERT_THAT(config, HasSubstr("\"iteration\": 6"));
  checkpoint(7, /*vision_qkv=*/true);
  std::ostringstream out2, err2;
  EXPECT_EQ(RunExport(options, out2, err2), 1);
  EXPECT_THAT(err2.str(), HasSubstr("no spec of module \"vision\""));
  EXPECT_EQ(contents("language/model-00001-of-00001.safetensors"), language);
  EXPECT_EQ(contents("language/config.json"), config);
  std::vector<std::string> entries;
  for (const auto& e : fs::directory_iterator(root_ + "/out")) {
    entries.push_back(e.path().filename().string());
  }
  std::sort(entries.begin(), entries.end());
  EXPECT_EQ(entries, (std::vector<std::string>{"language", "vision"}));  // Nothing aside left.
}

// What a killed export left in a fresh --to (a module's folder in the making) asks for no
// --overwrite: the export is written, the leftover gone. Any other entry still does.
TEST_F(ConvertCommandsTest, AnExportKilledIntoAFreshFolderCanBeRunAgain) {
  Write();
  fs::create_directories(root_ + "/out/.w.partial");
  std::ofstream(root_ + "/out/.w.partial/model-00001-of-00001.safetensors") << "half";
  std::ostringstream out, err;
  ASSERT_EQ(RunExport({.from = root_ + "/a", .to = root_ + "/out"}, out, err), 0) << err.str();
  EXPECT_TRUE(fs::exists(root_ + "/out/w/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(root_ + "/out/.w.partial"));
  fs::remove_all(root_ + "/out/w");
  std::ofstream(root_ + "/out/.notes") << "mine";
  std::ostringstream out2, err2;
  EXPECT_EQ(RunExport({.from = root_ + "/a", .to = root_ + "/out"}, out2, err2), 1);
  EXPECT_THAT(err2.str(), HasSubstr("without --overwrite"));
}

// An export that fails into a --to it created removes the folders it created: no empty export
// folder is left behind.
TEST_F(ConvertCommandsTest, AFailedExportRemovesTheFoldersItCreated) {
  const std::vector<float> qkv = {0, 1};
  ASSERT_TRUE(checkpoint::WriteSafetensors(
                  root_ + "/a/model_rank_00000.safetensors",
                  {{.name = "vision.decoder.layers.0.self_attention.linear_qkv.weight",
                    .dtype = "F32",
                    .shape = {2, 1},
                    .data = qkv.data()}})
                  .ok());
  std::ofstream(root_ + "/a/metadata.json")
      << nlohmann::json({{"iteration", 6}, {"files", FilesOf(root_ + "/a")}}).dump();
  std::ostringstream out, err;
  EXPECT_EQ(RunExport({.from = root_ + "/a", .to = root_ + "/new/deeper/"}, out, err), 1);
  EXPECT_THAT(err.str(), HasSubstr("no spec of module \"vision\""));
  EXPECT_FALSE(fs::exists(root_ + "/new"));
  // A folder that was there stays.
  fs::create_directories(root_ + "/there");
  std::ostringstream out2, err2;
  EXPECT_EQ(RunExport({.from = root_ + "/a", .to = root_ + "/there/sub"}, out2, err2), 1);
  EXPECT_FALSE(fs::exists(root_ + "/there/sub"));
  EXPECT_TRUE(fs::is_directory(root_ + "/there"));
}

// A checkpoint whose files do not match metadata.json (a changed byte, a file it does not list)
// is not exported: its weights would leave under fresh names. Nothing is written.
TEST_F(ConvertCommandsTest, ExportRefusesADamagedCheckpoint) {
  Write();
  const std::string file = root_ + "/a/model_rank_00001.safetensors";
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  bytes[bytes.size() - 3] ^= 0x40;  // In w's data, the file's last bytes.
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
  std::ostringstream out, err;
  EXPECT_EQ(RunExport({.from = root_ + "/a", .to = root_ + "/out"}, out, err), 1);
  EXPECT_THAT(err.str(), HasSubstr("model_rank_00001.safetensors has"));
  EXPECT_THAT(err.str(), HasSubstr("the checkpoint is damaged"));
  EXPECT_FALSE(fs::exists(root_ + "/out"));
  // Whole again, but with a file metadata.json does not list.
  bytes[bytes.size() - 3] ^= 0x40;
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
  fs::copy_file(file, root_ + "/a/model_rank_00002.safetensors");
  std::ostringstream out2, err2;
  EXPECT_EQ(RunExport({.from = root_ + "/a", .to = root_ + "/out"}, out2, err2), 1);
  EXPECT_THAT(err2.str(), HasSubstr("model_rank_00002.safetensors is not listed"));
  EXPECT_FALSE(fs::exists(root_ + "/out"));
  // A listed file missing: named, not a tensor short of elements.
  fs::remove(root_ + "/a/model_rank_00002.safetensors");
  fs::remove(file);
  std::ostringstream out3, err3;
  EXPECT_EQ(RunExport({.from = root_ + "/a", .to = root_ + "/out"}, out3, err3), 1);
  EXPECT_THAT(err3.str(), HasSubstr("lists model_rank_00001.safetensors, which cannot be read"));
  EXPECT_FALSE(fs::exists(root_ + "/out"));
}

// Rank files of different saves (one rank's from another step, listed anew in metadata.json) are
// not exported: their weights would leave as one checkpoint's.
TEST_F(ConvertCommandsTest, ExportRefusesRankFilesOfDifferentSaves) {
  const std::vector<float> w = {0, 1, 2, 3};
  for (int r = 0; r < 2; ++r) {
    const nlohmann::json shards = {
        {"w", {{{"dim", 0}, {"full_size", 4}, {"ranges", {{2 * r, 2}}}}}}};
    ASSERT_TRUE(checkpoint::WriteSafetensors(
                    root_ + "/a/model_rank_0000" + std::to_string(r) + ".safetensors",
                    {{.name = "w", .dtype = "F32", .shape = {2}, .data = &w[2 * r]}},
                    {{"shards", shards.dump()},
                     {"step", r == 0 ? "4" : "2"},
                     {"position", r == 0 ? "64" : "32"}})
                    .ok());
  }
  std::ofstream(root_ + "/a/metadata.json")
      << nlohmann::json({{"iteration", 4}, {"files", FilesOf(root_ + "/a")}}).dump();
  std::ostringstream inspect_out, inspect_err;  // Inspect names them too.
  EXPECT_EQ(RunInspect(root_ + "/a", inspect_out, inspect_err), 1);
  EXPECT_THAT(inspect_err.str(), HasSubstr("files of different saves"));
  std::ostringstream out, err;
  EXPECT_EQ(RunExport({.from = root_ + "/a", .to = root_ + "/out"}, out, err), 1);
  EXPECT_THAT(err.str(),
              HasSubstr("model_rank_00001.safetensors records step 2 and position 32, " + root_ +
                        "/a/model_rank_00000.safetensors step 4 and position "
                        "64: files of different saves"));
  EXPECT_FALSE(fs::exists(root_ + "/out"));
}

// An empty --to ("--to=", an unset variable) is refused by name.
TEST_F(ConvertCommandsTest, ExportRefusesAnEmptyTo) {
  Write();
  std::ostringstream out, err;
  EXPECT_EQ(RunExport({.from = root_ + "/a", .to = ""}, out, err), 1);
  EXPECT_EQ(err.str(), "error: --to is empty: give it a path\n");
}

// Export writes a fused QKV weight in Megatron's row order (per query group: its query heads,
// key, value) and carries the routers' expert biases from the optimizer files, leaving the
// moments behind.
TEST_F(ConvertCommandsTest, ExportWritesMegatronsQkvOrderAndTheExpertBiases) {
  // 4 heads of width 1 in 2 groups: mimo's rows q0 q1 q2 q3 k0 k1 v0 v1.
  const std::vector<float> qkv = {0, 1, 2, 3, 4, 5, 6, 7}, bias = {0.5f, -0.5f}, moments = {9, 9};
  const std::string qkv_name = "language.decoder.layers.0.self_attention.linear_qkv.weight";
  const std::string bias_name = "language.decoder.layers.0.mlp.router.expert_bias";
  ASSERT_TRUE(checkpoint::WriteSafetensors(
                  root_ + "/a/model_rank_00000.safetensors",
                  {{.name = qkv_name, .dtype = "F32", .shape = {8, 1}, .data = qkv.data()}})
                  .ok());
  ASSERT_TRUE(
      checkpoint::WriteSafetensors(
          root_ + "/a/optim_rank_00000.safetensors",
          {{.name = bias_name, .dtype = "F32", .shape = {2}, .data = bias.data()},
           {.name = qkv_name + ".exp_avg", .dtype = "F32", .shape = {2}, .data = moments.data()}})
          .ok());
  // The module named by the user ("lm"); its tensors are named after its kind ("language").
  const nlohmann::json spec = {
      {"name", "lm"},
      {"language",
       {{"transformer",
         {{"hidden_size", 4}, {"num_attention_heads", 4}, {"num_query_groups", 2}}}}}};
  std::ofstream(root_ + "/a/metadata.json")
      << nlohmann::json({{"iteration", 6},
                         {"layout", "language=tp=1"},
                         {"files", FilesOf(root_ + "/a")},
                         {"modules", {{{"name", "lm"}, {"spec", spec}}}}})
             .dump();
  std::ostringstream out, err;
  ASSERT_EQ(RunExport({.from = root_ + "/a", .to = root_ + "/out"}, out, err), 0) << err.str();
  auto file =
      checkpoint::SafetensorsReader::Open(root_ + "/out/language/model-00001-of-00001.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> got(8);
  ASSERT_TRUE(file->Read(qkv_name, {reinterpret_cast<char*>(got.data()), 32}).ok());
  EXPECT_EQ(got, (std::vector<float>{0, 1, 4, 6, 2, 3, 5, 7}));  // q0 q1 k0 v0 q2 q3 k1 v1
  std::vector<float> got_bias(2);
  ASSERT_TRUE(file->Read(bias_name, {reinterpret_cast<char*>(got_bias.data()), 8}).ok());
  EXPECT_EQ(got_bias, bias);
  EXPECT_THAT(out.str(), HasSubstr("language: 2 tensors"));  // Not the moments.
}

}  // namespace
}  // namespace mimo::tools
