// ParseJobSpec / ReadJobSpecFile: YAML and JSON through the proto3 JSON mapping, their errors,
// and the bundled examples/*.yaml against ValidateJobSpec.
#include "tools/mimoctl/spec_file.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/plan_proto.h"
#include "coordinator/spec_validation.h"

namespace mimo::tools {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kYaml[] = R"(# A comment.
name: demo
kind: KIND_TRAIN
modules:
  - name: language
    language:
      vocab_size: 256
      maxSequenceLength: 256
      transformer: {num_layers: 2, hidden_size: 64, num_attention_heads: 4, ffn_hidden_size: 128}
      moe: {num_experts: 4, top_k: 2, router_score: ROUTER_SCORE_SOFTMAX, aux_loss_coeff: 0.01}
    parallelism: {tp: 2, ep: 2}
training:
  steps: 50
  global_batch_size: 8
  micro_batch_size: 2
  seq_length: 128
  packing: true
  precision: PRECISION_BF16
  optimizer: {lr: 3e-4, adam_beta1: 0.9, adam_beta2: 0.95, adam_eps: 1.0e-8, clip_grad: 1}
data:
  webdataset:
    shards: ["/data/shard-{000..009}.tar", '/data/extra.tar']
resources: {workers: 4, device: DEVICE_KIND_CPU}
active_deadline: 3600s
)";

// kYaml in JSON, with lowerCamel names where kYaml has snake_case and vice versa.
constexpr char kJson[] = R"({
  "name": "demo",
  "kind": "KIND_TRAIN",
  "modules": [{
    "name": "language",
    "language": {
      "vocabSize": 256,
      "max_sequence_length": 256,
      "transformer": {"numLayers": 2, "hiddenSize": 64, "numAttentionHeads": 4,
                      "ffnHiddenSize": 128},
      "moe": {"numExperts": 4, "topK": 2, "routerScore": "ROUTER_SCORE_SOFTMAX",
              "auxLossCoeff": 0.01}
    },
    "parallelism": {"tp": 2, "ep": 2}
  }],
  "training": {
    "steps": "50", "globalBatchSize": 8, "microBatchSize": 2, "seqLength": 128,
    "packing": true, "precision": "PRECISION_BF16",
    "optimizer": {"lr": 0.0003, "adamBeta1": 0.9, "adamBeta2": 0.95, "adamEps": 1e-8,
                  "clipGrad": 1.0}
  },
  "data": {"webdataset": {"shards": ["/data/shard-{000..009}.tar", "/data/extra.tar"]}},
  "resources": {"workers": 4, "device": "DEVICE_KIND_CPU"},
  "activeDeadline": "3600s"
})";

// gMock's string matchers take std::string, not Debian's absl::string_view.
std::string Message(const absl::Status& status) { return std::string(status.message()); }

v1::JobSpec MustParse(absl::string_view text, SpecFormat format = SpecFormat::kYaml) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpec(text, format);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : v1::JobSpec();
}

// The message of a parse that must fail with InvalidArgument.
std::string ParseError(absl::string_view text, SpecFormat format = SpecFormat::kYaml) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpec(text, format);
  EXPECT_FALSE(spec.ok()) << spec->DebugString();
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << spec.status();
  return std::string(spec.status().message());
}

TEST(ParseJobSpecTest, YamlAndJsonGiveEqualMessages) {
  const v1::JobSpec from_yaml = MustParse(kYaml);
  const v1::JobSpec from_json = MustParse(kJson, SpecFormat::kJson);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(from_yaml, from_json))
      << from_yaml.DebugString() << "\nvs\n"
      << from_json.DebugString();
  EXPECT_EQ(from_yaml.modules(0).language().max_sequence_length(), 256);
  EXPECT_EQ(from_yaml.training().optimizer().lr(), 3e-4);
  EXPECT_EQ(from_yaml.training().optimizer().clip_grad(), 1.0);
  EXPECT_THAT(from_yaml.data().webdataset().shards(),
              ElementsAre("/data/shard-{000..009}.tar", "/data/extra.tar"));
  // Valid (an MoE language module tp 2 x dp 2 x ep 2 on 4 CPU workers).
  std::vector<coordinator::FieldViolation> violations;
  EXPECT_TRUE(coordinator::ValidateJobSpec(from_yaml, &violations).ok());
  for (const coordinator::FieldViolation& v : violations) ADD_FAILURE() << v.field;
}

