// mimo-convert reshard (and import, export) on a one-rank language model's checkpoint, imported
// from weights the model's own description sizes: a --to that is the source folder, inside it, a
// link to it, or the root whose checkpoint it is (with --overwrite) is refused before anything is
// written; a write that fails (a file size limit) leaves no staging folder nor the folders it
// created; a replaced checkpoint (or an earlier export) that cannot be removed is reported.
#include "tools/convert/reshard.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"
#include "coordinator/spec_validation.h"
#include "kernels/dtype.h"
#include "nlohmann/json.hpp"
#include "tools/convert/convert_commands.h"
#include "tools/mimoctl/spec_file.h"
#include "worker/rank_modules.h"
#include "worker/rank_state_format.h"

namespace mimo::tools {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kSpec[] = R"(name: reshard-test
kind: KIND_TRAIN
modules:
  - name: language
    language:
      vocab_size: 256
      max_sequence_length: 64
      transformer: {num_layers: 1, hidden_size: 16, num_attention_heads: 2, ffn_hidden_size: 32}
    parallelism: {dp: 1}
training:
  steps: 1
  global_batch_size: 2
  micro_batch_size: 2
  seq_length: 32
  packing: true
  precision: PRECISION_FP32
  optimizer: {lr: 1.0e-3, adam_beta1: 0.9, adam_beta2: 0.95, adam_eps: 1.0e-8}
data:
  synthetic: {num_samples: 100}
resources: {workers: 1, device: DEVICE_KIND_CPU}
)";

// Every path under `dir` with its size: what a refused command must leave as it was.
std::string Tree(const std::string& dir) {
  std::ostringstream out;
  std::vector<std::string> lines;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    lines.push_back(e.path().string() +
                    (e.is_regular_file() ? " " + std::to_string(e.file_size()) : "/"));
  }
  std::sort(lines.begin(), lines.end());
  for (const std::string& line : lines) out << line << "\n";
  return out.str();
}

// Sets or clears a file's immutable flag (root only: chattr +i).
bool SetImmutable(const std::string& path, bool on) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  int flags = 0;
  bool ok = ::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0;
  if (ok) {
    flags = on ? (flags | FS_IMMUTABLE_FL) : (flags & ~FS_IMMUTABLE_FL);
    ok = ::ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0;
  }
  ::close(fd);
  return ok;
}

// While alive: files of this process stop at `bytes` (writes past it fail with EFBIG, SIGXFSZ
// ignored), as a full disk stops them.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    ::getrlimit(RLIMIT_FSIZE, &old_);
    rlimit limit = old_;
    limit.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &limit);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    std::signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit old_{};
  void (*old_handler_)(int) = nullptr;
};

class ReshardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "/reshard-" + std::to_string(::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_ + "/export/language");
    spec_ = root_ + "/job.yaml";
    std::ofstream(spec_) << kSpec;
    // An export of the model's weights (every parameter whole, values 0.001 * i), imported as
    // the source checkpoint src/iter_0000000.
    auto spec = ReadJobSpecFile(spec_);
    ASSERT_TRUE(spec.ok()) << spec.status();
    auto plan = coordinator::ValidateJobSpec(*spec, nullptr);
    ASSERT_TRUE(plan.ok()) << plan.status();
    auto rank = worker::DescribeRank(*spec, *plan, 0, kernels::DType::kF32);
    ASSERT_TRUE(rank.ok()) << rank.status();
    std::vector<std::vector<float>> values;
    std::vector<checkpoint::TensorToWrite> tensors;
    for (const ParameterSpec& p : rank->parameters) {
      std::vector<int64_t> full;
      worker::RegionOf(p, &full);
      int64_t n = 1;
      for (int64_t d : full) n *= d;
      values.emplace_back(n);
      for (int64_t i = 0; i < n; ++i) values.back()[i] = 0.001f * static_cast<float>(i % 1000);
      tensors.push_back({.name = p.name, .dtype = "F32", .shape = full});
    }
    for (size_t i = 0; i < tensors.size(); ++i) tensors[i].data = values[i].data();
    ASSERT_TRUE(checkpoint::WriteSafetensors(root_ + "/export/language/model.safetensors", tensors,
                                             {{"format", "pt"}})
                    .ok());
    std::ostringstream out, err;
    ASSERT_EQ(RunImport({.from = root_ + "/export", .to = root_ + "/src", .spec = spec_}, out, err),
              0)
        << err.str();
    source_ = root_ + "/src/iter_0000000";
    ASSERT_TRUE(fs::exists(source_ + "/metadata.json"));
  }

  void TearDown() override {
    // What a test made unremovable, removable again.
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(root_, ec); !ec && it != fs::end(it);
         it.increment(ec)) {
      if (it->is_directory()) {
        ::chmod(it->path().c_str(), 0755);
      } else if (it->is_regular_file() && ::geteuid() == 0) {
        SetImmutable(it->path().string(), false);
      }
    }
    fs::remove_all(root_, ec);
  }

  // Makes `dir` (and any folder it is renamed to) impossible to remove wholly: a file held/x in
  // it, immutable (root) or in a folder without write permission (others). False where the
  // filesystem does not allow that.
  static bool MakeUnremovable(const std::string& dir) {
    fs::create_directories(dir + "/held");
    std::ofstream(dir + "/held/x") << "x";
    if (::geteuid() == 0) return SetImmutable(dir + "/held/x", true);
    return ::chmod((dir + "/held").c_str(), 0555) == 0;
  }

  ReshardOptions Options(const std::string& to, bool overwrite = false) const {
    return {
        .from = source_, .to = to, .components = {"language=tp=2,dp=1"}, .overwrite = overwrite};
  }

  std::string root_, spec_, source_;
};

TEST_F(ReshardTest, WritesTheTargetLayout) {
  std::ostringstream out, err;
  ASSERT_EQ(RunReshard(Options(root_ + "/tp2"), out, err), 0) << err.str();
  EXPECT_TRUE(fs::exists(root_ + "/tp2/iter_0000000/model_rank_00001.safetensors"));
  std::ostringstream out2, err2;
  EXPECT_EQ(RunVerify(source_, root_ + "/tp2/iter_0000000", false, out2, err2), 0) << err2.str();
  EXPECT_EQ(err.str(), "");
}

// The new checkpoint would land among the files it is read from, or replace them: refused, the
// source untouched, whatever the spelling of --to (a link, "..", a trailing slash).
TEST_F(ReshardTest, RefusesATargetInsideOrEqualToTheSource) {
  fs::create_directory_symlink(source_, root_ + "/link");
  const std::string before = Tree(root_ + "/src");
  struct Case {
    std::string to;
    bool overwrite;
    std::string want;
  };
  const std::vector<Case> cases = {
      {source_, false, "is the source checkpoint folder"},
      {source_, true, "is the source checkpoint folder"},
      {source_ + "/", true, "is the source checkpoint folder"},
      {source_ + "/sub", false, "is inside the source checkpoint folder"},
      {source_ + "/../iter_0000000/a/b/", true, "is inside the source checkpoint folder"},
      {root_ + "/link", true, "is the source checkpoint folder"},
      {root_ + "/link/sub", false, "is inside the source checkpoint folder"},
      // The root whose checkpoint the source is: the commit would replace it.
      {root_ + "/src", true, "is iter_0000000 of --to"},
      {root_ + "/src/", false, "is iter_0000000 of --to"},
  };
  for (const Case& c : cases) {
    for (bool dry_run : {false, true}) {
      SCOPED_TRACE(c.to + (c.overwrite ? " --overwrite" : "") + (dry_run ? " --dry-run" : ""));
      ReshardOptions options = Options(c.to, c.overwrite);
      options.dry_run = dry_run;
      std::ostringstream out, err;
      EXPECT_EQ(RunReshard(options, out, err), 1);
      EXPECT_THAT(err.str(), HasSubstr(c.want));
      EXPECT_EQ(Tree(root_ + "/src"), before);
    }
  }
  // A root given as --from names the same folder.
  ReshardOptions from_root = Options(root_ + "/src", true);
  from_root.from = root_ + "/src";
  std::ostringstream out, err;
  EXPECT_EQ(RunReshard(from_root, out, err), 1);
  EXPECT_THAT(err.str(), HasSubstr("is iter_0000000 of --to"));
  EXPECT_EQ(Tree(root_ + "/src"), before);

  // Import into its export folder, export into (or over) the checkpoint: refused alike.
  const std::string exported = Tree(root_ + "/export");
  std::ostringstream out2, err2;
  EXPECT_EQ(RunImport({.from = root_ + "/export", .to = root_ + "/export/ckpt", .spec = spec_},
                      out2, err2),
            1);
  EXPECT_THAT(err2.str(), HasSubstr("is inside the export folder (--from)"));
  EXPECT_EQ(Tree(root_ + "/export"), exported);
  std::ostringstream out3, err3;
  EXPECT_EQ(RunExport({.from = source_, .to = root_ + "/link", .overwrite = true}, out3, err3), 1);
  EXPECT_THAT(err3.str(), HasSubstr("is the source checkpoint folder"));
  EXPECT_EQ(Tree(root_ + "/src"), before);
  // A checkpoint folder named like a module of the export: it would be replaced by the module's.
  fs::create_directories(root_ + "/over");
  fs::copy(source_, root_ + "/over/language");
  const std::string over = Tree(root_ + "/over");
  std::ostringstream out4, err4;
  EXPECT_EQ(RunExport({.from = root_ + "/over/language", .to = root_ + "/over", .overwrite = true},
                      out4, err4),
            1);
  EXPECT_THAT(err4.str(), HasSubstr("is language of --to"));
  EXPECT_EQ(Tree(root_ + "/over"), over);
}

