// Trainable parameters: creation, layout-independent initialization, gradient reset.
#include "mimo/parameter.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/bfloat16.h"
#include "common/philox.h"
#include "common/status_macros.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

// FNV-1a over the name, then SplitMix64 with the seed: the 64-bit Philox key of a parameter.
uint64_t InitKey(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  uint64_t z = seed ^ h;
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// (0, 1]: never 0, so the logarithm is finite.
double UnitInterval(uint32_t word) { return (static_cast<double>(word) + 1.0) * 0x1p-32; }

}  // namespace

absl::Status CheckParameterSpec(const ParameterSpec& spec) {
  if (spec.name.empty()) return absl::InvalidArgumentError("parameter: empty name");
  if (spec.shape.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("parameter ", spec.name, ": no dimensions"));
  }
  for (int64_t size : spec.shape) {
    if (size <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("parameter ", spec.name, ": shape ",
                                                     kernels::ShapeToString(spec.shape),
                                                     " has a non-positive size"));
    }
  }
  if (spec.init == InitKind::kNormal && !(spec.std > 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("parameter ", spec.name, ": std must be > 0, got ", spec.std));
  }
  std::vector<bool> split(spec.shape.size(), false);
  for (const ParameterShard& s : spec.shards) {
    const bool dim_ok = s.dim >= 0 && s.dim < static_cast<int>(spec.shape.size()) && !split[s.dim];
    bool inside = dim_ok;
    if (inside && !s.ranges.empty()) {
      int64_t held = 0, end = 0;  // Ranges in increasing order, none overlapping.
      for (const ShardRange& r : s.ranges) {
        inside = inside && r.size > 0 && r.start >= end && r.start + r.size <= s.full_size;
        end = r.start + r.size;
        held += r.size;
      }
      inside = inside && held == spec.shape[s.dim];
    } else if (inside) {
      inside = s.blocks >= 1 && s.full_size % s.blocks == 0 && spec.shape[s.dim] % s.blocks == 0 &&
               s.offset >= 0 && s.offset + spec.shape[s.dim] / s.blocks <= s.full_size / s.blocks;
    }
    if (!inside) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter ", spec.name, ": shard of ", kernels::ShapeToString(spec.shape), " at offset ",
          s.offset, " of dimension ", s.dim, " (", s.blocks, " blocks, ", s.ranges.size(),
          " ranges) lies outside the full size ", s.full_size, " or splits a dimension twice"));
    }
    split[s.dim] = true;
  }
  return absl::OkStatus();
}

std::vector<ShardRange> ShardRanges(const ParameterShard& shard, int64_t local_size) {
  if (!shard.ranges.empty()) return shard.ranges;
  std::vector<ShardRange> out;
  const int64_t per_block = local_size / shard.blocks, full_block = shard.full_size / shard.blocks;
  for (int64_t b = 0; b < shard.blocks; ++b) {
    out.push_back({.start = b * full_block + shard.offset, .size = per_block});
  }
  return out;
}

std::vector<float> InitialValues(const ParameterSpec& spec, uint64_t seed) {
  const int64_t n = kernels::NumElements(spec.shape);
  switch (spec.init) {
    case InitKind::kOnes:
      return std::vector<float>(n, 1.0f);
    case InitKind::kZeros:
      return std::vector<float>(n, 0.0f);
    case InitKind::kNormal:
      break;
  }
  const uint64_t key = InitKey(seed, spec.name);
  const PhiloxKey philox_key{static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)};
  // Each local coordinate along a split dimension maps to its place in the full dimension.
  const int dims = static_cast<int>(spec.shape.size());
  kernels::Shape full_shape = spec.shape;
  // Per split dimension, the full index of every local index.
  std::vector<std::vector<int64_t>> full_index(dims);
  for (const ParameterShard& s : spec.shards) {
    full_shape[s.dim] = s.full_size;
    for (const ShardRange& r : ShardRanges(s, spec.shape[s.dim])) {
      for (int64_t j = 0; j < r.size; ++j) full_index[s.dim].push_back(r.start + j);
    }
  }
  std::vector<float> values(n);
  // Elements [begin, end): each value depends on its index alone, so ranges run in parallel.
  auto fill = [&](int64_t begin, int64_t end) {
    std::vector<int64_t> at(dims, 0);  // The local multi-index of element i.
    int64_t stride = 1;
    for (int d = dims - 1; d >= 0; --d) {
      at[d] = begin / stride % spec.shape[d];
      stride *= spec.shape[d];
    }
    uint64_t block = ~uint64_t{0};  // The Philox block in `bits`.
    PhiloxCounter bits{};
    for (int64_t i = begin; i < end; ++i) {
      uint64_t g = 0;
      for (int d = 0; d < dims; ++d) {
        const int64_t coord = full_index[d].empty() ? at[d] : full_index[d][at[d]];
        g = g * static_cast<uint64_t>(full_shape[d]) + static_cast<uint64_t>(coord);
      }
      // Neighbouring elements share a Philox block: draw each block once.
      if (g / 2 != block) {
        block = g / 2;
        bits = Philox4x32(
            {static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u}, philox_key);
      }
      const int j = static_cast<int>(g % 2);
      const double radius = std::sqrt(-2.0 * std::log(UnitInterval(bits[2 * j])));
      const double angle = 2.0 * std::numbers::pi * UnitInterval(bits[2 * j + 1]);
      values[i] = static_cast<float>(spec.std * radius * std::cos(angle));
      for (int d = dims - 1; d >= 0 && ++at[d] == spec.shape[d]; --d) at[d] = 0;
    }
  };
  // Large tensors (a model's expert weights hold billions of values) on the host's cores.
  constexpr int64_t kPerThread = int64_t{1} << 22;
  const int64_t threads =
      std::clamp<int64_t>(n / kPerThread, 1, std::max(1u, std::thread::hardware_concurrency()));
  if (threads == 1) {
    fill(0, n);
    return values;
  }
  std::vector<std::thread> workers;
  for (int64_t t = 0; t < threads; ++t) {
    workers.emplace_back(fill, n * t / threads, n * (t + 1) / threads);
  }
  for (std::thread& w : workers) w.join();
  return values;
}

