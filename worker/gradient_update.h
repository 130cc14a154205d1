// How a rank's gradients are summed over its replicas and its parameters updated: gradient
// buffers, the collectives started as the backward finishes their buckets, AdamW and (when asked
// for) the distributed optimizer.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "kernels/ops.h"
#include "mimo/distributed_optimizer.h"
#include "mimo/gradient_buffer.h"
#include "mimo/gradient_sync.h"
#include "mimo/optimizer.h"
#include "mimo/parameter.h"

namespace mimo::worker {

struct GradientUpdateOptions {
  OptimizerConfig optimizer;
  int64_t bucket_elements = GradientBuffer::kDefaultBucketElements;
  // Shard the sets that have replicas with the distributed optimizer; the rest get AdamW.
  bool distributed_optimizer = false;
  // Every parameter of the rank in the order the backward finishes them: the dense ones and the
  // routed experts'. Not owned.
  std::vector<Parameter*> dense, experts;
  std::vector<Parameter*> backward_order;
  // The replicas of the dense parameters and of the experts (null or one member: none).
  comm::Communicator* dp = nullptr;
  comm::Communicator* expt_dp = nullptr;
  // Groups over which the experts' squared norms are summed (ep, expt_tp).
  std::vector<comm::Communicator*> expert_norm_groups;
  // The tensor-parallel group (null or one member: none): the dense parameters split over it
  // (their ParameterSpec has shards) have their squared norms summed over it.
  comm::Communicator* tp = nullptr;
  // Dense parameters (also in `dense`) whose gradients are summed with other ranks' copies
  // after the data-parallel sums (shared word embeddings over pipeline stages): in a set of their
  // own, laid out the same on every rank that holds a copy; left out of the gradient norm with
  // `shared_in_norm` false (the copy another rank counts).
  std::vector<Parameter*> shared;
  bool shared_in_norm = true;
};

// An all-reduce in buckets and AdamW for the parameters the distributed optimizer (when asked
// for) does not shard.
struct GradientUpdate {
  // The parameters the distributed optimizer does not shard (all of them without it).
  std::unique_ptr<AdamWOptimizer> adamw;
  // Null unless asked for and a set of parameters has replicas.
  std::unique_ptr<DistributedOptimizer> distributed;
  // The distributed optimizer's set of GradientUpdateOptions::shared (-1: none, or no
  // distributed optimizer): after the sums its gradient shard is what the copies share.
  int shared_set = -1;
  // The gradients AdamW's parameters all-reduce in place (null without replicas).
  std::unique_ptr<GradientBuffer> dense_grads, expert_grads;
  // Starts every bucket's collective (all-reduce or reduce-scatter), in the order the backward
  // finishes the buckets: a bucket's turn comes when its last parameter's does. Null without
  // replicas.
  std::unique_ptr<GradientSync> sync;
  // Every gradient buffer (the distributed optimizer's and the two above), reset whole before
  // a step (GradientBuffer::Reset), and the parameters whose gradients live in none, reset one
  // by one (Parameter::ResetGrad).
  std::vector<const GradientBuffer*> buffers;
  std::vector<Parameter*> unbuffered;
};

absl::StatusOr<GradientUpdate> CreateGradientUpdate(kernels::Ops& ops,
                                                    const GradientUpdateOptions& o);

}  // namespace mimo::worker
