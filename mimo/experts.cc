// SequentialExperts: fc1 GEMM per expert, the activation over all rows at once, fc2 GEMM per
// expert; the backward in reverse. DenseSharedExpertsBuilder: a DenseMlp.
#include "mimo/experts.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/dense_mlp.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

struct ExpertsSaved final : SavedActivations {
  std::vector<int32_t> offsets;  // (El + 1,) on the host.
  Tensor x;                      // (R, C)
  Tensor h1;                     // (R, F1) fc1 output.
  Tensor a;                      // (R, F) activation.
};

// How the experts' GELU is computed (SwiGLU has its own op).
kernels::GeluApproximation GeluOf(MlpActivation activation) {
  return activation == MlpActivation::kGelu ? kernels::GeluApproximation::kNone
                                            : kernels::GeluApproximation::kTanh;
}

class SequentialExperts final : public Experts {
 public:
  SequentialExperts(const TransformerConfig& config, const LocalExperts& experts,
                    std::unique_ptr<Parameter> fc1, std::unique_ptr<Parameter> fc2)
      : config_(config),
        experts_(experts),
        f_(experts.local_ffn()),
        f1_(fc1->spec().shape[1]),
        fc1_(std::move(fc1)),
        fc2_(std::move(fc2)) {}

  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const Tensor& x,
                                      absl::Span<const int32_t> offsets) override {
    MIMO_RETURN_IF_ERROR(CheckActivation(x, config_.hidden_size, config_.dtype, "Experts"));
    const int64_t el = experts_.count, c = config_.hidden_size, f = f_;
    if (static_cast<int64_t>(offsets.size()) != el + 1 || offsets[0] != 0 ||
        offsets[el] > x.size(0)) {
      return absl::InvalidArgumentError(absl::StrCat("Experts: needs ", el + 1,
                                                     " offsets from 0 to at most ", x.size(0),
                                                     " rows, got ", offsets.size()));
    }
    for (int64_t i = 0; i < el; ++i) {
      if (offsets[i + 1] < offsets[i]) {
        return absl::InvalidArgumentError("Experts: offsets decrease");
      }
    }
    kernels::Ops& ops = *ctx.ops;
    const int64_t rows = x.size(0), used = offsets[el];
    auto saved = std::make_unique<ExpertsSaved>();
    saved->offsets.assign(offsets.begin(), offsets.end());
    saved->x = x;
    MIMO_ASSIGN_OR_RETURN(saved->h1, NewTensor(ctx, {rows, f1_}, x.dtype()));
    MIMO_ASSIGN_OR_RETURN(saved->a, NewTensor(ctx, {rows, f}, x.dtype()));
    MIMO_ASSIGN_OR_RETURN(Tensor h, NewTensor(ctx, {rows, c}, x.dtype()));
    for (int64_t i = 0; i < el; ++i) {
      const int64_t n = offsets[i + 1] - offsets[i];
      if (n == 0) continue;
      MIMO_RETURN_IF_ERROR(ops.Linear({.dtype = x.dtype(),
                                       .x = RowAt(x, offsets[i], c),
                                       .w = RowAt(fc1_->weight(), i * f1_, c),
                                       .y = RowAt(saved->h1, offsets[i], f1_),
                                       .tokens = n,
                                       .in = c,
                                       .out = f1_}));
    }
    if (used > 0) {
      if (config_.activation == MlpActivation::kSwiglu) {
        MIMO_RETURN_IF_ERROR(ops.Swiglu({.dtype = x.dtype(),
                                         .x = saved->h1.data(),
                                         .y = saved->a.data(),
                                         .rows = used,
                                         .cols = f}));
      } else {
        MIMO_RETURN_IF_ERROR(ops.Gelu({.dtype = x.dtype(),
                                       .x = saved->h1.data(),
                                       .y = saved->a.data(),
                                       .n = used * f,
                                       .approximation = GeluOf(config_.activation)}));
      }
    }
    for (int64_t i = 0; i < el; ++i) {
      const int64_t n = offsets[i + 1] - offsets[i];
      if (n == 0) continue;
      MIMO_RETURN_IF_ERROR(ops.Linear({.dtype = x.dtype(),
                                       .x = RowAt(saved->a, offsets[i], f),
                                       .w = RowAt(fc2_->weight(), i * c, f),
                                       .y = RowAt(h, offsets[i], c),
                                       .tokens = n,
                                       .in = f,
                                       .out = c}));
    }
    return BlockOutput{std::move(h), std::move(saved)};
  }

  absl::StatusOr<Tensor> Backward(const StepContext& ctx,
                                  std::unique_ptr<SavedActivations> saved_base,
                                  const Tensor& dh) override {
    MIMO_ASSIGN_OR_RETURN(auto saved, SavedAs<ExpertsSaved>(std::move(saved_base), "Experts"));
    MIMO_RETURN_IF_ERROR(CheckSameShape(dh, saved->x, "Experts backward"));
    kernels::Ops& ops = *ctx.ops;
    const std::vector<int32_t>& off = saved->offsets;
    const int64_t el = experts_.count, c = config_.hidden_size, f = f_;
    const int64_t rows = dh.size(0), used = off[el];
    MIMO_ASSIGN_OR_RETURN(Tensor da, NewTensor(ctx, {rows, f}, dh.dtype()));
    MIMO_ASSIGN_OR_RETURN(Tensor dh1, NewTensor(ctx, {rows, f1_}, dh.dtype()));
    MIMO_ASSIGN_OR_RETURN(Tensor dx, NewTensor(ctx, {rows, c}, dh.dtype()));
    for (int64_t i = 0; i < el; ++i) {
      const int64_t n = off[i + 1] - off[i];
      if (n == 0) continue;
      MIMO_RETURN_IF_ERROR(
          ops.LinearBackward({.dtype = dh.dtype(),
                              .dy = RowAt(dh, off[i], c),
                              .x = RowAt(saved->a, off[i], f),
                              .w = RowAt(fc2_->weight(), i * c, f),
                              .dx = RowAt(da, off[i], f),
                              .dw = static_cast<float*>(RowAt(fc2_->grad(), i * c, f)),
                              .accumulate = true,
                              .tokens = n,
                              .in = f,
                              .out = c}));
    }
    if (used > 0) {
      if (config_.activation == MlpActivation::kSwiglu) {
        MIMO_RETURN_IF_ERROR(ops.SwigluBackward({.dtype = dh.dtype(),
                                                 .dy = da.data(),
                                                 .x = saved->h1.data(),
                                                 .dx = dh1.data(),
                                                 .rows = used,
                                                 .cols = f}));
      } else {
        MIMO_RETURN_IF_ERROR(ops.GeluBackward({.dtype = dh.dtype(),
                                               .dy = da.data(),
                                               .x = saved->h1.data(),
                                               .dx = dh1.data(),
                                               .n = used * f,
                                               .approximation = GeluOf(config_.activation)}));
      }
    }
    for (int64_t i = 0; i < el; ++i) {
      const int64_t n = off[i + 1] - off[i];
      if (n == 0) continue;
      MIMO_RETURN_IF_ERROR(
          ops.LinearBackward({.dtype = dh.dtype(),
                              .dy = RowAt(dh1, off[i], f1_),
                              .x = RowAt(saved->x, off[i], c),
                              .w = RowAt(fc1_->weight(), i * f1_, c),
                              .dx = RowAt(dx, off[i], c),
                              .dw = static_cast<float*>(RowAt(fc1_->grad(), i * f1_, c)),
                              .accumulate = true,
                              .tokens = n,
                              .in = c,
                              .out = f1_}));
    }
    return dx;
  }

  void AppendParameters(std::vector<Parameter*>& out) const override {
    out.push_back(fc1_.get());
    out.push_back(fc2_.get());
  }

 private:
  const TransformerConfig config_;
  const LocalExperts experts_;
  const int64_t f_;                 // Fl
  const int64_t f1_;                // Fl1
  std::unique_ptr<Parameter> fc1_;  // (El, Fl1, C)
  std::unique_ptr<Parameter> fc2_;  // (El, C, Fl)
};

}  // namespace

