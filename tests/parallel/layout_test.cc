// ResolveLayout: dp/offset derivation and one test per validation message.
#include "parallel/layout.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mimo::parallel {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;

ModuleParallelism Module(std::string name, int tp, std::optional<int> dp,
                         std::optional<int> rank_offset, int cp = 1, int pp = 1, int ep = 1,
                         int etp = 1) {
  return ModuleParallelism{.name = std::move(name),
                           .tp = tp,
                           .cp = cp,
                           .pp = pp,
                           .dp = dp,
                           .ep = ep,
                           .etp = etp,
                           .rank_offset = rank_offset};
}

LayoutSpec Spec(std::optional<int> world, std::vector<ModuleParallelism> modules) {
  LayoutSpec spec;
  spec.world_size = world;
  spec.modules = std::move(modules);
  return spec;
}

// The messages of a layout that must fail.
std::vector<std::string> Errors(const LayoutSpec& spec,
                                std::vector<LayoutViolation>* out = nullptr) {
  std::vector<LayoutViolation> violations;
  absl::StatusOr<ResolvedLayout> layout = ResolveLayout(spec, &violations);
  EXPECT_FALSE(layout.ok());
  EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<std::string> messages;
  for (const LayoutViolation& v : violations) messages.push_back(v.message);
  if (out != nullptr) *out = violations;
  return messages;
}

TEST(ResolveLayoutTest, ThreeModulesAsGiven) {
  absl::StatusOr<ResolvedLayout> layout =
      ResolveLayout(Spec(8, {Module("vision", 2, 1, 0), Module("audio", 1, 2, 2),
                             Module("language", 2, 2, 4, 1, 1, /*ep=*/2)}));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->world_size, 8);
  EXPECT_EQ(layout->language_index, 2);
  ASSERT_EQ(layout->modules.size(), 3u);
  const ResolvedModule& lang = layout->modules[2];
  EXPECT_TRUE(lang.is_language);
  EXPECT_FALSE(layout->modules[0].is_language);
  EXPECT_EQ(lang.rank_offset, 4);
  EXPECT_EQ(lang.size(), 4);
  EXPECT_EQ(lang.expt_dp(), 2);
}

TEST(ResolveLayoutTest, SingleModuleDerivesDp) {
  absl::StatusOr<ResolvedLayout> layout =
      ResolveLayout(Spec(16, {Module("language", 2, std::nullopt, std::nullopt, 1, 2)}));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->modules[0].dp, 4);
  EXPECT_EQ(layout->modules[0].rank_offset, 0);
}

TEST(ResolveLayoutTest, SeveralModulesShareTheWorldInOrder) {
  absl::StatusOr<ResolvedLayout> layout = ResolveLayout(Spec(
      12, {Module("vision", 2, std::nullopt, std::nullopt), Module("audio", 1, 4, std::nullopt),
           Module("language", 4, std::nullopt, std::nullopt, 1, 1, 2)}));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->modules[0].dp, 2);
  EXPECT_EQ(layout->modules[0].rank_offset, 0);
  EXPECT_EQ(layout->modules[1].dp, 4);
  EXPECT_EQ(layout->modules[1].rank_offset, 4);
  EXPECT_EQ(layout->modules[2].dp, 1);
  EXPECT_EQ(layout->modules[2].rank_offset, 8);
}

TEST(ResolveLayoutTest, WorldDefaultsToTheSumOfRankCounts) {
  absl::StatusOr<ResolvedLayout> layout =
      ResolveLayout(Spec(std::nullopt, {Module("vision", 2, 1, 0), Module("language", 2, 2, 2)}));
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->world_size, 6);
}

TEST(ResolveLayoutTest, CustomLanguageName) {
  LayoutSpec spec = Spec(2, {Module("llm", 1, 2, 0, 1, 1, 2)});
  spec.language = "llm";
  absl::StatusOr<ResolvedLayout> layout = ResolveLayout(spec);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_TRUE(layout->modules[0].is_language);
}

TEST(ResolveLayoutTest, StatusListsEveryViolationOnItsOwnLine) {
  absl::StatusOr<ResolvedLayout> layout =
      ResolveLayout(Spec(4, {Module("vision", 3, 1, 0, 1, 1, 2), Module("language", 1, 1, 3)}));
  ASSERT_FALSE(layout.ok());
  EXPECT_EQ(layout.status().message(),
            "module 'vision' is an encoder and must be dense: ep=2 (only the language module "
            "'language' takes ep and etp)\n"
            "module 'vision': tp=3 is not a power of two");
}

TEST(ResolveLayoutTest, NoModules) {
  EXPECT_THAT(Errors(Spec(4, {})),
              ElementsAre("the layout has no modules: it needs at least the language module",
                          "no module is named 'language', the language module (name another "
                          "with --language); the modules are none"));
  EXPECT_THAT(Errors(Spec(std::nullopt, {})), testing::SizeIs(2));
}

