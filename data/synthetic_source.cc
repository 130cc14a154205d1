// SyntheticSource: validation once, then MakeSyntheticSample per index.
#include "data/synthetic_source.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mimo::data {

absl::StatusOr<std::unique_ptr<SyntheticSource>> SyntheticSource::Create(
    const SyntheticOptions& options) {
  MIMO_RETURN_IF_ERROR(ValidateSyntheticOptions(options));
  return std::unique_ptr<SyntheticSource>(new SyntheticSource(options));
}

absl::StatusOr<Sample> SyntheticSource::Get(int64_t index) const {
  if (index < 0) return absl::InvalidArgumentError(absl::StrCat("sample index ", index, " < 0"));
  return MakeSyntheticSample(options_, index);
}

}  // namespace mimo::data