// A write that fails (here every file stops at 4 KiB, as on a full disk) removes its staging
// folder and the folders of --to it created; a checkpoint it was to replace stays as it was.
TEST_F(ReshardTest, AFailedWriteLeavesNoStagingFolder) {
  {
    std::ostringstream out, err;
    int code;
    {
      FileSizeLimit limit(4096);
      code = RunReshard(Options(root_ + "/new/deeper"), out, err);
    }
    EXPECT_EQ(code, 1);
    EXPECT_THAT(err.str(), HasSubstr("cannot write"));
    EXPECT_FALSE(fs::exists(root_ + "/new")) << Tree(root_ + "/new");
  }
  {
    std::ostringstream out, err;
    ASSERT_EQ(RunReshard(Options(root_ + "/tp2"), out, err), 0) << err.str();
    const std::string before = Tree(root_ + "/tp2");
    int code;
    {
      FileSizeLimit limit(4096);
      code = RunReshard(Options(root_ + "/tp2", /*overwrite=*/true), out, err);
    }
    EXPECT_EQ(code, 1);
    EXPECT_EQ(Tree(root_ + "/tp2"), before);  // No .iter_0000000.staging.
  }
  {  // Import shares the writing.
    std::ostringstream out, err;
    int code;
    {
      FileSizeLimit limit(4096);
      code = RunImport({.from = root_ + "/export", .to = root_ + "/imported", .spec = spec_}, out,
                       err);
    }
    EXPECT_EQ(code, 1);
    EXPECT_THAT(err.str(), HasSubstr("cannot write"));
    EXPECT_FALSE(fs::exists(root_ + "/imported")) << Tree(root_ + "/imported");
  }
}

// A root whose latest folder holds no metadata.json (Megatron's legacy layout: iter_N/mp_rank_00/
// model_optim_rng.pt) is named as such, not as metadata that does not parse.
TEST_F(ReshardTest, ARootOfAnotherToolIsNamed) {
  fs::create_directories(root_ + "/megatron/iter_0000100/mp_rank_00");
  std::ofstream(root_ + "/megatron/iter_0000100/mp_rank_00/model_optim_rng.pt") << "pt";
  std::ofstream(root_ + "/megatron/latest_checkpointed_iteration.txt") << "100\n";
  ReshardOptions options = Options(root_ + "/out");
  options.from = root_ + "/megatron";
  std::ostringstream out, err;
  EXPECT_EQ(RunReshard(options, out, err), 1);
  EXPECT_EQ(err.str(), "error: " + root_ +
                           "/megatron/iter_0000100/metadata.json cannot be read (No such file or "
                           "directory): not a mimo checkpoint\n");
  EXPECT_FALSE(fs::exists(root_ + "/out"));
}

