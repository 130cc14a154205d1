// Softmax cross-entropy in float64 over the whole vocabulary: the reference for the chunked ops.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace mimo::kernels::testing {

struct CrossEntropyReference {
  std::vector<double> loss, dlogits;
};

// logits: (tokens, vocab); targets < 0 are ignored; dloss: (tokens,).
inline CrossEntropyReference CrossEntropyFloat64(const std::vector<double>& logits,
                                                 const std::vector<int32_t>& targets,
                                                 const std::vector<double>& dloss, int64_t vocab) {
  CrossEntropyReference out;
  out.loss.resize(targets.size());
  out.dlogits.resize(logits.size());
  for (size_t t = 0; t < targets.size(); ++t) {
    const double* row = &logits[t * vocab];
    const double m = *std::max_element(row, row + vocab);
    double sum = 0;
    for (int64_t c = 0; c < vocab; ++c) sum += std::exp(row[c] - m);
    const double lse = std::log(sum) + m;
    const bool ignored = targets[t] < 0;
    out.loss[t] = ignored ? 0.0 : lse - row[targets[t]];
    for (int64_t c = 0; c < vocab; ++c) {
      out.dlogits[t * vocab + c] =
          ignored ? 0.0 : dloss[t] * (std::exp(row[c] - lse) - (c == targets[t] ? 1.0 : 0.0));
    }
  }
  return out;
}

}  // namespace mimo::kernels::testing
