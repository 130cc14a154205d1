// Reads a JobSpec from YAML or JSON text, following the proto3 JSON mapping.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "mimo/v1/job_spec.pb.h"

namespace mimo::tools {

enum class SpecFormat { kYaml, kJson };

// Parses one JobSpec. JSON goes straight to the proto3 JSON mapping; YAML (one document whose
// top level is a mapping) is first converted node by node to JSON: plain scalars that read as
// YAML 1.2 core-schema integers, floats or booleans become JSON numbers or booleans (.inf and
// .nan become "Infinity" and "NaN"), null/~/empty become null, and every other scalar, quoted
// ones included, stays a string. Field names may be lower_snake or lowerCamel, enums are given
// by name (or number), durations as "3600s"; unknown fields are errors. Every error is
// InvalidArgument saying what is wrong: YAML and JSON syntax errors with their line and column, a
// duplicate key, a top level that is not a mapping, more than one document, protobuf's
// message for an unknown field or a wrong type (in YAML after the line and column of its key).
absl::StatusOr<v1::JobSpec> ParseJobSpec(absl::string_view text, SpecFormat format);

// The largest spec file ReadJobSpecFile reads: four times the coordinator's request limit
// (coordinator/message_limits.h), room for comments and indentation.
inline constexpr size_t kMaxSpecFileBytes = 16 << 20;

// Reads and parses a spec file, choosing the format by extension: .yaml or .yml for YAML,
// .json for JSON (case-insensitive); any other extension is InvalidArgument. A file that cannot
// be read fails with the errno's status (NotFound for a missing file) and its text; one larger
// than kMaxSpecFileBytes is InvalidArgument, before it is parsed. Errors start with the path.
absl::StatusOr<v1::JobSpec> ReadJobSpecFile(const std::string& path);

}  // namespace mimo::tools
