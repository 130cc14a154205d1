// Helpers of the tests that split blocks over ranks (tensor, context parallelism) and compare
// them with one rank: tensors to the host, row ranges, relative L2 errors, parameters whose
// ones-and-zeros initial values are replaced by values drawn from their whole tensor, and runs of
// a block's, the language model's or a modality encoder's forward and backward.
#pragma once

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"
#include "mimo/language_model.h"
#include "mimo/modality_encoder.h"
#include "mimo/packed_sequences.h"
#include "mimo/parameter.h"
#include "parallel/context_split.h"
#include "tests/mimo/model_test_util.h"

namespace mimo::testing {

// The tokens (indices in the whole packed batch) member `rank` of a context-parallel group of `cp`
// holds: chunks rank and 2 cp - 1 - rank of every sequence.
inline std::vector<int64_t> TokensOf(const std::vector<int32_t>& lengths, int cp, int rank) {
  auto runs = parallel::ContextSplitRuns(lengths, cp, rank);
  EXPECT_TRUE(runs.ok()) << runs.status();
  return runs.ok() ? parallel::GlobalTokensOf(*runs) : std::vector<int64_t>{};
}

// Rows `tokens` of a (rows, width) matrix.
template <typename T>
std::vector<T> Gather(const std::vector<T>& m, int64_t width, const std::vector<int64_t>& tokens) {
  std::vector<T> out;
  for (int64_t t : tokens)
    out.insert(out.end(), m.begin() + t * width, m.begin() + (t + 1) * width);
  return out;
}

// An fp32 tensor's values.
inline std::vector<float> Host(kernels::Ops& ops, const kernels::Tensor& t) {
  std::vector<float> v(t.numel());
  EXPECT_TRUE(ops.CopyToHost(v.data(), t.data(), 4 * v.size()).ok());
  return v;
}

// Rows [r0, r0 + n) of a row-major (rows, cols) matrix.
inline std::vector<float> Rows(const std::vector<float>& m, int64_t cols, int64_t r0, int64_t n) {
  return {m.begin() + r0 * cols, m.begin() + (r0 + n) * cols};
}

// ||got - want|| / ||want|| (the absolute norm when want is 0).
inline double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double err = 0, norm = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return norm > 0 ? std::sqrt(err / norm) : std::sqrt(err);
}

// Norm weights and biases start at ones and zeros, which would hide a bias added twice: every
// such parameter gets values drawn for its whole tensor from its name, and its slice of them.
inline void Perturb(kernels::Ops& ops, Parameter& p) {
  if (p.spec().init == InitKind::kNormal) return;
  kernels::Shape full_shape = p.spec().shape;
  for (const ParameterShard& s : p.spec().shards) full_shape[s.dim] = s.full_size;
  std::mt19937 random(static_cast<uint32_t>(std::hash<std::string>()(p.name())));
  const std::vector<float> full =
      RandomFloats(kernels::NumElements(full_shape), random, 0.5f, 1.5f);
  const std::vector<float> mine = SliceOf(full, p.spec());
  ASSERT_EQ(p.weight().data(), p.master().data());  // fp32: one tensor.
  ASSERT_TRUE(ops.CopyFromHost(p.weight().data(), mine.data(), 4 * mine.size()).ok());
}

// A parameter's spec, values and gradient, on the host.
struct Param {
  ParameterSpec spec;
  std::vector<float> weight, grad;
};

constexpr int64_t kHidden = 16;  // The hidden width of the blocks these tests build.

// How a run lays out the micro-batch: the sequences' lengths and, with context parallelism,
// which member of how many this rank is (its rows are PackedSequences::CreateSplit's).
struct SequencesSpec {
  std::vector<int32_t> lengths;
  int context_size = 1;
  int context_rank = 0;
};

inline PackedSequences MakeSequences(kernels::Ops& ops, const SequencesSpec& s) {
  auto seqs = PackedSequences::CreateSplit(ops, s.lengths, s.context_size, s.context_rank);
  EXPECT_TRUE(seqs.ok()) << seqs.status();
  return seqs.ok() ? *std::move(seqs) : PackedSequences();
}