TEST(ResolveLayoutTest, WorldSizeOutOfRange) {
  std::vector<LayoutViolation> v;
  EXPECT_THAT(Errors(Spec(0, {Module("language", 1, 1, 0)}), &v),
              ElementsAre("world_size must be in [1, 16777216], got 0"));
  EXPECT_EQ(v[0].field, "world_size");
  EXPECT_THAT(Errors(Spec(kMaxWorldSize + 1, {Module("language", 1, 1, 0)})),
              ElementsAre("world_size must be in [1, 16777216], got 16777217"));
}

TEST(ResolveLayoutTest, SeedOutOfRange) {
  LayoutSpec spec = Spec(1, {Module("language", 1, 1, 0)});
  spec.seed = -1;
  EXPECT_THAT(Errors(spec), ElementsAre("seed must be in [0, 2^62], got -1"));
}

TEST(ResolveLayoutTest, EmptyName) {
  EXPECT_THAT(Errors(Spec(2, {Module("", 1, 1, 0), Module("language", 1, 1, 1)})),
              ElementsAre("module #0 has an empty name"));
}

TEST(ResolveLayoutTest, DuplicateName) {
  EXPECT_THAT(Errors(Spec(2, {Module("language", 1, 1, 0), Module("language", 1, 1, 1)})),
              ElementsAre("module 'language' is given twice (modules #0 and #1)"));
}

TEST(ResolveLayoutTest, SizesMustBePositive) {
  std::vector<LayoutViolation> v;
  EXPECT_THAT(Errors(Spec(4, {Module("language", 0, -1, 0, 1, 1, 1, 1)}), &v),
              ElementsAre("module 'language': tp must be in [1, 16777216], got 0",
                          "module 'language': dp must be in [1, 16777216], got -1"));
  EXPECT_THAT(
      v, ElementsAre(Field(&LayoutViolation::field, "tp"), Field(&LayoutViolation::field, "dp")));
  EXPECT_THAT(v,
              ElementsAre(Field(&LayoutViolation::module, 0), Field(&LayoutViolation::module, 0)));
  EXPECT_THAT(Errors(Spec(4, {Module("language", 1, 1, 0, /*cp=*/0, /*pp=*/-3, /*ep=*/0,
                                     /*etp=*/0)})),
              ElementsAre("module 'language': cp must be in [1, 16777216], got 0",
                          "module 'language': pp must be in [1, 16777216], got -3",
                          "module 'language': ep must be in [1, 16777216], got 0",
                          "module 'language': etp must be in [1, 16777216], got 0"));
}

TEST(ResolveLayoutTest, RankOffsetMustBeNonNegative) {
  std::vector<LayoutViolation> v;
  EXPECT_THAT(Errors(Spec(1, {Module("language", 1, 1, -1)}), &v),
              ElementsAre("module 'language': rank_offset must be in [0, 16777216), got -1"));
  EXPECT_EQ(v[0].field, "rank_offset");
}

TEST(ResolveLayoutTest, LanguageModuleMissing) {
  std::vector<LayoutViolation> v;
  EXPECT_THAT(Errors(Spec(2, {Module("vision", 1, 1, 0), Module("llm", 1, 1, 1)}), &v),
              ElementsAre("no module is named 'language', the language module (name another "
                          "with --language); the modules are 'vision', 'llm'"));
  EXPECT_EQ(v[0].module, -1);
  EXPECT_EQ(v[0].field, "language");
}

TEST(ResolveLayoutTest, EncodersMustBeDense) {
  std::vector<LayoutViolation> v;
  EXPECT_THAT(
      Errors(Spec(4, {Module("vision", 1, 2, 0, 1, 1, /*ep=*/2, /*etp=*/2),
                      Module("language", 1, 2, 2)}),
             &v),
      ElementsAre("module 'vision' is an encoder and must be dense: ep=2 (only the language "
                  "module 'language' takes ep and etp)",
                  "module 'vision' is an encoder and must be dense: etp=2 (only the language "
                  "module 'language' takes ep and etp)"));
  EXPECT_EQ(v[0].field, "ep");
  EXPECT_EQ(v[1].field, "etp");
}

