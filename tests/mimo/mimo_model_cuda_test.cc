// The MIMO model's parts on the CUDA ops against the same parts on the CPU ops (themselves checked
// against float64 and central differences), fp32 and bf16 on both sides: the MoE language model
// with modality rows spliced in (loss, per-token losses, the rows' gradient, every parameter
// gradient; MoE in fp32, dense in bf16), and the vision and audio encoders (embeddings, every
// parameter gradient). Skips without a GPU.
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda_ops.h"
#include "kernels/device_info.h"
#include "mimo/language_model.h"
#include "mimo/modality_encoder.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::Download;
using testing::ParametersByName;
using testing::RandomFloats;
using testing::RelL2;
using testing::Upload;
using testing::UploadInts;

using Results = std::map<std::string, std::vector<double>>;

// MoE in fp32 only: in bf16 the two devices' roundings differ enough upstream of the second
// layer's router to flip near-tied choices, which moves whole rows of gradients (the MoE layer's
// own CUDA test compares it in bf16 on identical inputs).
LanguageModelConfig LmConfig(DType dtype) {
  LanguageModelConfig c;
  TransformerConfig& t = c.transformer;
  t.num_layers = 2;
  t.hidden_size = 128;
  t.num_attention_heads = 4;
  t.num_query_groups = 2;
  t.ffn_hidden_size = 256;
  t.add_bias_linear = false;
  t.init_std = 0.05f;
  t.dtype = dtype;
  c.vocab_size = 300;
  c.vocab_chunk = 128;
  MoeConfig m;
  m.router = {.experts = 4, .top_k = 2};
  m.aux_loss_coeff = 0.01f;
  m.z_loss_coeff = 0.001f;
  if (dtype == DType::kF32) c.moe = m;
  return c;
}

ModalityEncoderConfig EncoderConfig(EncoderInput input, DType dtype) {
  ModalityEncoderConfig c;
  c.input = input;
  c.image_size = 32;
  c.patch_size = 8;
  c.num_channels = 3;
  c.num_mel_bins = 40;
  c.frames_per_token = 4;
  c.max_frames = 64;
  TransformerConfig& t = c.transformer;
  t.num_layers = 2;
  t.hidden_size = 64;
  t.num_attention_heads = 4;
  t.ffn_hidden_size = 128;
  t.norm = NormKind::kLayerNorm;
  t.activation = MlpActivation::kGelu;
  t.causal = false;
  t.rotary = false;
  t.init_std = 0.05f;
  t.dtype = dtype;
  c.projector = {
      .kind = input == EncoderInput::kImages ? ProjectorKind::kMlp : ProjectorKind::kLinear,
      .hidden_size = 128};
  c.output_size = 128;
  return c;
}

Results RunLanguageModel(kernels::Ops& ops, DType dtype) {
  Results r;
  const LanguageModelConfig config = LmConfig(dtype);
  BuildContext build{.ops = &ops, .config = &config.transformer, .seed = 7, .prefix = "lm"};
  auto model = LanguageModel::Create(build, config);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return r;
  const std::vector<int32_t> lengths = {100, 37, 60};
  auto seqs = PackedSequences::Create(ops, lengths);
  EXPECT_TRUE(seqs.ok());
  const int64_t t = 197, m = 20;
  std::mt19937 random(3);
  std::vector<int32_t> tokens(t), labels(t), positions;
  for (int64_t i = 0; i < t; ++i) {
    tokens[i] = static_cast<int32_t>(random() % 299);
    labels[i] = i % 5 == 0 ? -1 : static_cast<int32_t>(random() % 300);
  }
  for (int64_t i = 0; i < m; ++i) positions.push_back(static_cast<int32_t>(3 + 9 * i));
  for (int32_t p : positions) tokens[p] = 299, labels[p] = -1;
  const LanguageModelBatch batch{
      .tokens = UploadInts(ops, tokens),
      .labels = UploadInts(ops, labels),
      .embeddings = Upload(ops, RandomFloats(m * 128, random), {m, 128}, dtype),
      .embedding_positions = positions};
  std::vector<AuxLossRecord> records;
  const StepContext ctx{
      .ops = &ops, .sequences = &*seqs, .loss_scale = 0.01f, .aux_losses = &records};
  auto out = (*model)->Forward(ctx, batch);
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return r;
  r["loss_sum"] = Download(ops, out->loss_sum);
  r["token_loss"] = Download(ops, out->token_loss);
  for (const AuxLossRecord& a : records) {
    r[absl::StrCat("aux", a.layer_number)] = Download(ops, a.losses);
  }
  auto demb = (*model)->Backward(ctx, std::move(out->saved), 0.02f);
  EXPECT_TRUE(demb.ok()) << demb.status();
  if (!demb.ok()) return r;
  r["dembeddings"] = Download(ops, *demb);
  for (const auto& [name, p] : ParametersByName(**model)) r[name] = Download(ops, p->grad());
  return r;
}

