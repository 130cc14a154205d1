// Self-attention over packed sequences: a fused query/key/value projection, rotary embedding,
// grouped-query attention (causal or bidirectional) and the output projection.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "mimo/block.h"
#include "mimo/build_context.h"
#include "mimo/context_attention.h"
#include "mimo/linear_weights.h"

namespace mimo {

class SelfAttention final : public Block {
 public:
  // Parameters (H heads, G query groups, D head width, C hidden):
  //   linear_qkv.weight ((H + 2G) * D, C): query rows of every head, then key rows, then value
  //   rows (Megatron interleaves them per group; checkpoint conversion maps between the two);
  //   linear_qkv.bias with add_bias_linear or add_qkv_bias;
  //   linear_proj.weight (C, H * D), std init_std / sqrt(2 * num_layers); linear_proj.bias with
  //   add_bias_linear.
  //
  // With a tensor-parallel group of n > 1 members (ctx.groups.tp), member r holds heads
  // [r H / n, (r + 1) H / n) and query groups [r G / n, (r + 1) G / n): linear_qkv is column
  // parallel (those heads' query rows, those groups' key and value rows, and their bias), and
  // linear_proj row parallel (those heads' columns; its bias whole, added by member 0 only), each
  // weight a slice of the one-rank weight with the same initial values. Sequence parallel like
  // DenseMlp: the input and output are the member's block of the rows (T / n, C), gathered
  // before linear_qkv and reduce-scattered after linear_proj (the input is kept as the member's
  // rows and gathered again in the backward, as Megatron does). InvalidArgument when n does not
  // divide H and G.
  //
  // With a context-parallel group (ctx.groups.cp of n > 1 members), one of two kinds by the
  // StepContext's sequences:
  // - split over the group (PackedSequences::CreateSplit; the language model): the attention
  //   itself runs as ring attention (mimo/context_attention.h); the projections and RoPE (at the
  //   tokens' positions in their whole sequences) work on the rank's rows alone;
  // - whole, the rows (after tp's gather) member r's equal block r (the encoders, whose
  //   bidirectional attention would see a split's padding): all-to-all attention
  //   (mimo/head_exchange.h): each member projects its rows for every head share, trades them
  //   for the whole rows of share r (heads [r Hs, (r + 1) Hs), Hs = H / tp / n, and groups
  //   alike) and attends over whole sequences, then trades the outputs back for linear_proj.
  //   InvalidArgument at the forward unless n divides the member's heads and groups.
  static absl::StatusOr<std::unique_ptr<SelfAttention>> Create(const BuildContext& ctx);

  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const kernels::Tensor& x) override;
  absl::StatusOr<kernels::Tensor> Backward(const StepContext& ctx,
                                           std::unique_ptr<SavedActivations> saved,
                                           const kernels::Tensor& dy) override;
  void AppendParameters(std::vector<Parameter*>& out) const override;

 private:
  SelfAttention(const TransformerConfig& config, comm::Communicator* tp, comm::Communicator* cp,
                LinearWeights qkv, LinearWeights proj);

  // What this member attends with over `seqs`, from R rows (after tp's gather).
  struct Heads {
    int64_t heads = 0, groups = 0;  // Hs and Gs.
    int shares = 1;                 // cp with all-to-all attention, else 1.
    bool ring = false;              // Ring attention (split sequences).
  };
  absl::StatusOr<Heads> HeadsFor(const PackedSequences& seqs, int64_t rows) const;
  // RoPE (or its backward) in place on q (T, Hs * D) and k (T, Gs * D), when the layer uses it.
  absl::Status ApplyRope(const StepContext& ctx, const Heads& a, kernels::Tensor& q,
                         kernels::Tensor& k, bool backward) const;
  // The layer's context-parallel group, checked against how `seqs` are split.
  absl::StatusOr<comm::Communicator*> ContextGroup(const PackedSequences& seqs) const;
  ContextAttentionShape ContextShape() const;

  const TransformerConfig config_;
  comm::Communicator* const tp_;             // Null: no tensor parallelism. Not owned.
  comm::Communicator* const cp_;             // Null: no context parallelism. Not owned.
  const int64_t heads_, groups_, head_dim_;  // This member's heads and groups.
  LinearWeights qkv_;
  LinearWeights proj_;
};

}  // namespace mimo
