// SentencePieceTokenizer on a model the test trains (SentencePiece's trainer on a small corpus
// in a temporary folder): its BOS and EOS, the placeholders after its pieces, text round trips,
// refusals of a model without BOS and of a missing file, PackSamples in its ids, and the error
// naming the paths tried when the plugin is missing.
#include "data/sentencepiece_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "data/micro_batch.h"
#include "data/spm_processor.h"
#include "tests/data/test_files.h"

namespace mimo::data {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;
using testing::WriteFile;

// Trains a small BPE model; `extra` adds trainer flags. Empty on failure (with the reason).
std::string Train(const TempDir& dir, const std::string& name, const std::string& extra = "") {
  std::string corpus;
  const char* colours[] = {"red", "green", "blue", "yellow", "white", "purple"};
  const char* shapes[] = {"circle", "square", "triangle", "cross"};
  const char* places[] = {"top left", "top right", "bottom left", "bottom right"};
  for (int i = 0; i < 96; ++i) {
    corpus += std::string("a ") + colours[i % 6] + " " + shapes[i % 4] + " at the " +
              places[(i / 4) % 4] + "\n";
  }
  WriteFile(dir.File("corpus.txt"), corpus);
  const std::string prefix = dir.File(name);
  if (const absl::Status s =
          TrainSpmModel("--input=" + dir.File("corpus.txt") + " --model_prefix=" + prefix +
                        " --vocab_size=48 --model_type=bpe --character_coverage=1.0"
                        " --hard_vocab_limit=false --minloglevel=2 " +
                        extra);
      !s.ok()) {
    ADD_FAILURE() << "training failed: " << s;
    return "";
  }
  return prefix + ".model";
}

// Skips where the plugin cannot be loaded by design (AddressSanitizer builds).
class SentencePieceTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!SpmPluginSupported()) GTEST_SKIP() << "no SentencePiece plugin in this build";
  }
};

TEST_F(SentencePieceTokenizerTest, LoadsATrainedModel) {
  TempDir dir;
  const std::string model = Train(dir, "m");
  ASSERT_FALSE(model.empty());
  auto t = SentencePieceTokenizer::Load(model);
  ASSERT_TRUE(t.ok()) << t.status();
  const SentencePieceTokenizer& tok = **t;
  const int32_t n = tok.num_pieces();
  EXPECT_GT(n, 10);
  EXPECT_EQ(tok.bos(), 1);  // SentencePiece's defaults: unk 0, bos 1, eos 2.
  EXPECT_EQ(tok.eos(), 2);
  EXPECT_EQ(tok.image(), n);
  EXPECT_EQ(tok.audio(), n + 1);
  EXPECT_EQ(tok.vocab_size(), n + 2);
  EXPECT_FALSE(tok.IsText(tok.bos()));
  EXPECT_FALSE(tok.IsText(tok.eos()));
  EXPECT_FALSE(tok.IsText(tok.image()));
  EXPECT_FALSE(tok.IsText(tok.audio()));
  EXPECT_FALSE(tok.IsText(-1));
  EXPECT_TRUE(tok.IsText(0));  // The unknown piece is text.

  const std::string text = "a red circle at the top left";
  const std::vector<int32_t> ids = tok.Encode(text);
  ASSERT_FALSE(ids.empty());
  EXPECT_LT(ids.size(), text.size());  // Pieces longer than a byte.
  for (const int32_t id : ids) EXPECT_TRUE(tok.IsText(id)) << id;
  std::vector<int32_t> with_specials = {tok.bos(), tok.image()};
  with_specials.insert(with_specials.end(), ids.begin(), ids.end());
  with_specials.push_back(tok.eos());
  EXPECT_EQ(tok.Decode(with_specials), text);
}

TEST_F(SentencePieceTokenizerTest, PacksSamplesInItsIds) {
  TempDir dir;
  const std::string model = Train(dir, "m");
  ASSERT_FALSE(model.empty());
  auto t = SentencePieceTokenizer::Load(model);
  ASSERT_TRUE(t.ok()) << t.status();
  const SentencePieceTokenizer& tok = **t;
  Sample s;
  s.image.assign(12, 0.0f);
  s.caption = "a blue square";
  auto b = PackSamples({s}, {.seq_length = 64, .image_tokens = 2}, tok);
  ASSERT_TRUE(b.ok()) << b.status();
  std::vector<int32_t> want = {tok.bos(), tok.image(), tok.image()};
  const std::vector<int32_t> text = tok.Encode(s.caption);
  want.insert(want.end(), text.begin(), text.end());
  want.push_back(tok.eos());
  EXPECT_EQ(b->tokens, want);
  EXPECT_EQ(b->labelled, static_cast<int64_t>(text.size()) + 1);
  EXPECT_EQ(b->labels[2], text[0]);
  EXPECT_EQ(b->labels[want.size() - 2], tok.eos());
}

TEST_F(SentencePieceTokenizerTest, RefusesModelsWithoutBosAndMissingFiles) {
  TempDir dir;
  const std::string model = Train(dir, "nobos", "--bos_id=-1");
  ASSERT_FALSE(model.empty());
  auto t = SentencePieceTokenizer::Load(model);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("no BOS"));
  EXPECT_THAT(t.status().message(), HasSubstr(model));

  EXPECT_EQ(SentencePieceTokenizer::Load(dir.File("missing.model")).status().code(),
            absl::StatusCode::kNotFound);
  WriteFile(dir.File("junk.model"), "this is not a model");
  EXPECT_EQ(SentencePieceTokenizer::Load(dir.File("junk.model")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// In a fresh process (the plugin is opened once per process): a MIMO_SPM_PLUGIN that names no
// file is the only place tried, and the error says so.
TEST_F(SentencePieceTokenizerTest, NamesThePluginPathsTriedWhenItIsMissing) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        ::setenv("MIMO_SPM_PLUGIN", "/nonexistent/libmimo_spm_plugin.so", 1);
        const absl::Status s = TrainSpmModel("--help");
        std::fprintf(stderr, "%s\n", s.ToString().c_str());
        std::exit(s.code() == absl::StatusCode::kFailedPrecondition ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "tried: /nonexistent/libmimo_spm_plugin.so \\(not found\\)");
}

}  // namespace
}  // namespace mimo::data