Results RunEncoder(kernels::Ops& ops, EncoderInput input, DType dtype) {
  Results r;
  const ModalityEncoderConfig config = EncoderConfig(input, dtype);
  BuildContext build{.ops = &ops, .config = &config.transformer, .seed = 7, .prefix = "enc"};
  auto encoder = ModalityEncoder::Create(build, config);
  EXPECT_TRUE(encoder.ok()) << encoder.status();
  if (!encoder.ok()) return r;
  std::mt19937 random(4);
  EncoderBatch batch;
  if (input == EncoderInput::kImages) {
    batch.input = Upload(ops, RandomFloats(3 * 3 * 32 * 32, random), {3, 3, 32, 32}, dtype);
  } else {
    batch.frames = {64, 32, 4};
    batch.input = Upload(ops, RandomFloats(100 * 40, random), {100, 40}, dtype);
  }
  const StepContext ctx{.ops = &ops};
  auto out = (*encoder)->Forward(ctx, batch);
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return r;
  r["embeddings"] = Download(ops, out->embeddings);
  const Tensor dy =
      Upload(ops, RandomFloats(out->embeddings.numel(), random), out->embeddings.shape(), dtype);
  EXPECT_TRUE((*encoder)->Backward(ctx, std::move(out->saved), dy).ok());
  for (const auto& [name, p] : ParametersByName(**encoder)) r[name] = Download(ops, p->grad());
  return r;
}

class MimoModelCudaTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    const kernels::CudaDevices devices = kernels::ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }
  void Compare(const Results& got, const Results& want, const std::string& what) {
    // Same dtype on both sides: fp32 within 1e-5; bf16 within 2e-2.
    const double bound = GetParam() == DType::kF32 ? 1e-5 : 2e-2;
    ASSERT_EQ(got.size(), want.size()) << what;
    double worst = 0;
    std::string worst_name;
    for (const auto& [name, w] : want) {
      const double err = RelL2(got.at(name), w);
      EXPECT_LT(err, bound) << what << " " << name;
      if (err > worst) worst = err, worst_name = name;
    }
    std::cout << what << " " << kernels::DTypeName(GetParam()) << ": worst relative error " << worst
              << " (" << worst_name << ")\n";
  }
};

TEST_P(MimoModelCudaTest, PartsMatchTheCpuParts) {
  auto cpu = kernels::NewCpuOps();
  auto gpu = kernels::NewCudaOps();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  Compare(RunLanguageModel(**gpu, GetParam()), RunLanguageModel(*cpu, GetParam()),
          "language model");
  for (const EncoderInput input : {EncoderInput::kImages, EncoderInput::kAudio}) {
    Compare(RunEncoder(**gpu, input, GetParam()), RunEncoder(*cpu, input, GetParam()),
            input == EncoderInput::kImages ? "vision encoder" : "audio encoder");
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, MimoModelCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) {
                           return std::string(kernels::DTypeName(info.param));
                         });

}  // namespace
}  // namespace mimo