TEST(ParseJobSpecTest, EnumsByNameOrNumber) {
  const v1::JobSpec spec = MustParse(
      "kind: KIND_SELFTEST\nresources: {device: 1}\n"
      "modules: [{language: {moe: {router_score: ROUTER_SCORE_SIGMOID}}}]\n");
  EXPECT_EQ(spec.kind(), v1::JobSpec::KIND_SELFTEST);
  EXPECT_EQ(spec.resources().device(), v1::DEVICE_KIND_CUDA);
  EXPECT_EQ(spec.modules(0).language().moe().router_score(), v1::MoE::ROUTER_SCORE_SIGMOID);
  EXPECT_THAT(ParseError("kind: KIND_SOMETIMES\n"), HasSubstr("KIND_SOMETIMES"));
}

TEST(ParseJobSpecTest, Durations) {
  EXPECT_EQ(MustParse("active_deadline: 3600s").active_deadline().seconds(), 3600);
  const v1::JobSpec spec = MustParse("activeDeadline: 1.5s");
  EXPECT_EQ(spec.active_deadline().seconds(), 1);
  EXPECT_EQ(spec.active_deadline().nanos(), 500000000);
  EXPECT_THAT(ParseError("active_deadline: 1h"), HasSubstr("active_deadline"));
}

TEST(ParseJobSpecTest, UnknownFieldsAreErrors) {
  EXPECT_THAT(ParseError("name: a\nreplicas: 3\n"), HasSubstr("replicas"));
  EXPECT_THAT(ParseError("modules: [{name: vision, parallelism: {tq: 2}}]"), HasSubstr("tq"));
  EXPECT_THAT(ParseError(R"({"name": "a", "replicas": 3})", SpecFormat::kJson),
              HasSubstr("replicas"));
}

TEST(ParseJobSpecTest, WrongTypesAreErrors) {
  EXPECT_THAT(ParseError("training: {steps: many}"), HasSubstr("steps"));
  EXPECT_THAT(ParseError("training: {packing: 3}"), HasSubstr("packing"));
  EXPECT_THAT(ParseError("resources: {workers: 2.5}"), HasSubstr("workers"));
  EXPECT_THAT(ParseError("training: [1, 2]"), HasSubstr("training"));
  EXPECT_THAT(ParseError("modules: [{name: [vision]}]"), HasSubstr("name"));
}

TEST(ParseJobSpecTest, ScalarsKeepTheirYamlTypes) {
  // Quoted scalars stay strings: a quoted number still fills an integer field (proto3 JSON
  // accepts numbers as strings), and a numeric-looking name stays text.
  v1::JobSpec spec = MustParse("name: '0123'\ntraining: {steps: \"50\", packing: True}\n");
  EXPECT_EQ(spec.name(), "0123");
  EXPECT_EQ(spec.training().steps(), 50);
  EXPECT_TRUE(spec.training().packing());
  spec = MustParse(
      "training: {steps: 0x10, micro_batch_size: +3, global_batch_size: 0o17, seed: "
      "-9223372036854775808, optimizer: {lr: .5, min_lr: 1e-3, clip_grad: .inf, "
      "weight_decay: -.Inf, adam_eps: .nan}}");
  EXPECT_EQ(spec.training().steps(), 16);
  EXPECT_EQ(spec.training().micro_batch_size(), 3);
  EXPECT_EQ(spec.training().global_batch_size(), 15);
  EXPECT_EQ(spec.training().seed(), INT64_MIN);
  EXPECT_EQ(spec.training().optimizer().lr(), 0.5);
  EXPECT_EQ(spec.training().optimizer().min_lr(), 1e-3);
  EXPECT_EQ(spec.training().optimizer().clip_grad(), INFINITY);
  EXPECT_EQ(spec.training().optimizer().weight_decay(), -INFINITY);
  EXPECT_TRUE(std::isnan(spec.training().optimizer().adam_eps()));
  // A number into a string field is a type error, as in JSON.
  EXPECT_THAT(ParseError("name: 123"), HasSubstr("name"));
  EXPECT_THAT(ParseError("resources: {workers: 99999999999999999999999}"), HasSubstr("workers"));
}

TEST(ParseJobSpecTest, NullsLeaveFieldsUnset) {
  const v1::JobSpec spec = MustParse("name: null\ntraining: ~\ndata:\nmax_restarts: 2\n");
  EXPECT_EQ(spec.name(), "");
  EXPECT_FALSE(spec.has_training());
  EXPECT_FALSE(spec.has_data());
  EXPECT_EQ(spec.max_restarts(), 2);
}

