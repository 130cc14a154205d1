// SyntheticSource: the built-in synthetic dataset (synthetic.h) behind the SampleSource
// interface, so the trainer reads it as it reads files.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "data/sample_source.h"
#include "data/synthetic.h"

namespace mimo::data {

class SyntheticSource : public SampleSource {
 public:
  // InvalidArgument when ValidateSyntheticOptions fails.
  static absl::StatusOr<std::unique_ptr<SyntheticSource>> Create(const SyntheticOptions& options);

  int64_t num_samples() const override { return options_.num_samples; }
  // MakeSyntheticSample(options, index): the synthetic set is not shuffled (its samples are
  // random already), so every epoch repeats the first.
  absl::StatusOr<Sample> Get(int64_t index) const override;

  const SyntheticOptions& options() const { return options_; }

 private:
  explicit SyntheticSource(const SyntheticOptions& options) : options_(options) {}

  SyntheticOptions options_;
};

}  // namespace mimo::data