absl::StatusOr<std::unique_ptr<Parameter>> Parameter::Create(kernels::Ops& ops, ParameterSpec spec,
                                                             DType dtype, uint64_t seed) {
  MIMO_RETURN_IF_ERROR(CheckParameterSpec(spec));
  if (dtype != DType::kBF16 && dtype != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameter ", spec.name, ": dtype ", kernels::DTypeName(dtype), " is not bf16 or f32"));
  }
  kernels::Allocator& allocator = ops.allocator();
  MIMO_ASSIGN_OR_RETURN(Tensor master,
                        Tensor::Empty(spec.shape, DType::kF32, allocator, ops.stream()));
  MIMO_ASSIGN_OR_RETURN(Tensor grad,
                        Tensor::Empty(spec.shape, DType::kF32, allocator, ops.stream()));
  const std::vector<float> values = InitialValues(spec, seed);
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(master.data(), values.data(), master.nbytes()));
  MIMO_RETURN_IF_ERROR(ops.SetZero(grad.data(), grad.nbytes()));
  Tensor weight = master;
  if (dtype == DType::kBF16) {
    MIMO_ASSIGN_OR_RETURN(weight, Tensor::Empty(spec.shape, dtype, allocator, ops.stream()));
    std::vector<uint16_t> rounded(values.size());
    for (size_t i = 0; i < values.size(); ++i) rounded[i] = FloatToBFloat16(values[i]);
    MIMO_RETURN_IF_ERROR(ops.CopyFromHost(weight.data(), rounded.data(), weight.nbytes()));
  }
  return std::unique_ptr<Parameter>(
      new Parameter(std::move(spec), std::move(weight), std::move(master), std::move(grad)));
}

absl::StatusOr<std::unique_ptr<Parameter>> Parameter::Describe(ParameterSpec spec, DType dtype) {
  MIMO_RETURN_IF_ERROR(CheckParameterSpec(spec));
  if (dtype != DType::kBF16 && dtype != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameter ", spec.name, ": dtype ", kernels::DTypeName(dtype), " is not bf16 or f32"));
  }
  const Tensor none;
  return std::unique_ptr<Parameter>(new Parameter(std::move(spec), none, none, none));
}

absl::Status Parameter::ZeroGrad(kernels::Ops& ops) {
  grad_stale_ = false;
  return ops.SetZero(grad_.data(), grad_.nbytes());
}

absl::Status Parameter::ResetGrad(kernels::Ops& ops) {
  if (!backward_writes_whole_grad_) return ZeroGrad(ops);
  grad_stale_ = true;
  return absl::OkStatus();
}

absl::Status Parameter::ZeroGradIfStale(kernels::Ops& ops) {
  return grad_stale_ ? ZeroGrad(ops) : absl::OkStatus();
}

absl::Status Parameter::MoveGradTo(kernels::Ops& ops, kernels::Tensor storage) {
  if (storage.dtype() != kernels::DType::kF32 || storage.numel() != numel() ||
      !storage.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat("Parameter::MoveGradTo: ", name(), " needs ",
                                                   numel(), " contiguous fp32 elements, got ",
                                                   storage.ToString()));
  }
  MIMO_RETURN_IF_ERROR(ops.Copy(storage.data(), grad_.data(), grad_.nbytes()));
  MIMO_ASSIGN_OR_RETURN(grad_, storage.View(spec_.shape));
  return absl::OkStatus();
}

}  // namespace mimo