absl::StatusOr<std::unique_ptr<Experts>> SequentialExpertsBuilder::Build(
    const BuildContext& ctx, const LocalExperts& experts) const {
  const TransformerConfig& c = *ctx.config;
  if (experts.count < 1 || experts.ffn < 1 || experts.first < 0 ||
      experts.first + experts.count > experts.total || experts.ffn_parts < 1 ||
      experts.ffn % experts.ffn_parts != 0 || experts.ffn_part < 0 ||
      experts.ffn_part >= experts.ffn_parts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SequentialExperts: experts [", experts.first, ", ", experts.first + experts.count, ") of ",
        experts.total, ", part ", experts.ffn_part, " of ", experts.ffn_parts, " of width ",
        experts.ffn, " do not make a shard"));
  }
  const bool swiglu = c.activation == MlpActivation::kSwiglu;
  const int64_t el = experts.count, f = experts.local_ffn();
  const ParameterShard rows{.dim = 0, .offset = experts.first, .full_size = experts.total};
  MIMO_ASSIGN_OR_RETURN(auto fc1,
                        ctx.Child("linear_fc1")
                            .NewParameter("weight", {el, swiglu ? 2 * f : f, c.hidden_size},
                                          InitKind::kNormal, c.init_std, true,
                                          {rows,
                                           {.dim = 1,
                                            .offset = experts.ffn_part * f,
                                            .full_size = swiglu ? 2 * experts.ffn : experts.ffn,
                                            .blocks = swiglu ? 2 : 1}}));
  MIMO_ASSIGN_OR_RETURN(
      auto fc2,
      ctx.Child("linear_fc2")
          .NewParameter(
              "weight", {el, c.hidden_size, f}, InitKind::kNormal,
              c.init_std / std::sqrt(2.0f * static_cast<float>(c.num_layers)), true,
              {rows, {.dim = 2, .offset = experts.ffn_part * f, .full_size = experts.ffn}}));
  return std::unique_ptr<Experts>(
      new SequentialExperts(c, experts, std::move(fc1), std::move(fc2)));
}

absl::StatusOr<std::unique_ptr<Block>> DenseSharedExpertsBuilder::Build(const BuildContext& ctx,
                                                                        int64_t ffn) const {
  MIMO_ASSIGN_OR_RETURN(auto mlp, DenseMlp::Create(ctx, ffn));
  return std::unique_ptr<Block>(std::move(mlp));
}

}  // namespace mimo
