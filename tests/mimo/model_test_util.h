// Test helpers for mimo/ blocks: host <-> device tensors, parameters by name, and a float64
// forward of a transformer layer composed of the kernels' float64 references.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/bfloat16.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "mimo/block.h"
#include "mimo/parameter.h"
#include "mimo/transformer_config.h"
#include "tests/kernels/attention_reference.h"
#include "tests/kernels/gelu_reference.h"
#include "tests/kernels/gemm_reference.h"
#include "tests/kernels/layernorm_reference.h"
#include "tests/kernels/rmsnorm_reference.h"
#include "tests/kernels/rope_reference.h"
#include "tests/kernels/swiglu_reference.h"

namespace mimo::testing {

using namespace ::mimo::kernels::testing;  // The kernels' float64 references.

inline std::vector<float> RandomFloats(int64_t n, std::mt19937& random, float lo = -1,
                                       float hi = 1) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(random);
  return v;
}

// A new (rows, cols) tensor of `dtype` on the ops' device holding `values` (rounded to bf16).
inline kernels::Tensor Upload(kernels::Ops& ops, const std::vector<float>& values,
                              const kernels::Shape& shape, kernels::DType dtype) {
  auto t = kernels::Tensor::Empty(shape, dtype, ops.allocator(), ops.stream());
  EXPECT_TRUE(t.ok()) << t.status();
  if (dtype == kernels::DType::kBF16) {
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < values.size(); ++i) bits[i] = FloatToBFloat16(values[i]);
    EXPECT_TRUE(ops.CopyFromHost(t->data(), bits.data(), t->nbytes()).ok());
  } else {
    EXPECT_TRUE(ops.CopyFromHost(t->data(), values.data(), t->nbytes()).ok());
  }
  return *t;
}

// A new (n,) int32 tensor on the ops' device holding `values` (token ids, labels).
inline kernels::Tensor UploadInts(kernels::Ops& ops, const std::vector<int32_t>& values) {
  auto t = kernels::Tensor::Empty({static_cast<int64_t>(values.size())}, kernels::DType::kI32,
                                  ops.allocator(), ops.stream());
  EXPECT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(ops.CopyFromHost(t->data(), values.data(), t->nbytes()).ok());
  return *t;
}

// The elements of a bf16 or f32 tensor, in double.
inline std::vector<double> Download(kernels::Ops& ops, const kernels::Tensor& t) {
  std::vector<double> out(t.numel());
  if (t.dtype() == kernels::DType::kBF16) {
    std::vector<uint16_t> bits(t.numel());
    EXPECT_TRUE(ops.CopyToHost(bits.data(), t.data(), t.nbytes()).ok());
    for (size_t i = 0; i < bits.size(); ++i) out[i] = BFloat16ToFloat(bits[i]);
  } else {
    std::vector<float> f(t.numel());
    EXPECT_TRUE(ops.CopyToHost(f.data(), t.data(), t.nbytes()).ok());
    for (size_t i = 0; i < f.size(); ++i) out[i] = f[i];
  }
  return out;
}

