// The job specs the coordinator's spec tests start from (a valid 8-rank MIMO training job and the
// tensor-parallel layout whose plan the plan tests check by hand), the valid spec's modules by
// role, and FailingFields for specs that must fail.
#pragma once

#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "coordinator/spec_validation.h"
#include "mimo/v1/job_spec.pb.h"

namespace mimo::coordinator::testing {

// World 8: vision dp=2 on ranks 0-1, audio dp=2 on 2-3, language dp=4 ep=2 on 4-7 (TpLayoutSpec:
// vision tp=2 and language tp=2 dp=2 ep=2, a self-test).
inline constexpr char kValidSpec[] = R"pb(
  name: "mimo-cpu-8"
  kind: KIND_TRAIN
  modules {
    name: "vision"
    vision {
      image_size: 32
      patch_size: 8
      num_channels: 3
      transformer { num_layers: 2 hidden_size: 64 num_attention_heads: 4 ffn_hidden_size: 128 }
      projector { kind: KIND_MLP hidden_size: 128 }
    }
    parallelism { dp: 2 rank_offset: 0 }
  }
  modules {
    name: "audio"
    audio {
      num_mel_bins: 40
      frames_per_token: 4
      max_frames: 64
      transformer { num_layers: 2 hidden_size: 64 num_attention_heads: 4 ffn_hidden_size: 128 }
      projector { kind: KIND_LINEAR }
    }
    parallelism { dp: 2 rank_offset: 2 }
  }
  modules {
    name: "language"
    language {
      vocab_size: 256
      max_sequence_length: 256
      transformer {
        num_layers: 2
        hidden_size: 64
        num_attention_heads: 4
        num_query_groups: 2
        ffn_hidden_size: 128
      }
      moe { num_experts: 4 top_k: 2 router_score: ROUTER_SCORE_SOFTMAX aux_loss_coeff: 0.01 }
    }
    parallelism { dp: 4 ep: 2 rank_offset: 4 }
  }
  training {
    steps: 50
    global_batch_size: 8
    micro_batch_size: 2
    seq_length: 128
    packing: true
    precision: PRECISION_BF16
    seed: 1234
    optimizer {
      lr: 3e-4
      adam_beta1: 0.9
      adam_beta2: 0.95
      adam_eps: 1e-8
      clip_grad: 1.0
      warmup_steps: 5
    }
  }
  data { synthetic { num_samples: 1000 } }
  resources { workers: 8 device: DEVICE_KIND_CPU }
)pb";

inline v1::JobSpec ValidSpec() {
  v1::JobSpec spec;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(kValidSpec, &spec));
  return spec;
}

// The layout the plan tests check by hand: vision tp=2 on ranks 0-1, audio dp=2 on 2-3, language
// tp=2 dp=2 ep=2 on 4-7 (tensor parallelism: a self-test, which KIND_TRAIN does not run yet).
inline v1::JobSpec TpLayoutSpec() {
  v1::JobSpec spec = ValidSpec();
  spec.set_kind(v1::JobSpec::KIND_SELFTEST);
  spec.clear_training();
  spec.clear_data();
  spec.mutable_modules(0)->mutable_parallelism()->set_tp(2);
  spec.mutable_modules(0)->mutable_parallelism()->set_dp(1);
  spec.mutable_modules(2)->mutable_parallelism()->set_tp(2);
  spec.mutable_modules(2)->mutable_parallelism()->set_dp(2);
  return spec;
}

inline std::vector<std::string> Fields(const std::vector<FieldViolation>& violations) {
  std::vector<std::string> fields;
  for (const FieldViolation& v : violations) fields.push_back(v.field);
  return fields;
}

// The violations' field paths of a spec that must fail, checking the status on the way.
inline std::vector<std::string> FailingFields(const v1::JobSpec& spec,
                                              std::vector<FieldViolation>* out = nullptr) {
  std::vector<FieldViolation> violations;
  absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, &violations);
  EXPECT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  // The message: "invalid job spec (N problems)", then "field: description", one per line, in
  // order.
  std::vector<std::string> lines = absl::StrSplit(plan.status().message(), '\n');
  EXPECT_EQ(lines.size(), violations.size() + 1);
  EXPECT_EQ(lines[0], absl::StrCat("invalid job spec (", violations.size(), " problem",
                                   violations.size() == 1 ? ")" : "s)"));
  lines.erase(lines.begin());
  for (size_t i = 0; i < std::min(lines.size(), violations.size()); ++i) {
    EXPECT_EQ(lines[i], violations[i].field + ": " + violations[i].description);
    EXPECT_FALSE(violations[i].description.empty()) << violations[i].field;
  }
  if (out != nullptr) *out = violations;
  return Fields(violations);
}

inline v1::Module& Vision(v1::JobSpec& s) { return *s.mutable_modules(0); }
inline v1::Module& Audio(v1::JobSpec& s) { return *s.mutable_modules(1); }
inline v1::Module& Language(v1::JobSpec& s) { return *s.mutable_modules(2); }
inline v1::MoE& Moe(v1::JobSpec& s) { return *Language(s).mutable_language()->mutable_moe(); }
inline v1::Training& Train(v1::JobSpec& s) { return *s.mutable_training(); }
inline v1::Optimizer& Opt(v1::JobSpec& s) { return *s.mutable_training()->mutable_optimizer(); }

}  // namespace mimo::coordinator::testing
