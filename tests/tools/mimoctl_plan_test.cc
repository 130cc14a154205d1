// `mimoctl plan` as a user runs it: the JSON contract, the table, and errors on stderr.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tests/tools/mimoctl_runner.h"

namespace {

using ::testing::HasSubstr;

using Result = ::mimo::tools::testing::MimoctlResult;

Result Mimoctl(const std::string& args) { return ::mimo::tools::testing::RunMimoctl(args); }

// vision tp=2 on ranks 0-1; language pp=2, dp=2, ep=2 on ranks 2-5; seed 5. Vision rank 0 feeds
// the first stage leaders of both language replicas, 2 and 3.
constexpr char kExpected[] = R"json({"world_size": 6, "ranks": [
{"rank": 0, "module": "vision", "dense": {"tp": 0, "cp": 0, "dp": 0, "pp": 0}, "expert": null,
 "seeds": {"base": 5, "tensor_parallel": 2723, "data_parallel": 5, "expert": null},
 "groups": {"tp": [0, 1], "cp": [0], "dp": [0], "pp": [0], "dp_cp": [0], "tp_cp": [0, 1],
            "tp_pp": [0, 1], "tp_dp_cp": [0, 1], "tp_cp_dp_pp": [0, 1], "embd": [0],
            "pos_embd": [0]},
 "links": [{"kind": "link_vision_0_2", "encoder": "vision", "encoder_rank": 0, "language_rank": 2},
           {"kind": "link_vision_0_3", "encoder": "vision", "encoder_rank": 0, "language_rank": 3}]},
{"rank": 1, "module": "vision", "dense": {"tp": 1, "cp": 0, "dp": 0, "pp": 0}, "expert": null,
 "seeds": {"base": 5, "tensor_parallel": 2724, "data_parallel": 5, "expert": null},
 "groups": {"tp": [0, 1], "cp": [1], "dp": [1], "pp": [1], "dp_cp": [1], "tp_cp": [0, 1],
            "tp_pp": [0, 1], "tp_dp_cp": [0, 1], "tp_cp_dp_pp": [0, 1], "embd": [1],
            "pos_embd": [1]}, "links": []},
{"rank": 2, "module": "language", "dense": {"tp": 0, "cp": 0, "dp": 0, "pp": 0},
 "expert": {"expt_tp": 0, "ep": 0, "expt_dp": 0, "pp": 0},
 "seeds": {"base": 5, "tensor_parallel": 2723, "data_parallel": 5, "expert": 1029},
 "groups": {"tp": [2], "cp": [2], "dp": [2, 3], "pp": [2, 4], "dp_cp": [2, 3], "tp_cp": [2],
            "tp_pp": [2, 4], "tp_dp_cp": [2, 3], "tp_cp_dp_pp": [2, 3, 4, 5], "embd": [2, 4],
            "pos_embd": [2], "ep": [2, 3], "expt_tp": [2], "expt_dp": [2],
            "expt_tp_ep": [2, 3], "expt_tp_ep_pp": [2, 3, 4, 5]},
 "links": [{"kind": "link_vision_0_2", "encoder": "vision", "encoder_rank": 0, "language_rank": 2}]},
{"rank": 3, "module": "language", "dense": {"tp": 0, "cp": 0, "dp": 1, "pp": 0},
 "expert": {"expt_tp": 0, "ep": 1, "expt_dp": 0, "pp": 0},
 "seeds": {"base": 5, "tensor_parallel": 2723, "data_parallel": 5, "expert": 1129},
 "groups": {"tp": [3], "cp": [3], "dp": [2, 3], "pp": [3, 5], "dp_cp": [2, 3], "tp_cp": [3],
            "tp_pp": [3, 5], "tp_dp_cp": [2, 3], "tp_cp_dp_pp": [2, 3, 4, 5], "embd": [3, 5],
            "pos_embd": [3], "ep": [2, 3], "expt_tp": [3], "expt_dp": [3],
            "expt_tp_ep": [2, 3], "expt_tp_ep_pp": [2, 3, 4, 5]},
 "links": [{"kind": "link_vision_0_3", "encoder": "vision", "encoder_rank": 0, "language_rank": 3}]},
{"rank": 4, "module": "language", "dense": {"tp": 0, "cp": 0, "dp": 0, "pp": 1},
 "expert": {"expt_tp": 0, "ep": 0, "expt_dp": 0, "pp": 1},
 "seeds": {"base": 105, "tensor_parallel": 2823, "data_parallel": 105, "expert": 1129},
 "groups": {"tp": [4], "cp": [4], "dp": [4, 5], "pp": [2, 4], "dp_cp": [4, 5], "tp_cp": [4],
            "tp_pp": [2, 4], "tp_dp_cp": [4, 5], "tp_cp_dp_pp": [2, 3, 4, 5], "embd": [2, 4],
            "pos_embd": [], "ep": [4, 5], "expt_tp": [4], "expt_dp": [4],
            "expt_tp_ep": [4, 5], "expt_tp_ep_pp": [2, 3, 4, 5]}, "links": []},
{"rank": 5, "module": "language", "dense": {"tp": 0, "cp": 0, "dp": 1, "pp": 1},
 "expert": {"expt_tp": 0, "ep": 1, "expt_dp": 0, "pp": 1},
 "seeds": {"base": 105, "tensor_parallel": 2823, "data_parallel": 105, "expert": 1229},
 "groups": {"tp": [5], "cp": [5], "dp": [4, 5], "pp": [3, 5], "dp_cp": [4, 5], "tp_cp": [5],
            "tp_pp": [3, 5], "tp_dp_cp": [4, 5], "tp_cp_dp_pp": [2, 3, 4, 5], "embd": [3, 5],
            "pos_embd": [], "ep": [4, 5], "expt_tp": [5], "expt_dp": [5],
            "expt_tp_ep": [4, 5], "expt_tp_ep_pp": [2, 3, 4, 5]}, "links": []}]})json";

