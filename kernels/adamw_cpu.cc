// AdamW and the sum of squares: the argument checks and the CPU twins.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/adamw.h"
#include "kernels/cpu_elements.h"
#include "kernels/op_checks.h"

namespace mimo::kernels {

absl::Status CheckAdamW(const AdamWParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("AdamW (grad)", p.grad_dtype));
  if (p.model != nullptr) MIMO_RETURN_IF_ERROR(CheckFloatDType("AdamW (model)", p.model_dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("AdamW", p.n, 1));
  auto in01 = [](float b) { return b >= 0.0f && b < 1.0f; };
  if (!in01(p.beta1) || !in01(p.beta2)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AdamW: betas must be in [0, 1), got ", p.beta1, " and ", p.beta2));
  }
  if (!(p.eps > 0.0f) || !(p.lr >= 0.0f) || !(p.weight_decay >= 0.0f) || p.step < 1 ||
      !std::isfinite(p.grad_scale)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AdamW: needs eps > 0, lr >= 0, weight_decay >= 0, step >= 1 and a finite grad_scale; got "
        "eps ",
        p.eps, ", lr ", p.lr, ", weight_decay ", p.weight_decay, ", step ", p.step, ", grad_scale ",
        p.grad_scale));
  }
  return CheckBuffers("AdamW", p.n > 0,
                      {{p.master, "master"}, {p.m, "m"}, {p.v, "v"}, {p.grad, "grad"}});
}

absl::Status CheckSumSquares(const SumSquaresParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("SumSquares", p.dtype));
  MIMO_RETURN_IF_ERROR(CheckRowsCols("SumSquares", p.n, 1));
  MIMO_RETURN_IF_ERROR(CheckBuffers("SumSquares", true, {{p.out, "out"}}));
  return CheckBuffers("SumSquares", p.n > 0, {{p.x, "x"}});
}

absl::Status AdamWCpu(const AdamWParams& p) {
  MIMO_RETURN_IF_ERROR(CheckAdamW(p));
  const float c1 = 1.0f - static_cast<float>(std::pow(p.beta1, static_cast<double>(p.step)));
  const float c2 = 1.0f - static_cast<float>(std::pow(p.beta2, static_cast<double>(p.step)));
  for (int64_t i = 0; i < p.n; ++i) {
    const float g = LoadElement(p.grad_dtype, p.grad, i) * p.grad_scale;
    const float m = p.beta1 * p.m[i] + (1.0f - p.beta1) * g;
    const float v = p.beta2 * p.v[i] + (1.0f - p.beta2) * g * g;
    p.m[i] = m;
    p.v[i] = v;
    const float update = (m / c1) / (std::sqrt(v / c2) + p.eps) + p.weight_decay * p.master[i];
    p.master[i] -= p.lr * update;
    if (p.model != nullptr) StoreElement(p.model_dtype, p.model, i, p.master[i]);
  }
  return absl::OkStatus();
}

absl::Status SumSquaresCpu(const SumSquaresParams& p) {
  MIMO_RETURN_IF_ERROR(CheckSumSquares(p));
  double sum = 0.0;
  for (int64_t i = 0; i < p.n; ++i) {
    const double x = LoadElement(p.dtype, p.x, i);
    sum += x * x;
  }
  *p.out = static_cast<float>(sum);
  return absl::OkStatus();
}

}  // namespace mimo::kernels