TEST(ParseJobSpecTest, SyntaxErrorsGiveLineAndColumn) {
  const std::string error = ParseError("name: a\nmodules:\n  - name: vision\n    x: [1, 2\n");
  EXPECT_THAT(error, StartsWith("YAML syntax error: line "));
  EXPECT_THAT(ParseError("name: a\nkind: KIND_TRAIN\n  steps: 3\n"),
              HasSubstr("YAML syntax error: line 3, column 8"));
  // JSON too, on one line (protobuf's message had no position and spanned four lines).
  EXPECT_EQ(ParseError("{\n  \"name\": \"a\",\n  \"modules\": [ }\n", SpecFormat::kJson),
            "JSON syntax error: line 3, column 16: syntax error while parsing value - unexpected "
            "'}'; expected '[', '{', or a literal");
  EXPECT_THAT(ParseError("{\"name\": \"a\",\n", SpecFormat::kJson),
              StartsWith("JSON syntax error: line 2, column 1: "));
}

// A field's wrong type or unknown name is reported with the line of its key in YAML (protobuf's
// message names the field only).
TEST(ParseJobSpecTest, FieldErrorsGiveTheLineOfTheField) {
  EXPECT_EQ(
      ParseError("name: x\nmodules:\n  - name: language\n    language:\n      vocabSize: abc\n"),
      "invalid job spec: line 5, column 7: (modules[0].language.vocab_size): invalid value "
      "\"abc\" for type TYPE_INT32");
  EXPECT_EQ(
      ParseError("name: x\nmodules:\n  - name: a\n  - {name: b, language: {vocab_sise: 3}}\n"),
      "invalid job spec: line 4, column 26: (modules[1].language) vocab_sise: Cannot find "
      "field.");
  EXPECT_EQ(ParseError("name: x\nreplicas: 3\n"),
            "invalid job spec: line 2, column 1: replicas: Cannot find field.");
  EXPECT_THAT(ParseError("name: x\nkind: KIND_SOMETIMES\n"),
              StartsWith("invalid job spec: line 2, column 1: (kind): invalid value"));
}

TEST(ParseJobSpecTest, EmptyDocuments) {
  EXPECT_THAT(ParseError(""), HasSubstr("empty YAML document"));
  EXPECT_THAT(ParseError("# nothing here\n"), HasSubstr("empty YAML document"));
  EXPECT_THAT(ParseError("---\n...\n"), HasSubstr("empty YAML document"));
  EXPECT_THAT(ParseError("", SpecFormat::kJson),
              HasSubstr("JSON syntax error: line 1, column 1: "));
}

TEST(ParseJobSpecTest, TopLevelMustBeAMapping) {
  EXPECT_THAT(ParseError("- name: a\n- name: b\n"),
              HasSubstr("line 1, column 1: the top level must be a mapping of JobSpec fields, "
                        "got a sequence"));
  EXPECT_THAT(ParseError("just text"), HasSubstr("got a scalar"));
  EXPECT_THAT(ParseError("[1]", SpecFormat::kJson), HasSubstr("invalid job spec"));
}

TEST(ParseJobSpecTest, OneDocumentOnly) {
  EXPECT_THAT(ParseError("name: a\n---\nname: b\n"),
              HasSubstr("line 2, column 1: a second YAML document starts here; a spec is exactly "
                        "one document"));
  EXPECT_THAT(ParseError("name: a\n...\nname: b\n"), HasSubstr("a second YAML document"));
}

TEST(ParseJobSpecTest, StuckParserIsASyntaxError) {
  // yaml-cpp makes no progress on these (its LoadAll() would loop forever).
  EXPECT_EQ(ParseError(" ,"), "YAML syntax error: line 1, column 2: unexpected ','");
  EXPECT_EQ(ParseError("- a\n,"), "YAML syntax error: line 2, column 1: unexpected ','");
}

TEST(ParseJobSpecTest, AliasesRepeatValues) {
  const v1::JobSpec spec = MustParse(
      "modules:\n"
      "  - {name: vision, vision: {transformer: &small {num_layers: 2, hidden_size: 64}}}\n"
      "  - {name: audio, audio: {transformer: *small}}\n");
  EXPECT_EQ(spec.modules(1).audio().transformer().hidden_size(), 64);
  EXPECT_THAT(ParseError("a: &a [1, *a]"), HasSubstr("an alias refers to a node that contains it"));
  EXPECT_THAT(ParseError("a: *b"), HasSubstr("YAML syntax error"));
}