constexpr char kLayout[] =
    "--world 6 --seed 5 --component 'vision=tp=2,dp=1' "
    "--component ' language = pp=2, dp=2, ep=2, rank_offset=2 '";

TEST(MimoctlPlanTest, JsonIsExactlyTheContract) {
  const Result r = Mimoctl(absl::StrCat("plan --json ", kLayout));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  const auto actual = nlohmann::ordered_json::parse(r.out);
  const auto expected = nlohmann::ordered_json::parse(kExpected);
  // Same values and the same key order.
  EXPECT_EQ(actual.dump(), expected.dump());
}

TEST(MimoctlPlanTest, TableHasARowPerRank) {
  const Result r = Mimoctl(absl::StrCat("plan ", kLayout));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("world_size 6, seed 5, 2 modules"));
  EXPECT_THAT(r.out, HasSubstr("language  [2,6)  1   1   2   2   2   1    1"));
  EXPECT_THAT(r.out, HasSubstr("5     language  0   0   1   1   0        1   0        105   "
                               "2823     105      1229"));
  EXPECT_THAT(r.out, HasSubstr("0     vision    0   0   0   0   -        -   -        5     "
                               "2723     5        -"));
}

TEST(MimoctlPlanTest, InvalidLayoutPrintsEveryErrorAndFails) {
  const Result r = Mimoctl(
      "plan --world 10 --component 'vision=tp=4,dp=1,ep=2' --component 'language=tp=2,dp=4,"
      "rank_offset=2'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err,
            "error: module 'vision' is an encoder and must be dense: ep=2 (only the language "
            "module 'language' takes ep and etp)\n"
            "error: modules 'vision' [0,4) and 'language' [2,10) overlap on ranks 2..3\n");
}

TEST(MimoctlPlanTest, ComponentSyntaxErrorsFail) {
  const Result r = Mimoctl("plan --world 2 --component 'vision=tp=x' --component 'language=foo=1'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("error: component 'vision=tp=x': value 'x' of key 'tp' is not an "
                               "integer\n"));
  EXPECT_THAT(r.err, HasSubstr("error: component 'language=foo=1': unknown key 'foo'"));
}

TEST(MimoctlPlanTest, NoComponentFails) {
  const Result r = Mimoctl("plan --world 2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("error: no component given"));
}

TEST(MimoctlPlanTest, MissingWorldIsAUsageError) {
  const Result r = Mimoctl("plan --component language=");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--component requires --world"));
  const Result nothing = Mimoctl("plan");
  EXPECT_EQ(nothing.exit_code, 2);
  EXPECT_THAT(nothing.err, HasSubstr("SPEC or --world (with --component) is required"));
}

std::string Example(const std::string& name) { return mimo::tools::testing::ExampleSpec(name); }

TEST(MimoctlPlanTest, SpecFilePlansAsTheFlagsDo) {
  const Result from_spec = Mimoctl("plan " + Example("selftest-cpu.yaml"));
  ASSERT_EQ(from_spec.exit_code, 0) << from_spec.err;
  const Result from_flags = Mimoctl(
      "plan --world 8 --component vision=tp=2,dp=1,rank_offset=0 --component "
      "audio=dp=2,rank_offset=2 --component language=tp=2,dp=2,ep=2,rank_offset=4");
  ASSERT_EQ(from_flags.exit_code, 0) << from_flags.err;
  EXPECT_EQ(from_spec.out, from_flags.out);
  const Result both = Mimoctl("plan " + Example("selftest-cpu.yaml") + " --world 8");
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_THAT(both.err, HasSubstr("SPEC excludes --world"));
}

TEST(MimoctlPlanTest, InvalidSpecFilePrintsEveryFieldViolation) {
  const Result r = Mimoctl("plan " + Example("invalid-layout.yaml"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, HasSubstr("error: modules[0].parallelism.ep: module 'vision' is an encoder "
                               "and must be dense: ep=2"));
  EXPECT_THAT(r.err, HasSubstr("error: modules: rank 3 is not assigned to any module"));
}

TEST(MimoctlPlanTest, LanguageFlagNamesTheModule) {
  const Result r = Mimoctl("plan --json --world 2 --language llm --component llm=ep=2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto plan = nlohmann::json::parse(r.out);
  EXPECT_EQ(plan["ranks"][1]["expert"]["ep"], 1);
  EXPECT_EQ(plan["ranks"][1]["module"], "llm");
}

}  // namespace
