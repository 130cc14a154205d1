// DistributedOptimizer: per bucket of the gradient buffer, reduce-scatter the gradients; AdamW on
// the pieces of parameters inside this rank's shard; all-gather + unpack the weights.
#include "mimo/distributed_optimizer.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/comm_type.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

size_t ElementBytes(DType dtype) { return dtype == DType::kBF16 ? 2 : 4; }

const char* At(const void* base, int64_t elements, DType dtype) {
  return static_cast<const char*>(base) + elements * ElementBytes(dtype);
}
char* At(void* base, int64_t elements, DType dtype) {
  return static_cast<char*>(base) + elements * ElementBytes(dtype);
}

int Size(const comm::Communicator* group) { return group == nullptr ? 1 : group->size(); }
int Rank(const comm::Communicator* group) { return group == nullptr ? 0 : group->rank(); }

}  // namespace

absl::StatusOr<std::unique_ptr<DistributedOptimizer>> DistributedOptimizer::Create(
    kernels::Ops& ops, const OptimizerConfig& config, std::vector<ShardedParameterSet> sets,
    int64_t bucket_elements) {
  MIMO_RETURN_IF_ERROR(ValidateOptimizerConfig(config));
  if (bucket_elements < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("DistributedOptimizer: bucket_elements ", bucket_elements, " < 1"));
  }
  std::vector<Set> built;
  int64_t staging = 0;
  absl::flat_hash_set<const Parameter*> seen;
  for (size_t i = 0; i < sets.size(); ++i) {
    ShardedParameterSet& in = sets[i];
    Set set{.dp = in.dp, .norm_groups = std::move(in.norm_groups), .in_norm = in.in_norm};
    const int n = Size(in.dp), r = Rank(in.dp);
    if (!in.params.empty()) set.dtype = in.params[0]->weight().dtype();
    for (const Parameter* p : in.params) {
      if (!seen.insert(p).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("DistributedOptimizer: parameter ", p->name(), " is given twice"));
      }
      const bool released = p->master().data() == nullptr;
      if (p->weight().dtype() != set.dtype || released) {
        return absl::InvalidArgumentError(
            absl::StrCat("DistributedOptimizer: set ", i, ": parameter ", p->name(),
                         released ? " has no master (taken by another optimizer)"
                                  : " has a weight dtype other than the set's"));
      }
    }
    MIMO_ASSIGN_OR_RETURN(set.grads, GradientBuffer::Create(ops, in.params, bucket_elements, n));
    int64_t shard_total = 0;
    for (const GradientBucket& b : set.grads->buckets()) {
      const int64_t shard = b.padded / n;
      // This rank's part [r * shard, (r + 1) * shard) of the bucket, by parameter.
      const int64_t begin = r * shard, end = begin + shard;
      for (size_t j = 0; j < b.params.size(); ++j) {
        const int64_t lo = std::max(begin, b.offsets[j]);
        const int64_t hi = std::min(end, b.offsets[j] + b.params[j]->numel());
        if (lo >= hi) continue;
        set.pieces.push_back({.param = b.params[j],
                              .param_offset = lo - b.offsets[j],
                              .shard_offset = shard_total + lo - begin,
                              .elements = hi - lo});
      }
      const bool direct = b.params.size() == 1 && b.padded == b.params[0]->numel();
      if (n > 1 && !direct) staging = std::max(staging, b.padded);
      set.shards.push_back({.offset = shard_total, .direct = direct});
      shard_total += shard;
    }
    auto alloc = [&](DType dtype) {
      return Tensor::Empty({std::max<int64_t>(shard_total, 1)}, dtype, ops.allocator(),
                           ops.stream());
    };
    MIMO_ASSIGN_OR_RETURN(set.master, alloc(DType::kF32));
    MIMO_ASSIGN_OR_RETURN(set.m, alloc(DType::kF32));
    MIMO_ASSIGN_OR_RETURN(set.v, alloc(DType::kF32));
    if (n == 1 && shard_total > 0) {
      set.grad = set.grads->tensor();  // The bucket is the shard: summed over one rank.
    } else {
      MIMO_ASSIGN_OR_RETURN(set.grad, alloc(DType::kF32));
    }
    MIMO_ASSIGN_OR_RETURN(set.squares,
                          Tensor::Empty({1}, DType::kF32, ops.allocator(), ops.stream()));
    for (const Tensor* t : {&set.master, &set.m, &set.v, &set.grad}) {
      if (t->data() == set.grads->tensor().data()) continue;  // Zeroed already.
      MIMO_RETURN_IF_ERROR(ops.SetZero(t->data(), t->nbytes()));
    }
    if (set.dtype == DType::kF32) {
      set.weight = set.master;
    } else {
      MIMO_ASSIGN_OR_RETURN(set.weight, alloc(set.dtype));
    }
    for (const Piece& piece : set.pieces) {
      MIMO_RETURN_IF_ERROR(ops.Copy(set.master.data<float>() + piece.shard_offset,
                                    piece.param->master().data<float>() + piece.param_offset,
                                    4 * piece.elements));
    }
    built.push_back(std::move(set));
  }
  kernels::Tensor buffer;
  if (staging > 0) {
    // Big enough for a bucket of weights in the widest dtype (fp32).
    MIMO_ASSIGN_OR_RETURN(buffer,
                          Tensor::Empty({staging}, DType::kF32, ops.allocator(), ops.stream()));
  }
  // The shards hold the masters now; the copies above must finish before they are freed.
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  for (Set& set : built) {
    for (const GradientBucket& b : set.grads->buckets()) {
      for (Parameter* p : b.params) p->ReleaseMaster();
    }
  }
  return std::unique_ptr<DistributedOptimizer>(
      new DistributedOptimizer(config, std::move(built), std::move(buffer)));
}

