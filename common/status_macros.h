// Early-return helpers for absl::Status / absl::StatusOr (Debian's Abseil ships none).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MIMO_STATUS_CONCAT_INNER_(a, b) a##b
#define MIMO_STATUS_CONCAT_(a, b) MIMO_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function if it is not OK.
#define MIMO_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::absl::Status mimo_status_ = (expr);        \
    if (!mimo_status_.ok()) return mimo_status_; \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, else moves the value
// into `lhs`, which may be a declaration: MIMO_ASSIGN_OR_RETURN(auto plan, BuildRankPlan(spec));
#define MIMO_ASSIGN_OR_RETURN(lhs, rexpr) \
  MIMO_ASSIGN_OR_RETURN_IMPL_(MIMO_STATUS_CONCAT_(mimo_statusor_, __LINE__), lhs, rexpr)

#define MIMO_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)  \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