TEST(ParseJobSpecTest, DuplicateKeysAreErrors) {
  EXPECT_THAT(ParseError("name: a\nkind: KIND_TRAIN\nname: b\n"),
              HasSubstr("line 3, column 1: duplicate key 'name'"));
  // In JSON too (protobuf's parser kept the first object and merged the second's fields).
  EXPECT_THAT(ParseError(R"({"name": "a", "training": {"steps": 5}, "training": {"seed": 2}})",
                         SpecFormat::kJson),
              HasSubstr("key \"training\" is given twice"));
  EXPECT_THAT(
      ParseError(R"({"modules": [{"name": "a"}, {"name": "b", "name": "c"}]})", SpecFormat::kJson),
      HasSubstr("key \"name\" is given twice"));
  // The same key in two objects is no duplicate.
  EXPECT_THAT(ParseError(R"({"modules": [{"name": "a"}, {"name": "b"}], "replicas": 1})",
                         SpecFormat::kJson),
              HasSubstr("replicas"));
}

TEST(ParseJobSpecTest, HostileInputIsBounded) {
  // Aliases that would expand to 10^9 values.
  std::string bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
  for (char c = 'b'; c <= 'j'; ++c) {
    const char prev = static_cast<char>(c - 1);
    absl::StrAppend(&bomb, std::string(1, c), ": &", std::string(1, c), " [*", std::string(1, prev),
                    ", *", std::string(1, prev), ", *", std::string(1, prev), ", *",
                    std::string(1, prev), ", *", std::string(1, prev), ", *", std::string(1, prev),
                    ", *", std::string(1, prev), ", *", std::string(1, prev), ", *",
                    std::string(1, prev), ", *", std::string(1, prev), "]\n");
  }
  EXPECT_THAT(ParseError(bomb), HasSubstr("values once aliases are expanded"));
  EXPECT_THAT(ParseError("a: " + std::string(100, '[') + std::string(100, ']')),
              HasSubstr("nested deeper than 64 levels"));
}

// A fresh folder under the test's temporary directory.
fs::path TestDir() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir =
      fs::path(::testing::TempDir()) / absl::StrCat("spec_file_test_", getpid(), "_", info->name());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string WriteFile(const fs::path& path, absl::string_view text) {
  std::ofstream(path) << text;
  return path.string();
}

TEST(ReadJobSpecFileTest, ChoosesTheFormatByExtension) {
  const fs::path dir = TestDir();
  const v1::JobSpec expected = MustParse(kYaml);
  for (const char* name : {"spec.yaml", "spec.yml", "SPEC.YAML"}) {
    absl::StatusOr<v1::JobSpec> spec = ReadJobSpecFile(WriteFile(dir / name, kYaml));
    ASSERT_TRUE(spec.ok()) << name << ": " << spec.status();
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*spec, expected)) << name;
  }
  absl::StatusOr<v1::JobSpec> spec = ReadJobSpecFile(WriteFile(dir / "spec.json", kJson));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*spec, expected));
  // JSON is not read as YAML (where it would parse): a .json file must be JSON.
  spec = ReadJobSpecFile(WriteFile(dir / "yaml.json", kYaml));
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);

  spec = ReadJobSpecFile(WriteFile(dir / "spec.txt", kYaml));
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(spec.status()), HasSubstr("unknown spec file extension '.txt'"));
  spec = ReadJobSpecFile(WriteFile(dir / "spec", kYaml));
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ReadJobSpecFileTest, ErrorsNameTheFile) {
  const fs::path dir = TestDir();
  const std::string path = WriteFile(dir / "bad.yaml", "name: a\nfoo: 1\n");
  absl::StatusOr<v1::JobSpec> spec = ReadJobSpecFile(path);
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(spec.status()), StartsWith(path + ": invalid job spec"));
  EXPECT_THAT(Message(spec.status()), HasSubstr("foo"));
}