absl::StatusOr<std::vector<DistributedOptimizer::StatePiece>> DistributedOptimizer::StatePieces()
    const {
  std::vector<StatePiece> out;
  for (const Set& set : sets_) {
    for (const Piece& p : set.pieces) {
      if (p.elements == 0) continue;
      const int64_t a = p.shard_offset, b = p.shard_offset + p.elements;
      StatePiece piece{.param = p.param,
                       .param_offset = p.param_offset,
                       .elements = p.elements,
                       .weight_dtype = set.dtype};
      MIMO_ASSIGN_OR_RETURN(piece.master, set.master.Slice(0, a, b));
      MIMO_ASSIGN_OR_RETURN(piece.exp_avg, set.m.Slice(0, a, b));
      MIMO_ASSIGN_OR_RETURN(piece.exp_avg_sq, set.v.Slice(0, a, b));
      out.push_back(std::move(piece));
    }
  }
  return out;
}

int64_t DistributedOptimizer::shard_elements() const {
  int64_t total = 0;
  for (const Set& set : sets_) {
    for (const GradientBucket& b : set.grads->buckets()) total += b.padded / Size(set.dp);
  }
  return total;
}

absl::Status DistributedOptimizer::ReduceScatterGradients(kernels::Ops& ops) {
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  for (int i = 0; i < num_sets(); ++i) {
    for (size_t j = 0; j < sets_[i].shards.size(); ++j) {
      MIMO_RETURN_IF_ERROR(ReduceScatterBucket(i, j));
    }
  }
  return absl::OkStatus();
}

absl::Status DistributedOptimizer::ReduceScatterBucket(int set_index, size_t bucket) {
  Set& set = sets_.at(set_index);
  const int n = Size(set.dp);
  if (n == 1) return absl::OkStatus();  // set.grad is the buffer.
  const GradientBucket& b = set.grads->buckets().at(bucket);
  return set.dp->ReduceScatter(set.grads->data(b),
                               set.grad.data<float>() + set.shards[bucket].offset, b.padded / n,
                               comm::DataType::kFloat32, comm::ReduceOp::kSum);
}