struct Result {
  std::vector<float> y, dx;
  std::vector<float> aux;  // Each MoE layer's (load-balancing, z) losses.
  std::map<std::string, Param> params;
};

using BlockFactory =
    std::function<absl::StatusOr<std::unique_ptr<Block>>(const BuildContext& build)>;

// Builds a block on `ops` with `groups`, runs its forward on x (rows, C) and its backward on dy.
inline Result Run(kernels::Ops& ops, const TransformerConfig& config, ModelGroups groups,
                  const BlockFactory& factory, const SequencesSpec& sequences,
                  const std::vector<float>& x, const std::vector<float>& dy, int64_t rows) {
  Result r;
  BuildContext build{.ops = &ops, .config = &config, .seed = 5, .prefix = "b", .groups = groups};
  auto block = factory(build);
  EXPECT_TRUE(block.ok()) << block.status();
  if (!block.ok()) return r;
  std::vector<Parameter*> params;
  (*block)->AppendParameters(params);
  for (Parameter* p : params) Perturb(ops, *p);
  const PackedSequences seqs = MakeSequences(ops, sequences);
  std::vector<AuxLossRecord> aux;
  const StepContext ctx{
      .ops = &ops, .sequences = &seqs, .dropout_seed = 77, .dropout_offset = 3, .aux_losses = &aux};
  auto out = (*block)->Forward(ctx, Upload(ops, x, {rows, kHidden}, config.dtype));
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return r;
  r.y = Host(ops, out->y);
  for (const AuxLossRecord& a : aux) {
    const std::vector<float> pair = Host(ops, a.losses);
    r.aux.insert(r.aux.end(), pair.begin(), pair.end());
  }
  auto dx = (*block)->Backward(ctx, std::move(out->saved),
                               Upload(ops, dy, {rows, kHidden}, config.dtype));
  EXPECT_TRUE(dx.ok()) << dx.status();
  if (!dx.ok()) return r;
  r.dx = Host(ops, *dx);
  for (Parameter* p : params) {
    r.params[p->name()] = {p->spec(), Host(ops, p->weight()), Host(ops, p->grad())};
  }
  return r;
}

// The language model: vocabulary-parallel embedding and output layer around tensor + sequence
// parallel layers, modality rows spliced over placeholders, packed sequences, unlabelled tokens.
struct LmResult {
  std::vector<float> token_loss, loss_sum, dembeddings;
  std::map<std::string, Param> params;
};

// tokens, labels: this rank's rows; positions: of the modality rows, in them (-1: elsewhere).
inline LmResult RunLm(kernels::Ops& ops, const LanguageModelConfig& config, ModelGroups groups,
                      const SequencesSpec& sequences, const std::vector<int32_t>& tokens,
                      const std::vector<int32_t>& labels, const std::vector<float>& embeddings,
                      const std::vector<int32_t>& positions) {
  LmResult r;
  BuildContext build{
      .ops = &ops, .config = &config.transformer, .seed = 8, .prefix = "lm", .groups = groups};
  auto lm = LanguageModel::Create(build, config);
  EXPECT_TRUE(lm.ok()) << lm.status();
  if (!lm.ok()) return r;
  std::vector<Parameter*> params;
  (*lm)->AppendParameters(params);
  for (Parameter* p : params) Perturb(ops, *p);
  const PackedSequences seqs = MakeSequences(ops, sequences);
  const StepContext ctx{.ops = &ops, .sequences = &seqs};
  const int64_t m = static_cast<int64_t>(positions.size());
  LanguageModelBatch batch{
      .tokens = UploadInts(ops, tokens),
      .labels = UploadInts(ops, labels),
      .embeddings = Upload(ops, embeddings, {m, kHidden}, kernels::DType::kF32),
      .embedding_positions = positions};
  auto out = (*lm)->Forward(ctx, batch);
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return r;
  r.token_loss = Host(ops, out->token_loss);
  r.loss_sum = Host(ops, out->loss_sum);
  auto demb = (*lm)->Backward(ctx, std::move(out->saved), 0.25f);
  EXPECT_TRUE(demb.ok()) << demb.status();
  if (!demb.ok()) return r;
  r.dembeddings = Host(ops, *demb);
  for (Parameter* p : params) {
    r.params[p->name()] = {p->spec(), Host(ops, p->weight()), Host(ops, p->grad())};
  }
  return r;
}

