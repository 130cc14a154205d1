// The trainer's data on CPU: a MIMO model trained on WebDataset tar shards the test writes (PNG
// and JPEG images of a coloured square in one of four corners, captions saying so, log-mel .npy
// clips on some samples) learns them; a trainer started at a data position reads on from there;
// a vocabulary the tokenizer's ids do not fit and a missing shard are refused at Create. With a
// SentencePiece model trained here on the captions (loaded from libmimo_spm_plugin.so into this
// process, which links libprotobuf) it learns them in the model's ids.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "data/byte_tokenizer.h"
#include "data/spm_processor.h"
#include "tests/data/test_files.h"
#include "worker/trainer.h"

namespace mimo::worker {
namespace {

using data::testing::TarBuilder;
using data::testing::TempDir;
using data::testing::WriteFile;
using ::testing::HasSubstr;

const char* const kColours[] = {"red", "green", "blue", "yellow"};
const uint8_t kRgb[4][3] = {{220, 30, 30}, {30, 200, 40}, {40, 60, 230}, {230, 220, 40}};
const char* const kPlaces[] = {"top left", "top right", "bottom left", "bottom right"};

// Sample i: a 24x20 image (so it is resized and cropped to 16x16), a square of colour i % 4 in
// corner (i / 4) % 4; every third sample a 12-frame clip of 8 mel bins.
std::string Caption(int i) {
  return std::string("a ") + kColours[i % 4] + " square at the " + kPlaces[(i / 4) % 4];
}

std::string Image(int i, bool jpeg) {
  const int width = 24, height = 20;
  std::vector<uint8_t> pixels(width * height * 3, 16);
  const int x0 = (i / 4) % 2 == 0 ? 2 : 14, y0 = (i / 8) % 2 == 0 ? 2 : 10;
  for (int y = y0; y < y0 + 8; ++y) {
    for (int x = x0; x < x0 + 8; ++x) {
      for (int c = 0; c < 3; ++c) pixels[(y * width + x) * 3 + c] = kRgb[i % 4][c];
    }
  }
  return jpeg ? data::testing::EncodeJpeg(width, height, 3, pixels)
              : data::testing::EncodePng(width, height, 3, pixels);
}

// Two shards of 16 samples each under `dir`; returns the brace pattern naming them.
std::string WriteShards(const TempDir& dir) {
  for (int shard = 0; shard < 2; ++shard) {
    TarBuilder tar;
    for (int j = 0; j < 16; ++j) {
      const int i = shard * 16 + j;
      const std::string key = "sample" + std::to_string(i);
      tar.File(key + (shard == 0 ? ".png" : ".jpg"), Image(i, shard == 1));
      tar.File(key + ".txt", Caption(i));
      if (i % 3 == 0) {
        std::vector<float> mel(12 * 8);
        for (size_t k = 0; k < mel.size(); ++k) mel[k] = static_cast<float>((k + i) % 5) - 2;
        tar.File(key + ".mel.npy", data::testing::MakeNpy({12, 8}, mel));
      }
    }
    WriteFile(dir.File("shard-" + std::to_string(shard) + ".tar"), tar.Finish());
  }
  return dir.File("shard-{0..1}.tar");
}

TransformerConfig Encoder() {
  TransformerConfig t;
  t.num_layers = 1;
  t.hidden_size = 16;
  t.num_attention_heads = 2;
  t.ffn_hidden_size = 32;
  t.norm = NormKind::kLayerNorm;
  t.activation = MlpActivation::kGelu;
  t.causal = false;
  t.rotary = false;
  t.dtype = kernels::DType::kF32;
  return t;
}

MimoModelConfig Model(int64_t vocab = data::ByteTokenizer::kVocabSize) {
  MimoModelConfig c;
  LanguageModelConfig& l = c.language;
  l.transformer.num_layers = 2;
  l.transformer.hidden_size = 32;
  l.transformer.num_attention_heads = 4;
  l.transformer.ffn_hidden_size = 64;
  l.transformer.add_bias_linear = false;
  l.transformer.dtype = kernels::DType::kF32;
  l.vocab_size = vocab;
  MoeConfig m;
  m.router = {.experts = 4, .top_k = 2};
  m.align = 1;
  l.moe = m;
  c.vision = ModalityEncoderConfig{.input = EncoderInput::kImages,
                                   .image_size = 16,
                                   .patch_size = 8,
                                   .num_channels = 3,
                                   .transformer = Encoder(),
                                   .projector = {.kind = ProjectorKind::kMlp},
                                   .output_size = 32};
  c.audio = ModalityEncoderConfig{.input = EncoderInput::kAudio,
                                  .num_mel_bins = 8,
                                  .frames_per_token = 4,
                                  .max_frames = 16,
                                  .transformer = Encoder(),
                                  .projector = {.kind = ProjectorKind::kLinear},
                                  .output_size = 32};
  return c;
}

TrainerOptions Options() {
  return {.micro_batch_size = 4,
          .micro_batches = 2,
          .seq_length = 64,
          .data = {.num_samples = 1000, .seed = 3},
          .optimizer = {.lr = 3e-3f, .beta2 = 0.95f, .warmup_steps = 3},
          .seed = 11};
}

// Trains `steps` steps; the mean loss of the first and of the last 3.
std::pair<double, double> Train(const MimoModelConfig& model, const TrainerOptions& options,
                                int steps) {
  auto ops = kernels::NewCpuOps();
  auto trainer = Trainer::Create(*ops, model, options);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  if (!trainer.ok()) return {0, 0};
  double first = 0, last = 0;
  for (int step = 1; step <= steps; ++step) {
    auto m = (*trainer)->Step();
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return {0, 0};
    EXPECT_GT(m->labelled, 0);
    if (step <= 3) first += m->loss / 3;
    if (step > steps - 3) last += m->loss / 3;
  }
  EXPECT_EQ((*trainer)->position(), steps * 8);
  EXPECT_EQ((*trainer)->source().num_samples(), 32);
  return {first, last};
}

TEST(TrainerDataTest, LearnsWebDatasetShards) {
  TempDir dir;
  TrainerOptions options = Options();
  options.webdataset = data::WebDatasetOptions{.shards = {WriteShards(dir)}, .seed = 5};
  const auto [first, last] = Train(Model(), options, 30);
  EXPECT_LT(last, 0.6 * first) << "first steps " << first << ", last steps " << last;
}

// A small BPE model of the captions (vocab_size 40, fewer pieces if the corpus has fewer) under
// `dir`; empty on failure.
std::string TrainSentencePiece(const TempDir& dir) {
  std::string corpus;
  for (int i = 0; i < 32; ++i) corpus += Caption(i) + "\n";
  WriteFile(dir.File("captions.txt"), corpus);
  const absl::Status s = data::TrainSpmModel(
      "--input=" + dir.File("captions.txt") + " --model_prefix=" + dir.File("spm") +
      " --vocab_size=40 --model_type=bpe --character_coverage=1.0"
      " --hard_vocab_limit=false --minloglevel=2");
  EXPECT_TRUE(s.ok()) << s;
  return s.ok() ? dir.File("spm.model") : "";
}

TEST(TrainerDataTest, LearnsWebDatasetShardsWithASentencePieceModel) {
  if (!data::SpmPluginSupported()) GTEST_SKIP() << "no SentencePiece plugin in this build";
  TempDir dir;
  TrainerOptions options = Options();
  options.webdataset = data::WebDatasetOptions{.shards = {WriteShards(dir)}, .seed = 5};
  options.tokenizer_model = TrainSentencePiece(dir);
  ASSERT_FALSE(options.tokenizer_model.empty());
  {
    // The model's ids, not the bytes: a vocabulary of 64 fits them.
    auto ops = kernels::NewCpuOps();
    auto trainer = Trainer::Create(*ops, Model(64), options);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    const data::Tokenizer& tok = (*trainer)->tokenizer();
    EXPECT_LE(tok.vocab_size(), 42);
    EXPECT_EQ(tok.audio(), tok.vocab_size() - 1);
    EXPECT_LT(tok.Encode(Caption(0)).size(), Caption(0).size());
    EXPECT_EQ(tok.Decode(tok.Encode(Caption(5))), Caption(5));
  }
  const auto [first, last] = Train(Model(64), options, 30);
  EXPECT_LT(last, 0.6 * first) << "first steps " << first << ", last steps " << last;
}

TEST(TrainerDataTest, RefusesASentencePieceModelTheVocabularyDoesNotFit) {
  if (!data::SpmPluginSupported()) GTEST_SKIP() << "no SentencePiece plugin in this build";
  TempDir dir;
  TrainerOptions options = Options();
  options.tokenizer_model = TrainSentencePiece(dir);
  ASSERT_FALSE(options.tokenizer_model.empty());
  auto ops = kernels::NewCpuOps();
  absl::Status status = Trainer::Create(*ops, Model(16), options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr(options.tokenizer_model));
  EXPECT_THAT(status.message(), HasSubstr("do not fit the language model's vocab_size 16"));
  options.tokenizer_model = dir.File("missing.model");
  status = Trainer::Create(*ops, Model(64), options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
}

TEST(TrainerDataTest, RefusesAVocabularyTheTokenizerDoesNotFit) {
  auto ops = kernels::NewCpuOps();
  const absl::Status status = Trainer::Create(*ops, Model(64), Options()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("do not fit the language model's vocab_size 64"));
}

TEST(TrainerDataTest, StartsAtTheGivenDataPosition) {
  auto ops = kernels::NewCpuOps();
  auto from_start = Trainer::Create(*ops, Model(), Options());
  ASSERT_TRUE(from_start.ok()) << from_start.status();
  std::vector<StepMetrics> steps;
  for (int i = 0; i < 3; ++i) {
    auto m = (*from_start)->Step();
    ASSERT_TRUE(m.ok()) << m.status();
    steps.push_back(*m);
  }
  TrainerOptions options = Options();
  options.start_position = 8;  // After one step of 8 samples.
  auto resumed = Trainer::Create(*ops, Model(), options);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  for (int i = 1; i < 3; ++i) {
    auto m = (*resumed)->Step();
    ASSERT_TRUE(m.ok()) << m.status();
    // The same samples: the same packed and labelled tokens, the same model FLOPs.
    EXPECT_EQ(m->tokens, steps[i].tokens) << "step " << i;
    EXPECT_EQ(m->labelled, steps[i].labelled) << "step " << i;
    EXPECT_EQ(m->model_flops, steps[i].model_flops) << "step " << i;
  }
  EXPECT_EQ((*resumed)->position(), (*from_start)->position());
  options.start_position = -1;
  EXPECT_EQ(Trainer::Create(*ops, Model(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TrainerDataTest, RefusesAMissingShard) {
  TempDir dir;
  TrainerOptions options = Options();
  options.webdataset = data::WebDatasetOptions{.shards = {dir.File("missing-{0..1}.tar")}};
  auto ops = kernels::NewCpuOps();
  const absl::Status status = Trainer::Create(*ops, Model(), options).status();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("missing-0.tar"));
}

}  // namespace
}  // namespace mimo::worker
