// The job specs the coordinator's spec tests start from: a valid 8-rank MIMO training job and the
// tensor-parallel layout whose plan the plan tests check by hand.
#pragma once

#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

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

}  // namespace mimo::coordinator::testing
