// Trainable parameters: creation, layout-independent initialization, gradient reset.
#include "mimo/parameter.h"

#include <cmath>
#include <numbers>
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
  const ParameterShard& s = spec.shard;
  if (s.full_size != 0 && (s.dim < 0 || s.dim >= static_cast<int>(spec.shape.size()) ||
                           s.offset < 0 || s.offset + spec.shape[s.dim] > s.full_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameter ", spec.name, ": shard of ", kernels::ShapeToString(spec.shape), " at offset ",
        s.offset, " of dimension ", s.dim, " lies outside the full size ", s.full_size));
  }
  return absl::OkStatus();
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
  // Element i of the shard is element (o * full + d + offset) * inner + r of the full tensor,
  // where i = (o * size + d) * inner + r along the shard's dimension of `size` elements.
  const ParameterShard& s = spec.shard;
  const int64_t size = s.full_size != 0 ? spec.shape[s.dim] : 1;
  const int64_t full = s.full_size != 0 ? s.full_size : 1;
  int64_t inner = n;
  if (s.full_size != 0) {
    inner = 1;
    for (size_t d = s.dim + 1; d < spec.shape.size(); ++d) inner *= spec.shape[d];
  }
  std::vector<float> values(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t o = i / (size * inner), d = i / inner % size, r = i % inner;
    const uint64_t g =
        static_cast<uint64_t>((o * full + d + (s.full_size != 0 ? s.offset : 0)) * inner + r);
    const PhiloxCounter bits = Philox4x32(
        {static_cast<uint32_t>(g / 2), static_cast<uint32_t>(g / 2 >> 32), 0u, 0u}, philox_key);
    const int j = static_cast<int>(g % 2);
    const double radius = std::sqrt(-2.0 * std::log(UnitInterval(bits[2 * j])));
    const double angle = 2.0 * std::numbers::pi * UnitInterval(bits[2 * j + 1]);
    values[i] = static_cast<float>(spec.std * radius * std::cos(angle));
  }
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

absl::Status Parameter::ZeroGrad(kernels::Ops& ops) const {
  return ops.SetZero(grad_.data(), grad_.nbytes());
}

}  // namespace mimo
