// Shared by the trainer's data-parallel tests (CPU over Gloo, GPUs over NCCL): a small MIMO model
// with an MoE language model, a run of three steps, and the error measure.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "data/byte_tokenizer.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "worker/trainer.h"

namespace mimo::worker {

// fp32 unless `dtype` says otherwise.
inline MimoModelConfig DpTestModel(kernels::DType dtype = kernels::DType::kF32) {
  MimoModelConfig c;
  LanguageModelConfig& l = c.language;
  l.transformer.num_layers = 2;
  l.transformer.hidden_size = 16;
  l.transformer.num_attention_heads = 2;
  l.transformer.ffn_hidden_size = 32;
  l.transformer.add_bias_linear = false;
  l.transformer.dtype = dtype;
  l.vocab_size = data::ByteTokenizer::kVocabSize;
  MoeConfig m;
  m.router = {.experts = 4, .top_k = 2};
  m.aux_loss_coeff = 0.01f;
  m.align = 1;
  l.moe = m;
  TransformerConfig e;
  e.num_layers = 1;
  e.hidden_size = 8;
  e.num_attention_heads = 2;
  e.ffn_hidden_size = 16;
  e.norm = NormKind::kLayerNorm;
  e.activation = MlpActivation::kGelu;
  e.causal = false;
  e.rotary = false;
  e.dtype = dtype;
  c.vision = ModalityEncoderConfig{.input = EncoderInput::kImages,
                                   .image_size = 8,
                                   .patch_size = 4,
                                   .num_channels = 3,
                                   .transformer = e,
                                   .projector = {.kind = ProjectorKind::kMlp},
                                   .output_size = 16};
  return c;
}

struct TrainRun {
  std::vector<StepMetrics> steps;
  std::map<std::string, std::vector<float>> params;
  std::map<std::string, ParameterSpec> specs;  // Each parameter's (its shards under tp or ep).
};

// Three steps of `model` on `ops` with `options`; the parameters' values after them (copied to
// the host).
inline TrainRun TrainWith(kernels::Ops& ops, const MimoModelConfig& model,
                          const TrainerOptions& options) {
  TrainRun run;
  auto trainer = Trainer::Create(ops, model, options);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  if (!trainer.ok()) return run;
  for (int i = 0; i < 3; ++i) {
    auto m = (*trainer)->Step();
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return run;
    run.steps.push_back(*m);
  }
  EXPECT_EQ((*trainer)->position(),
            3 * ModelGroups::Size(options.dp) * options.micro_batches * options.micro_batch_size);
  std::vector<Parameter*> params;
  (*trainer)->AppendParameters(params);
  for (Parameter* p : params) {
    run.specs[p->name()] = p->spec();
    std::vector<float>& v = run.params[p->name()];
    if (p->weight().dtype() == kernels::DType::kF32) {
      v.resize(p->numel());
      EXPECT_TRUE(ops.CopyToHost(v.data(), p->weight().data(), 4 * v.size()).ok());
    } else {  // bf16 weights: their upper halves.
      std::vector<uint16_t> bits(p->numel());
      EXPECT_TRUE(ops.CopyToHost(bits.data(), p->weight().data(), 2 * bits.size()).ok());
      for (uint16_t b : bits) {
        const uint32_t word = static_cast<uint32_t>(b) << 16;
        float f;
        std::memcpy(&f, &word, 4);
        v.push_back(f);
      }
    }
  }
  return run;
}

// The data-parallel tests' options (2 samples a micro-batch, small gradient buckets).
inline TrainerOptions TestOptions(int micro_batches, comm::Communicator* dp,
                                  ModelGroups groups = {}, bool distributed_optimizer = false,
                                  comm::Communicator* expt_dp = nullptr,
                                  bool overlap_grad_reduce = true,
                                  comm::Communicator* pp = nullptr) {
  return {.micro_batch_size = 2,
          .micro_batches = micro_batches,
          .seq_length = 48,
          .data = {.num_samples = 100, .seed = 5},
          .optimizer = {.lr = 1e-3f, .warmup_steps = 1},
          .seed = 9,
          .dp = dp,
          .groups = groups,
          .expt_dp = expt_dp,
          .pp = pp,
          // Small buckets: several per step, some parameters larger.
          .bucket_elements = 3000,
          .overlap_grad_reduce = overlap_grad_reduce,
          .distributed_optimizer = distributed_optimizer};
}

// TrainWith the test options.
inline TrainRun TrainOn(kernels::Ops& ops, const MimoModelConfig& model, int micro_batches,
                        comm::Communicator* dp, ModelGroups groups = {},
                        bool distributed_optimizer = false, comm::Communicator* expt_dp = nullptr,
                        bool overlap_grad_reduce = true, comm::Communicator* pp = nullptr) {
  return TrainWith(ops, model,
                   TestOptions(micro_batches, dp, groups, distributed_optimizer, expt_dp,
                               overlap_grad_reduce, pp));
}

// A run's step metrics against a reference run's: label counts and expert loads equal; loss,
// auxiliary loss (1e-5) and gradient norm (1e-4) within relative bounds.
inline void ExpectStepsMatch(const TrainRun& got, const TrainRun& want) {
  ASSERT_EQ(got.steps.size(), want.steps.size());
  for (size_t i = 0; i < want.steps.size(); ++i) {
    const StepMetrics &g = got.steps[i], &w = want.steps[i];
    EXPECT_EQ(g.labelled, w.labelled) << "step " << i;
    EXPECT_NEAR(g.loss, w.loss, 1e-5 * w.loss) << "step " << i;
    EXPECT_NEAR(g.grad_norm, w.grad_norm, 1e-4 * w.grad_norm) << "step " << i;
    EXPECT_NEAR(g.aux_loss, w.aux_loss, 1e-5 * w.aux_loss) << "step " << i;
    EXPECT_EQ(g.expert_load, w.expert_load) << "step " << i;
  }
}

// ||got - want|| / ||want||; 1 when the sizes differ.
inline double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return 1;
  double err = 0, norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return std::sqrt(err / norm);
}

}  // namespace mimo::worker
