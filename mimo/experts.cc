// The routed experts' MLP with its projections as batches of per-expert GEMMs
// (SequentialExpertsBuilder) or grouped GEMMs over device offsets (GroupedExpertsBuilder), the
// activation over all rows at once; the backward in reverse. DenseSharedExpertsBuilder: a DenseMlp.
#include "mimo/experts.h"

#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "mimo/dense_mlp.h"
#include "mimo/tensor_checks.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::GroupedGemmMode;
using kernels::Tensor;

struct ExpertsSaved final : SavedActivations {
  ExpertRowOffsets offsets;
  Tensor x;   // (R, C)
  Tensor h1;  // (R, F1) fc1 output.
  Tensor a;   // (R, F) activation.
};

// How the experts' GELU is computed (SwiGLU has its own op).
kernels::GeluApproximation GeluOf(MlpActivation activation) {
  return activation == MlpActivation::kGelu ? kernels::GeluApproximation::kNone
                                            : kernels::GeluApproximation::kTanh;
}

// One projection of every local expert: w (El, out, in), x (R, in) -> y (R, out).
struct Projection {
  Parameter* w;
  int64_t in, out;
};

class ExpertsMlp final : public Experts {
 public:
  ExpertsMlp(const TransformerConfig& config, const LocalExperts& experts, bool grouped,
             std::unique_ptr<Parameter> fc1, std::unique_ptr<Parameter> fc2)
      : config_(config),
        experts_(experts),
        grouped_(grouped),
        f_(experts.local_ffn()),
        f1_(fc1->spec().shape[1]),
        fc1_(std::move(fc1)),
        fc2_(std::move(fc2)) {
    // ProjectBackward writes every local expert's gradient, those without rows included.
    fc1_->set_backward_writes_whole_grad();
    fc2_->set_backward_writes_whole_grad();
  }

  absl::StatusOr<BlockOutput> Forward(const StepContext& ctx, const Tensor& x,
                                      const ExpertRowOffsets& offsets) override {
    MIMO_RETURN_IF_ERROR(CheckActivation(x, config_.hidden_size, config_.dtype, "Experts"));
    MIMO_RETURN_IF_ERROR(CheckOffsets(offsets, x.size(0)));
    const int64_t c = config_.hidden_size, f = f_;
    kernels::Ops& ops = *ctx.ops;
    const int64_t rows = x.size(0);
    // Grouped, the activation runs over every row: the host does not know how many are used.
    const int64_t used = grouped_ ? rows : offsets.host[experts_.count];
    auto saved = std::make_unique<ExpertsSaved>();
    saved->offsets = offsets;
    saved->x = x;
    MIMO_ASSIGN_OR_RETURN(saved->h1, NewTensor(ctx, {rows, f1_}, x.dtype()));
    MIMO_ASSIGN_OR_RETURN(saved->a, NewTensor(ctx, {rows, f}, x.dtype()));
    MIMO_ASSIGN_OR_RETURN(Tensor h, NewTensor(ctx, {rows, c}, x.dtype()));
    MIMO_RETURN_IF_ERROR(Project(ops, offsets, {fc1_.get(), c, f1_}, x, saved->h1));
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
    MIMO_RETURN_IF_ERROR(Project(ops, offsets, {fc2_.get(), f, c}, saved->a, h));
    return BlockOutput{std::move(h), std::move(saved)};
  }

  absl::StatusOr<Tensor> Backward(const StepContext& ctx,
                                  std::unique_ptr<SavedActivations> saved_base,
                                  const Tensor& dh) override {
    MIMO_ASSIGN_OR_RETURN(auto saved, SavedAs<ExpertsSaved>(std::move(saved_base), "Experts"));
    MIMO_RETURN_IF_ERROR(CheckSameShape(dh, saved->x, "Experts backward"));
    kernels::Ops& ops = *ctx.ops;
    const ExpertRowOffsets& off = saved->offsets;
    const int64_t c = config_.hidden_size, f = f_;
    const int64_t rows = dh.size(0);
    const int64_t used = grouped_ ? rows : off.host[experts_.count];
    MIMO_ASSIGN_OR_RETURN(Tensor da, NewTensor(ctx, {rows, f}, dh.dtype()));
    MIMO_ASSIGN_OR_RETURN(Tensor dh1, NewTensor(ctx, {rows, f1_}, dh.dtype()));
    MIMO_ASSIGN_OR_RETURN(Tensor dx, NewTensor(ctx, {rows, c}, dh.dtype()));
    MIMO_RETURN_IF_ERROR(ProjectBackward(ops, off, {fc2_.get(), f, c}, saved->a, dh, da));
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
    MIMO_RETURN_IF_ERROR(ProjectBackward(ops, off, {fc1_.get(), c, f1_}, saved->x, dh1, dx));
    return dx;
  }

