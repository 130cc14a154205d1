// The job-spec checks' collector: each failed check becomes a FieldViolation at its spec path
// (spec_validation.cc and the checks of its parts, e.g. moe_spec_checks.cc).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/spec_validation.h"
#include "google/protobuf/descriptor.h"

namespace mimo::coordinator {

// Parallelism sizes of 0 are proto3's default and mean 1.
inline int SizeOrOne(int32_t size) { return size == 0 ? 1 : size; }

class FieldChecks {
 public:
  std::vector<FieldViolation>& violations() { return violations_; }

  void Add(std::string field, std::string description) {
    violations_.push_back({std::move(field), std::move(description)});
  }

  // Adds a violation at `path` unless `value` is positive (and finite).
  template <typename T>
  void Positive(const std::string& path, T value) {
    if constexpr (std::is_floating_point_v<T>) {
      if (std::isfinite(value) && value > 0) return;
    } else {
      if (value > 0) return;
    }
    Add(path, absl::StrCat("must be positive, got ", value));
  }

  // Adds a violation at `path` unless `value` is at least 0 (and finite).
  template <typename T>
  void NonNegative(const std::string& path, T value) {
    if constexpr (std::is_floating_point_v<T>) {
      if (std::isfinite(value) && value >= 0) return;
    } else {
      if (value >= 0) return;
    }
    Add(path, absl::StrCat("must be >= 0, got ", value));
  }

  // Adds a violation at `path` unless `value`, which workers read as a float, is 0 or in
  // (0, max] and stays positive as a float.
  void FloatUpTo(const std::string& path, double value, double max) {
    if (value == 0 || (value > 0 && value <= max && static_cast<float>(value) > 0)) return;
    Add(path, absl::StrCat("must be 0 or in (0, ", max, "] (positive as a float), got ", value));
  }

  // Adds a violation at `path` when an enum is unset or holds a number it does not define.
  void EnumSet(const std::string& path, int value, const google::protobuf::EnumDescriptor* type) {
    if (value == 0) {
      Add(path, absl::StrCat("must be set (got ", type->FindValueByNumber(0)->name(), ")"));
    } else if (type->FindValueByNumber(value) == nullptr) {
      Add(path, absl::StrCat("unknown ", type->name(), " value ", value));
    }
  }

 private:
  std::vector<FieldViolation> violations_;
};

}  // namespace mimo::coordinator