TEST(ReadJobSpecFileTest, MissingAndUnreadableFiles) {
  const fs::path dir = TestDir();
  const std::string missing = (dir / "missing.yaml").string();
  absl::StatusOr<v1::JobSpec> spec = ReadJobSpecFile(missing);
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(spec.status()), HasSubstr(missing));
  EXPECT_THAT(Message(spec.status()), HasSubstr("No such file or directory"));
  fs::create_directory(dir / "folder.yaml");
  spec = ReadJobSpecFile((dir / "folder.yaml").string());
  EXPECT_FALSE(spec.ok());
  EXPECT_THAT(Message(spec.status()), HasSubstr("Is a directory"));
}

// A file over kMaxSpecFileBytes is refused before it is parsed (a 100 MB spec took 10 s and
// 700 MB to parse before the coordinator refused it); one just under it parses (its comment goes).
TEST(ReadJobSpecFileTest, FilesOverTheLimitAreRefusedUnread) {
  const fs::path dir = TestDir();
  const std::string spec = "name: a\n";
  const std::string under =
      WriteFile(dir / "under.yaml",
                "# " + std::string(kMaxSpecFileBytes - spec.size() - 3, 'x') + "\n" + spec);
  ASSERT_EQ(fs::file_size(under), kMaxSpecFileBytes);
  absl::StatusOr<v1::JobSpec> parsed = ReadJobSpecFile(under);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->name(), "a");
  const std::string over =
      WriteFile(dir / "over.yaml",
                "# " + std::string(kMaxSpecFileBytes - spec.size() - 2, 'x') + "\n" + spec);
  parsed = ReadJobSpecFile(over);
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(parsed.status()),
            absl::StrCat(over, ": the file is ", kMaxSpecFileBytes + 1,
                         " bytes; a spec file is at most 16777216 bytes (16 MiB)"));
}

// examples/, found from this file's path: tests/tools/ -> ../../examples.
fs::path ExamplesDir() {
  return fs::path(__FILE__).parent_path().parent_path().parent_path() / "examples";
}

TEST(ExamplesTest, EveryValidExampleParsesAndValidates) {
  std::vector<std::string> checked;
  for (const fs::directory_entry& entry : fs::directory_iterator(ExamplesDir())) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".yaml" || name.starts_with("invalid-")) continue;
    SCOPED_TRACE(name);
    absl::StatusOr<v1::JobSpec> spec = ReadJobSpecFile(entry.path().string());
    ASSERT_TRUE(spec.ok()) << spec.status();
    absl::StatusOr<parallel::RankPlan> plan = coordinator::ValidateJobSpec(*spec, nullptr);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->world_size(), spec->resources().workers());
    checked.push_back(name);
  }
  EXPECT_THAT(checked, ::testing::IsSupersetOf({"mimo-cpu-8.yaml", "mimo-gpu-2.yaml"}));
}

TEST(ExamplesTest, CpuExampleIsTheDocumentedLayout) {
  absl::StatusOr<v1::JobSpec> spec = ReadJobSpecFile((ExamplesDir() / "mimo-cpu-8.yaml").string());
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->active_deadline().seconds(), 3600);
  absl::StatusOr<parallel::RankPlan> plan = coordinator::ValidateJobSpec(*spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const v1::RankPlan proto = coordinator::RankPlanToProto(*plan);
  ASSERT_EQ(proto.modules_size(), 3);
  EXPECT_EQ(proto.modules(0).rank_offset(), 0);
  EXPECT_EQ(proto.modules(0).dp(), 2);
  EXPECT_EQ(proto.modules(1).rank_offset(), 2);
  EXPECT_EQ(proto.modules(1).dp(), 2);
  EXPECT_EQ(proto.modules(2).rank_offset(), 4);
  EXPECT_EQ(proto.modules(2).dp(), 4);
  EXPECT_EQ(proto.modules(2).ep(), 2);
  EXPECT_EQ(proto.modules(2).expt_dp(), 2);
}

TEST(ExamplesTest, InvalidLayoutReportsItsFields) {
  absl::StatusOr<v1::JobSpec> spec =
      ReadJobSpecFile((ExamplesDir() / "invalid-layout.yaml").string());
  ASSERT_TRUE(spec.ok()) << spec.status();
  std::vector<coordinator::FieldViolation> violations;
  EXPECT_FALSE(coordinator::ValidateJobSpec(*spec, &violations).ok());
  std::vector<std::string> fields;
  for (const coordinator::FieldViolation& v : violations) fields.push_back(v.field);
  EXPECT_THAT(fields, ElementsAre("modules[0].parallelism.ep", "modules[1].parallelism.rank_offset",
                                  "modules"));
}

}  // namespace
}  // namespace mimo::tools