// A path given empty ("--from=", an unset variable in a script) is refused by its flag's name,
// before "" + "/metadata.json" (the filesystem root's) or any other path is read.
TEST_F(ReshardTest, AnEmptyPathIsRefusedByName) {
  ReshardOptions from = Options(root_ + "/out"), to = Options("");
  from.from = "";
  std::ostringstream out, err, out2, err2, out3, err3;
  const int from_code = RunReshard(from, out, err);
  const int to_code = RunReshard(to, out2, err2);
  const int spec_code = RunImport({.from = root_ + "/export", .to = root_ + "/out"}, out3, err3);
  EXPECT_EQ(from_code, 1);
  EXPECT_EQ(err.str(), "error: --from is empty: give it a path\n");
  EXPECT_EQ(to_code, 1);
  EXPECT_EQ(err2.str(), "error: --to is empty: give it a path\n");
  EXPECT_EQ(spec_code, 1);
  EXPECT_EQ(err3.str(), "error: --spec is empty: give it a path\n");
  EXPECT_FALSE(fs::exists(root_ + "/out"));
}

// An export imported into a spec whose attention has other heads (one query group per head: the
// same shapes) is refused by its config.json: its fused QKV rows, in Megatron's order per group,
// would be read by the wrong groups. The same spec imports it.
TEST_F(ReshardTest, ImportRefusesAnExportOfOtherAttentionSizes) {
  std::ostringstream out, err;
  ASSERT_EQ(RunExport({.from = source_, .to = root_ + "/exp"}, out, err), 0) << err.str();
  std::string other = kSpec;
  const std::string heads = "num_attention_heads: 2";
  other.replace(other.find(heads), heads.size(), "num_attention_heads: 4");
  std::ofstream(root_ + "/other.yaml") << other;
  std::ostringstream out2, err2;
  EXPECT_EQ(RunImport({.from = root_ + "/exp", .to = root_ + "/bad", .spec = root_ + "/other.yaml"},
                      out2, err2),
            1);
  EXPECT_THAT(err2.str(), HasSubstr("was exported from a model with 2 attention heads in 2 query "
                                    "groups of width 8 (its config.json), the spec's module "
                                    "\"language\" has 4 in 4 of width 4"));
  EXPECT_FALSE(fs::exists(root_ + "/bad"));
  // A field this version does not know (a later one's export) is no reason to refuse it.
  {
    std::ifstream in(root_ + "/exp/language/config.json");
    nlohmann::json config = nlohmann::json::parse(in);
    config["spec"]["language"]["transformer"]["some_later_field"] = 1;
    std::ofstream(root_ + "/exp/language/config.json", std::ios::trunc) << config.dump();
  }
  std::ostringstream out3, err3;
  ASSERT_EQ(RunImport({.from = root_ + "/exp", .to = root_ + "/good", .spec = spec_}, out3, err3),
            0)
      << err3.str();
  std::ostringstream out4, err4;
  EXPECT_EQ(RunVerify(source_, root_ + "/good/iter_0000000", true, out4, err4), 0) << err4.str();
}