  void AppendParameters(std::vector<Parameter*>& out) const override {
    out.push_back(fc1_.get());
    out.push_back(fc2_.get());
  }

  bool needs_host_offsets() const override { return !grouped_; }

 private:
  absl::Status CheckOffsets(const ExpertRowOffsets& offsets, int64_t rows) const {
    const int64_t el = experts_.count;
    if (grouped_) {
      if (!offsets.device.defined() || offsets.device.shape() != kernels::Shape{el + 1} ||
          offsets.device.dtype() != DType::kI32) {
        return absl::InvalidArgumentError(
            absl::StrCat("Experts: needs ", el + 1, " int32 offsets on the device"));
      }
      return absl::OkStatus();
    }
    const std::vector<int32_t>& off = offsets.host;
    if (static_cast<int64_t>(off.size()) != el + 1 || off[0] != 0 || off[el] > rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("Experts: needs ", el + 1, " offsets on the host from 0 to at most ", rows,
                       " rows, got ", off.size(), " (per-expert GEMMs read them on the host)"));
    }
    for (int64_t i = 0; i < el; ++i) {
      if (off[i + 1] < off[i]) return absl::InvalidArgumentError("Experts: offsets decrease");
    }
    return absl::OkStatus();
  }

  // y (R, out) = each expert's rows of x (R, in) times its w^T.
  absl::Status Project(kernels::Ops& ops, const ExpertRowOffsets& off, const Projection& p,
                       const Tensor& x, const Tensor& y) const {
    const int64_t el = experts_.count;
    if (grouped_) {
      return ops.GroupedGemm({.mode = GroupedGemmMode::kVariableRows,
                              .ab_dtype = x.dtype(),
                              .d_dtype = x.dtype(),
                              .a = x.data(),
                              .b = p.w->weight().data(),
                              .d = y.data(),
                              .offsets = off.device.data<int32_t>(),
                              .groups = el,
                              .rows = x.size(0),
                              .n = p.out,
                              .k = p.in,
                              .transpose_b = true,
                              .row_multiple = off.row_multiple});
    }
    std::vector<kernels::GemmParams> batch;
    for (int64_t i = 0; i < el; ++i) {
      const int64_t n = off.host[i + 1] - off.host[i];
      if (n == 0) continue;
      batch.push_back(kernels::LinearForwardGemm({.dtype = x.dtype(),
                                                  .x = RowAt(x, off.host[i], p.in),
                                                  .w = RowAt(p.w->weight(), i * p.out, p.in),
                                                  .y = RowAt(y, off.host[i], p.out),
                                                  .tokens = n,
                                                  .in = p.in,
                                                  .out = p.out}));
    }
    return ops.GemmBatch(batch);
  }

  // dy (R, out) -> dx (R, in) = each expert's rows of dy times its w; w's gradient += dy^T x, or
  // = where it is stale (the step's first backward), for every local expert.
  absl::Status ProjectBackward(kernels::Ops& ops, const ExpertRowOffsets& off, const Projection& p,
                               const Tensor& x, const Tensor& dy, const Tensor& dx) const {
    const int64_t el = experts_.count;
    const bool write = p.w->TakeStaleGrad();
    if (grouped_) {
      MIMO_RETURN_IF_ERROR(ops.GroupedGemm({.mode = GroupedGemmMode::kVariableRows,
                                            .ab_dtype = dy.dtype(),
                                            .d_dtype = dy.dtype(),
                                            .a = dy.data(),
                                            .b = p.w->weight().data(),
                                            .d = dx.data(),
                                            .offsets = off.device.data<int32_t>(),
                                            .groups = el,
                                            .rows = dy.size(0),
                                            .n = p.in,
                                            .k = p.out,
                                            .row_multiple = off.row_multiple}));
      return ops.GroupedGemm({.mode = GroupedGemmMode::kVariableDepth,
                              .ab_dtype = dy.dtype(),
                              .d_dtype = DType::kF32,
                              .a = dy.data(),
                              .b = x.data(),
                              .d = p.w->grad().data(),
                              .offsets = off.device.data<int32_t>(),
                              .groups = el,
                              .rows = dy.size(0),
                              .m = p.out,
                              .n = p.in,
                              .accumulate = !write});
    }
    // Every expert's dx and weight-gradient products in one batch: their outputs are disjoint.
    std::vector<kernels::GemmParams> batch;
    for (int64_t i = 0; i < el; ++i) {
      const int64_t n = off.host[i + 1] - off.host[i];
      if (n == 0) {
        if (write) {  // Experts [i, j) have no rows: their gradients zeroed with one memset.
          int64_t j = i + 1;
          while (j < el && off.host[j + 1] == off.host[j]) ++j;
          MIMO_RETURN_IF_ERROR(
              ops.SetZero(RowAt(p.w->grad(), i * p.out, p.in),
                          static_cast<size_t>((j - i) * p.out * p.in) * sizeof(float)));
          i = j - 1;
        }
        continue;
      }
      const kernels::LinearBackwardParams expert{
          .dtype = dy.dtype(),
          .dy = RowAt(dy, off.host[i], p.out),
          .x = RowAt(x, off.host[i], p.in),
          .w = RowAt(p.w->weight(), i * p.out, p.in),
          .dx = RowAt(dx, off.host[i], p.in),
          .dw = static_cast<float*>(RowAt(p.w->grad(), i * p.out, p.in)),
          .accumulate = !write,
          .tokens = n,
          .in = p.in,
          .out = p.out};
      batch.push_back(kernels::LinearDxGemm(expert, expert.dy));
      batch.push_back(kernels::LinearDwGemm(expert, expert.dy));
    }
    return ops.GemmBatch(batch);
  }

  const TransformerConfig config_;
  const LocalExperts experts_;
  const bool grouped_;
  const int64_t f_;                 // Fl
  const int64_t f1_;                // Fl1
  std::unique_ptr<Parameter> fc1_;  // (El, Fl1, C)
  std::unique_ptr<Parameter> fc2_;  // (El, C, Fl)
};