// Interleaved pipeline stages: the language module's, over pp > 1; resolved as given.
TEST(ResolveLayoutTest, VirtualPipelineStages) {
  ModuleParallelism vision = Module("vision", 1, 2, 0);
  ModuleParallelism language = Module("language", 1, 2, 2, 1, /*pp=*/2);
  language.vpp = 3;
  const absl::StatusOr<ResolvedLayout> ok = ResolveLayout(Spec(6, {vision, language}));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->modules[1].vpp, 3);
  EXPECT_EQ(ok->modules[0].vpp, 1);
  vision.vpp = 2;
  language.pp = 1;
  language.dp = 4;
  std::vector<LayoutViolation> v;
  EXPECT_THAT(Errors(Spec(6, {vision, language}), &v),
              ElementsAre("module 'vision' is an encoder: vpp=2 (only the language module "
                          "'language' takes interleaved pipeline stages)",
                          "module 'language': vpp=3 interleaves pipeline stages and needs pp > "
                          "1, got pp=1"));
  EXPECT_EQ(v[0].field, "vpp");
  EXPECT_EQ(v[1].field, "vpp");
  language.vpp = 0;
  vision.vpp = 1;
  EXPECT_THAT(Errors(Spec(6, {vision, language})),
              ElementsAre("module 'language': vpp must be in [1, 16777216], got 0"));
}

TEST(ResolveLayoutTest, TensorParallelMustBeAPowerOfTwo) {
  EXPECT_THAT(Errors(Spec(6, {Module("language", 6, 1, 0)})),
              ElementsAre("module 'language': tp=6 is not a power of two"));
}

TEST(ResolveLayoutTest, DenseSizeTooLarge) {
  EXPECT_THAT(Errors(Spec(8, {Module("language", 1 << 16, 1, 0, 1, 1 << 16)})),
              ElementsAre("module 'language': tp*cp*pp = 65536*1*65536 exceeds "
                          "the largest world (16777216)"));
}

TEST(ResolveLayoutTest, DpUnsetWithoutWorld) {
  EXPECT_THAT(Errors(Spec(std::nullopt, {Module("language", 2, std::nullopt, 0)})),
              ElementsAre("module 'language': dp is unset and cannot be derived without a valid "
                          "world_size"));
}

TEST(ResolveLayoutTest, SingleModuleDpNotDivisible) {
  EXPECT_THAT(Errors(Spec(10, {Module("language", 2, std::nullopt, std::nullopt, 1, 2)})),
              ElementsAre("module 'language': cannot derive dp: world_size 10 is not divisible "
                          "by tp*cp*pp = 2*1*2 = 4"));
}

TEST(ResolveLayoutTest, WorldDoesNotSplitAmongModules) {
  std::vector<LayoutViolation> v;
  EXPECT_THAT(Errors(Spec(8, {Module("vision", 1, std::nullopt, std::nullopt),
                              Module("audio", 1, std::nullopt, std::nullopt),
                              Module("language", 1, std::nullopt, std::nullopt)}),
                     &v),
              ElementsAre("cannot derive dp (unset on 'vision', 'audio', 'language'): world_size "
                          "8 does not split evenly among 3 modules"));
  EXPECT_EQ(v[0].field, "world_size");
}

TEST(ResolveLayoutTest, ShareNotDivisibleByDenseSize) {
  EXPECT_THAT(Errors(Spec(12, {Module("vision", 4, std::nullopt, std::nullopt),
                               Module("language", 2, std::nullopt, std::nullopt, 1, 1)})),
              ElementsAre("module 'vision': cannot derive dp: its share of 6 ranks (world_size "
                          "12 / 2 modules) is not divisible by tp*cp*pp = 4*1*1 = 4"));
}

TEST(ResolveLayoutTest, GivenDpDisagreesWithTheShare) {
  EXPECT_THAT(Errors(Spec(8, {Module("vision", 1, 2, std::nullopt),
                              Module("language", 1, std::nullopt, std::nullopt)})),
              ElementsAre("module 'vision': dp=2 gives 2 ranks, but with dp unset on "
                          "'language' every module gets 4 ranks (world_size 8 / 2 modules)"));
}

TEST(ResolveLayoutTest, ModulePastTheLargestWorld) {
  EXPECT_THAT(Errors(Spec(std::nullopt, {Module("language", 1, 1 << 24, 5)})),
              ElementsAre("module 'language': tp*cp*pp = 1*1*1 = 1 times dp=16777216 from "
                          "rank_offset 5 ends at rank 16777221, past the largest world "
                          "(16777216)"));
}

// Three sizes each within the largest world whose product overflows 64 bits (2^23 * 2^24 *
// 2^24): refused, not wrapped into a small world.
TEST(ResolveLayoutTest, ModelParallelSizesWhoseProductOverflows) {
  EXPECT_THAT(Errors(Spec(8, {Module("language", 1 << 23, 1, 0, 1 << 24, 1 << 24)})),
              ElementsAre("module 'language': tp*cp*pp = 8388608*16777216*16777216 exceeds the "
                          "largest world (16777216)"));
}

TEST(ResolveLayoutTest, ExpertParallelMustRefactorTheSpan) {
  std::vector<LayoutViolation> v;
  EXPECT_THAT(Errors(Spec(6, {Module("language", 2, 3, 0, 1, 1, /*ep=*/4)}), &v),
              ElementsAre("module 'language': tp*cp*dp = 2*1*3 = 6 is not divisible by etp*ep = "
                          "1*4 = 4 (expert parallelism refactors the module's ranks and never "
                          "enlarges them)"));
  EXPECT_EQ(v[0].field, "ep");
}