// ||got - want|| / ||want|| (want's norm at least 1e-30).
inline double RelL2(const std::vector<double>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Expects each result within `bound` (RelL2) of its reference and keeps the worst, for the
// summary line a GPU test prints.
class RelL2Check {
 public:
  explicit RelL2Check(double bound) : bound_(bound) {}
  void operator()(const std::vector<double>& got, const std::vector<double>& want,
                  const std::string& what) {
    const double err = RelL2(got, want);
    EXPECT_LT(err, bound_) << what;
    if (err > worst_) worst_ = err, worst_name_ = what;
  }
  // "worst relative error E (NAME)".
  std::string Worst() const {
    std::ostringstream out;
    out << "worst relative error " << worst_ << " (" << worst_name_ << ")";
    return out.str();
  }

 private:
  double bound_;
  double worst_ = 0;
  std::string worst_name_;
};

// The elements of `full` (a parameter's one-rank values, row-major) that a member holding
// `spec` (its shards) holds, in its order.
inline std::vector<float> SliceOf(const std::vector<float>& full, const ParameterSpec& spec) {
  const int dims = static_cast<int>(spec.shape.size());
  kernels::Shape full_shape = spec.shape;
  std::vector<std::vector<int64_t>> index(dims);
  for (int d = 0; d < dims; ++d) {
    for (int64_t j = 0; j < spec.shape[d]; ++j) index[d].push_back(j);
  }
  for (const ParameterShard& s : spec.shards) {
    full_shape[s.dim] = s.full_size;
    index[s.dim].clear();
    for (const ShardRange& r : ShardRanges(s, spec.shape[s.dim])) {
      for (int64_t j = 0; j < r.size; ++j) index[s.dim].push_back(r.start + j);
    }
  }
  std::vector<float> out;
  std::vector<int64_t> at(dims, 0);
  for (int64_t i = 0; i < kernels::NumElements(spec.shape); ++i) {
    int64_t g = 0;
    for (int d = 0; d < dims; ++d) g = g * full_shape[d] + index[d][at[d]];
    out.push_back(full[g]);
    for (int d = dims - 1; d >= 0 && ++at[d] == spec.shape[d]; --d) at[d] = 0;
  }
  return out;
}

// Of a Block or anything else with AppendParameters (a whole model).
template <typename Model>
std::map<std::string, Parameter*> ParametersByName(const Model& block) {
  std::vector<Parameter*> params;
  block.AppendParameters(params);
  std::map<std::string, Parameter*> out;
  for (Parameter* p : params) out[p->name()] = p;
  return out;
}

// The float64 forward of TransformerLayer (without dropout) for `weights` (parameter name
// without `prefix` + "." -> fp32 master values) over x (tokens, hidden) and packed `lengths`.
inline std::vector<double> TransformerLayerFloat64(
    const TransformerConfig& c, const std::string& prefix,
    const std::map<std::string, std::vector<double>>& weights, const std::vector<double>& x,
    const std::vector<int32_t>& lengths) {
  auto w = [&](const std::string& name) -> std::vector<double> {
    auto it = weights.find(prefix + "." + name);
    return it == weights.end() ? std::vector<double>() : it->second;
  };
  const int64_t t = static_cast<int64_t>(x.size()) / c.hidden_size, C = c.hidden_size;
  const int64_t H = c.num_attention_heads, G = c.query_groups(), D = c.head_dim();
  const int64_t F = w("mlp.linear_fc2.weight").size() / C;
  auto norm = [&](const std::string& name, const std::vector<double>& in) {
    if (c.norm == NormKind::kRmsNorm) {
      return RmsNormFloat64(in, w(name + ".weight"), {}, t, C, c.norm_epsilon).y;
    }
    return LayerNormFloat64(in, w(name + ".weight"), w(name + ".bias"),
                            std::vector<double>(in.size(), 0.0), t, C, c.norm_epsilon)
        .y;
  };
  auto rows = [](const std::vector<double>& m, int64_t r0, int64_t n, int64_t width) {
    if (m.empty()) return std::vector<double>();
    return std::vector<double>(m.begin() + r0 * width, m.begin() + (r0 + n) * width);
  };
  const std::vector<double> n1 = norm("input_layernorm", x);
  const std::vector<double> wqkv = w("self_attention.linear_qkv.weight");
  const std::vector<double> bqkv = w("self_attention.linear_qkv.bias");
  std::vector<double> q =
      GemmFloat64(n1, false, rows(wqkv, 0, H * D, C), true, t, H * D, C, rows(bqkv, 0, H * D, 1));
  std::vector<double> k = GemmFloat64(n1, false, rows(wqkv, H * D, G * D, C), true, t, G * D, C,
                                      rows(bqkv, H * D, G * D, 1));
  std::vector<double> v = GemmFloat64(n1, false, rows(wqkv, (H + G) * D, G * D, C), true, t, G * D,
                                      C, rows(bqkv, (H + G) * D, G * D, 1));
  if (c.rotary) {
    const std::vector<int32_t> positions = PackedPositions(lengths);
    const int64_t rd = c.rotary_dim == 0 ? D : c.rotary_dim;
    q = RopeFloat64(q, positions, H, D, rd, c.rotary_base, false);
    k = RopeFloat64(k, positions, G, D, rd, c.rotary_base, false);
  }
  const std::vector<double> o = AttentionFloat64(q, k, v, {}, CuSeqlens(lengths), H, G, D,
                                                 1.0 / std::sqrt(static_cast<double>(D)), c.causal)
                                    .out;
  std::vector<double> h = GemmFloat64(o, false, w("self_attention.linear_proj.weight"), true, t, C,
                                      H * D, w("self_attention.linear_proj.bias"));
  for (int64_t i = 0; i < t * C; ++i) h[i] += x[i];
  const std::vector<double> n2 = norm("pre_mlp_layernorm", h);
  const std::vector<double> w1 = w("mlp.linear_fc1.weight");
  const int64_t fc1_rows = static_cast<int64_t>(w1.size()) / C;
  std::vector<double> a =
      GemmFloat64(n2, false, w1, true, t, fc1_rows, C, w("mlp.linear_fc1.bias"));
  switch (c.activation) {
    case MlpActivation::kSwiglu:
      a = SwigluFloat64(a, {}, t, F).y;
      break;
    case MlpActivation::kGelu:
      a = GeluFloat64(a);
      break;
    case MlpActivation::kGeluTanh:
      a = GeluFloat64(a, kernels::GeluApproximation::kTanh);
      break;
  }
  std::vector<double> y =
      GemmFloat64(a, false, w("mlp.linear_fc2.weight"), true, t, C, F, w("mlp.linear_fc2.bias"));
  for (int64_t i = 0; i < t * C; ++i) y[i] += h[i];
  return y;
}

}  // namespace mimo::testing