// A checkpoint whose rank files are of different saves (one rank's files from another step, its
// checksums listed anew in metadata.json) is refused: resharded, the mixture would leave as one
// save's files, every one recording the same step.
TEST_F(ReshardTest, RefusesRankFilesOfDifferentSaves) {
  std::ostringstream out, err;
  ASSERT_EQ(RunReshard(Options(root_ + "/tp2"), out, err), 0) << err.str();
  const std::string dir = root_ + "/tp2/iter_0000000", file = dir + "/model_rank_00001.safetensors";
  {  // Rank 1's model file as a save of step 7 would write it, listed with its new checksum.
    auto reader = checkpoint::SafetensorsReader::Open(file);
    ASSERT_TRUE(reader.ok()) << reader.status();
    std::map<std::string, std::string> metadata = reader->header().metadata;
    metadata["step"] = "7";
    std::vector<std::vector<char>> data;
    std::vector<checkpoint::TensorToWrite> tensors;
    for (const checkpoint::TensorEntry& t : reader->header().tensors) {
      data.emplace_back(t.end - t.begin);
      ASSERT_TRUE(reader->Read(t.name, absl::MakeSpan(data.back())).ok());
      tensors.push_back({.name = t.name, .dtype = t.dtype, .shape = t.shape});
    }
    for (size_t i = 0; i < tensors.size(); ++i) tensors[i].data = data[i].data();
    const std::string rewritten = root_ + "/rewritten.safetensors";
    auto digest = checkpoint::WriteSafetensors(rewritten, tensors, metadata);
    ASSERT_TRUE(digest.ok()) << digest.status();
    fs::rename(rewritten, file);
    std::ifstream in(dir + "/metadata.json");
    nlohmann::json meta = nlohmann::json::parse(in);
    meta["files"]["model_rank_00001.safetensors"] = {{"bytes", digest->bytes},
                                                     {"crc32c", digest->crc32c}};
    std::ofstream(dir + "/metadata.json", std::ios::trunc) << meta.dump();
  }
  ReshardOptions options = Options(root_ + "/mixed");
  options.from = dir;
  std::ostringstream out2, err2;
  EXPECT_EQ(RunReshard(options, out2, err2), 1);
  EXPECT_THAT(err2.str(), HasSubstr("model_rank_00001.safetensors records step 7 and position 0, " +
                                    dir + "/model_rank_00000.safetensors step 0"));
  EXPECT_THAT(err2.str(), HasSubstr("files of different saves"));
  EXPECT_FALSE(fs::exists(root_ + "/mixed"));
}

// A --to below a file fails where its folder cannot be created, in one error line: no staging
// folder was made, so none is reported as not removed.
TEST_F(ReshardTest, ATargetBelowAFileIsOneError) {
  std::ofstream(root_ + "/file") << "x";
  std::ostringstream out, err;
  EXPECT_EQ(RunReshard(Options(root_ + "/file/sub"), out, err), 1);
  EXPECT_EQ(err.str(), "error: cannot create " + root_ + "/file/sub: Not a directory\n");
  EXPECT_TRUE(fs::is_regular_file(root_ + "/file"));
}

// With --overwrite the checkpoint of the same iteration is replaced: set aside, the new one
// moved in, the old one removed. One that cannot be removed is named in a warning (the new
// checkpoint stands: exit code 0); an export's earlier module folder likewise.
TEST_F(ReshardTest, ReportsAReplacedCheckpointThatCannotBeRemoved) {
  std::ostringstream out, err;
  ASSERT_EQ(RunReshard(Options(root_ + "/tp2"), out, err), 0) << err.str();
  if (!MakeUnremovable(root_ + "/tp2/iter_0000000")) {
    GTEST_SKIP() << "this filesystem cannot keep a file from being removed";
  }
  std::ostringstream out2, err2;
  ASSERT_EQ(RunReshard(Options(root_ + "/tp2", /*overwrite=*/true), out2, err2), 0) << err2.str();
  EXPECT_THAT(err2.str(), HasSubstr("warning: the checkpoint this one replaced"));
  EXPECT_THAT(err2.str(), HasSubstr(root_ + "/tp2/iter_0000000.replaced"));
  std::ostringstream out3, err3;
  EXPECT_EQ(RunVerify(source_, root_ + "/tp2/iter_0000000", false, out3, err3), 0) << err3.str();

  std::ostringstream out4, err4;
  ASSERT_EQ(RunExport({.from = source_, .to = root_ + "/out"}, out4, err4), 0) << err4.str();
  EXPECT_THAT(err4.str(), Not(HasSubstr("warning")));
  ASSERT_TRUE(MakeUnremovable(root_ + "/out/language"));
  std::ostringstream out5, err5;
  ASSERT_EQ(RunExport({.from = source_, .to = root_ + "/out", .overwrite = true}, out5, err5), 0)
      << err5.str();
  EXPECT_THAT(err5.str(), HasSubstr("warning: the earlier export of language"));
  EXPECT_THAT(err5.str(), HasSubstr(root_ + "/out/.language.old"));
  EXPECT_TRUE(fs::exists(root_ + "/out/language/model.safetensors.index.json"));
}

}  // namespace
}  // namespace mimo::tools