TEST(ResolveLayoutTest, ExpertTensorParallelAtMost100) {
  EXPECT_THAT(Errors(Spec(128, {Module("language", 128, 1, 0, 1, 1, 1, /*etp=*/128)})),
              ElementsAre("module 'language': etp=128 exceeds 100: with Megatron's expert seed "
                          "(base + 1024 + 100*ep_rank + expt_tp_rank) two expert shards would "
                          "share a seed"));
}

TEST(ResolveLayoutTest, Overlap) {
  std::vector<LayoutViolation> v;
  EXPECT_THAT(Errors(Spec(10, {Module("vision", 4, 1, 0), Module("language", 2, 4, 2)}), &v),
              ElementsAre("modules 'vision' [0,4) and 'language' [2,10) overlap on ranks 2..3"));
  EXPECT_EQ(v[0].module, 1);
  EXPECT_EQ(v[0].field, "rank_offset");
}

TEST(ResolveLayoutTest, OverlapOnOneRank) {
  EXPECT_THAT(Errors(Spec(4, {Module("language", 2, 1, 1), Module("vision", 2, 1, 0)})),
              ElementsAre("modules 'vision' [0,2) and 'language' [1,3) overlap on rank 1",
                          "the modules cover ranks [0,3) but world_size is 4: rank 3 is not "
                          "assigned to any module"));
}

TEST(ResolveLayoutTest, OverCoverage) {
  EXPECT_THAT(Errors(Spec(10, {Module("vision", 2, 1, 0), Module("language", 2, 5, 2)})),
              ElementsAre("module 'language' [2,12) extends past world_size 10 (ranks 10..11 do "
                          "not exist)"));
  EXPECT_THAT(Errors(Spec(3, {Module("language", 2, 1, 2)})),
              ElementsAre("module 'language' [2,4) extends past world_size 3 (rank 3 does not "
                          "exist)",
                          "ranks 0..1 are not assigned to any module (a gap before 'language' "
                          "[2,4))"));
}

TEST(ResolveLayoutTest, GapBetweenModules) {
  EXPECT_THAT(Errors(Spec(10, {Module("vision", 4, 1, 0), Module("language", 2, 2, 6)})),
              ElementsAre("ranks 4..5 are not assigned to any module (a gap "
                          "between 'vision' [0,4) and 'language' [6,10))"));
}

TEST(ResolveLayoutTest, GapBeforeTheFirstModule) {
  EXPECT_THAT(Errors(Spec(4, {Module("language", 2, 1, 2)})),
              ElementsAre("ranks 0..1 are not assigned to any module (a gap "
                          "before 'language' [2,4))"));
}

TEST(ResolveLayoutTest, ShortCoverage) {
  std::vector<LayoutViolation> v;
  EXPECT_THAT(Errors(Spec(10, {Module("vision", 2, 1, 0), Module("language", 2, 3, 2)}), &v),
              ElementsAre("the modules cover ranks [0,8) but world_size is 10: ranks 8..9 are "
                          "not assigned to any module"));
  EXPECT_EQ(v[0].field, "world_size");
}

TEST(ResolveLayoutTest, DataParallelSizesMustNest) {
  std::vector<LayoutViolation> v;
  EXPECT_THAT(Errors(Spec(5, {Module("vision", 1, 2, 0), Module("language", 1, 3, 2)}), &v),
              ElementsAre("modules 'vision' (dp=2) and 'language' (dp=3): neither dp divides the "
                          "other, but routing encoder activations to language data-parallel "
                          "ranks needs one to divide the other"));
  EXPECT_EQ(v[0].module, 1);
  EXPECT_EQ(v[0].field, "dp");
}

TEST(ResolveLayoutTest, EncodersDataParallelSizesNeedOnlyNestWithTheLanguageModels) {
  // vision dp 2 and audio dp 3 do not nest, but each nests with the language model's 6.
  const absl::StatusOr<ResolvedLayout> layout = ResolveLayout(
      Spec(11, {Module("vision", 1, 2, 0), Module("audio", 1, 3, 2), Module("language", 1, 6, 5)}));
  EXPECT_TRUE(layout.ok()) << layout.status();
}

TEST(ResolveLayoutTest, CollectsEveryError) {
  const std::vector<std::string> errors =
      Errors(Spec(10, {Module("vision", 2, 2, 0, 1, 1, 2), Module("language", 3, 2, 2, 1, 1, 4),
                       Module("audio", 2, 3, 7)}));
  EXPECT_EQ(errors.size(), 7u) << ::testing::PrintToString(errors);
}

}  // namespace
}  // namespace mimo::parallel