// The encoder cases of the split tests: images (3 of 4 x 4 pixels in patches of 2: 12 rows) or
// audio clips of 6 + 4 frames of 3 mel bins, two frames a token (3 + 2 rows); `transformer` made
// bidirectional, without RoPE, with hidden dropout 0.1; outputs of width 6 (an MLP projector of
// width 5 for images, a linear one for audio).
struct EncoderCase {
  ModalityEncoderConfig config;
  kernels::Shape shape;         // Of the input.
  std::vector<int32_t> frames;  // Audio: each clip's frames.
  int64_t rows = 0;             // The embeddings' rows.
};

inline EncoderCase SmallEncoderCase(EncoderInput input, TransformerConfig transformer) {
  const bool images = input == EncoderInput::kImages;
  transformer.causal = false;
  transformer.rotary = false;
  transformer.hidden_dropout = 0.1f;
  return {.config = {.input = input,
                     .image_size = 4,
                     .patch_size = 2,
                     .num_channels = 3,
                     .num_mel_bins = 3,
                     .frames_per_token = 2,
                     .max_frames = 8,
                     .transformer = transformer,
                     .projector = {.kind = images ? ProjectorKind::kMlp : ProjectorKind::kLinear,
                                   .hidden_size = 5},
                     .output_size = 6},
          .shape = images ? kernels::Shape{3, 3, 4, 4} : kernels::Shape{10, 3},
          .frames = images ? std::vector<int32_t>{} : std::vector<int32_t>{6, 4},
          .rows = images ? 12 : 5};
}

// A modality encoder's embeddings from `input` (frames: audio samples' frames), and its
// parameters' weights and gradients after the backward of `dembeddings`; dropout seed 3.
struct EncoderResult {
  std::vector<float> embeddings;
  std::map<std::string, Param> params;
};

inline EncoderResult RunEncoder(kernels::Ops& ops, const ModalityEncoderConfig& config,
                                ModelGroups groups, const std::vector<float>& input,
                                const kernels::Shape& shape, const std::vector<int32_t>& frames,
                                const std::vector<float>& dembeddings) {
  EncoderResult r;
  BuildContext build{
      .ops = &ops, .config = &config.transformer, .seed = 6, .prefix = "enc", .groups = groups};
  auto encoder = ModalityEncoder::Create(build, config);
  EXPECT_TRUE(encoder.ok()) << encoder.status();
  if (!encoder.ok()) return r;
  std::vector<Parameter*> params;
  (*encoder)->AppendParameters(params);
  for (Parameter* p : params) Perturb(ops, *p);
  const StepContext ctx{.ops = &ops, .dropout_seed = 3};
  const EncoderBatch batch{.input = Upload(ops, input, shape, kernels::DType::kF32),
                           .frames = frames};
  auto out = (*encoder)->Forward(ctx, batch);
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return r;
  r.embeddings = Host(ops, out->embeddings);
  const int64_t rows = out->embeddings.size(0);
  EXPECT_TRUE(
      (*encoder)
          ->Backward(ctx, std::move(out->saved),
                     Upload(ops, dembeddings, {rows, config.output_size}, kernels::DType::kF32))
          .ok());
  for (Parameter* p : params) {
    r.params[p->name()] = {p->spec(), Host(ops, p->weight()), Host(ops, p->grad())};
  }
  return r;
}

}  // namespace mimo::testing