absl::StatusOr<float> DistributedOptimizer::SquaredGradNorm(kernels::Ops& ops) {
  float total = 0;
  for (Set& set : sets_) {
    if (set.shards.empty() || !set.in_norm) continue;
    // The padding of every bucket is zero (never written), so is its sum.
    MIMO_RETURN_IF_ERROR(ops.SumSquares({.dtype = DType::kF32,
                                         .x = set.grad.data(),
                                         .n = set.grad.numel(),
                                         .out = set.squares.data<float>()}));
    std::vector<comm::Communicator*> groups{set.dp};
    groups.insert(groups.end(), set.norm_groups.begin(), set.norm_groups.end());
    for (comm::Communicator* group : groups) {
      if (Size(group) == 1) continue;
      MIMO_RETURN_IF_ERROR(ops.Synchronize());
      MIMO_RETURN_IF_ERROR(
          group->AllReduce(set.squares.data(), 1, comm::DataType::kFloat32, comm::ReduceOp::kSum));
    }
    float squares = 0;
    MIMO_RETURN_IF_ERROR(ops.CopyToHost(&squares, set.squares.data(), sizeof(squares)));
    total += squares;
  }
  return total;
}

absl::StatusOr<OptimizerStepStats> DistributedOptimizer::Apply(kernels::Ops& ops,
                                                               double squared_norm) {
  float scale = 1.0f;
  const OptimizerStepStats stats = PlanUpdate(config_, steps_, squared_norm, scale);
  if (stats.skipped) return stats;
  steps_ = stats.step;
  for (Set& set : sets_) {
    const bool separate = set.weight.data() != set.master.data();
    for (const Piece& piece : set.pieces) {
      const int64_t at = piece.shard_offset;
      MIMO_RETURN_IF_ERROR(
          ops.AdamW({.n = piece.elements,
                     .master = set.master.data<float>() + at,
                     .m = set.m.data<float>() + at,
                     .v = set.v.data<float>() + at,
                     .grad = set.grad.data<float>() + at,
                     .grad_dtype = DType::kF32,
                     .model = separate ? At(set.weight.data(), at, set.dtype) : nullptr,
                     .model_dtype = set.dtype,
                     .lr = static_cast<float>(stats.lr),
                     .beta1 = config_.beta1,
                     .beta2 = config_.beta2,
                     .eps = config_.eps,
                     .weight_decay = piece.param->spec().weight_decay ? config_.weight_decay : 0.0f,
                     .grad_scale = scale,
                     .step = stats.step}));
    }
    const int n = Size(set.dp);
    MIMO_ASSIGN_OR_RETURN(const comm::DataType type, CommType(set.dtype));
    const std::vector<GradientBucket>& buckets = set.grads->buckets();
    for (size_t j = 0; j < buckets.size(); ++j) {
      const GradientBucket& b = buckets[j];
      const void* gathered = At(set.weight.data(), set.shards[j].offset, set.dtype);
      if (n > 1 && set.shards[j].direct) {
        MIMO_RETURN_IF_ERROR(ops.Synchronize());
        MIMO_RETURN_IF_ERROR(
            set.dp->AllGather(gathered, b.params[0]->weight().data(), b.padded / n, type));
        continue;
      }
      if (n > 1) {
        MIMO_RETURN_IF_ERROR(ops.Synchronize());
        MIMO_RETURN_IF_ERROR(set.dp->AllGather(gathered, staging_.data(), b.padded / n, type));
        gathered = staging_.data();
      }
      for (size_t k = 0; k < b.params.size(); ++k) {
        const Parameter& p = *b.params[k];
        MIMO_RETURN_IF_ERROR(ops.Copy(p.weight().data(), At(gathered, b.offsets[k], set.dtype),
                                      p.weight().nbytes()));
      }
    }
  }
  return stats;
}

}  // namespace mimo