// The experts' parameters, laid out as Megatron's SequentialMLP and GroupedMLP both hold them.
absl::StatusOr<std::unique_ptr<Experts>> BuildExperts(const BuildContext& ctx,
                                                      const LocalExperts& experts, bool grouped) {
  const TransformerConfig& c = *ctx.config;
  if (experts.count < 1 || experts.ffn < 1 || experts.first < 0 ||
      experts.first + experts.count > experts.total || experts.ffn_parts < 1 ||
      experts.ffn % experts.ffn_parts != 0 || experts.ffn_part < 0 ||
      experts.ffn_part >= experts.ffn_parts) {
    return absl::InvalidArgumentError(
        absl::StrCat("Experts: experts [", experts.first, ", ", experts.first + experts.count,
                     ") of ", experts.total, ", part ", experts.ffn_part, " of ", experts.ffn_parts,
                     " of width ", experts.ffn, " do not make a shard"));
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
      new ExpertsMlp(c, experts, grouped, std::move(fc1), std::move(fc2)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Experts>> SequentialExpertsBuilder::Build(
    const BuildContext& ctx, const LocalExperts& experts) const {
  return BuildExperts(ctx, experts, /*grouped=*/false);
}

absl::StatusOr<std::unique_ptr<Experts>> GroupedExpertsBuilder::Build(
    const BuildContext& ctx, const LocalExperts& experts) const {
  return BuildExperts(ctx, experts, /*grouped=*/true);
}

absl::StatusOr<std::unique_ptr<Block>> DenseSharedExpertsBuilder::Build(const BuildContext& ctx,
                                                                        int64_t ffn) const {
  MIMO_ASSIGN_OR_RETURN(auto mlp, DenseMlp::Create(ctx, ffn));
  return std::unique_ptr<Block>(std::move(mlp));
}

}  // namespace mimo
