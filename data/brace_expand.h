// Brace expansion of shard patterns, as a shell does it: "/data/shard-{000..099}.tar" names 100
// files, "/data/{train,extra}-{0..1}.tar" four.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mimo::data {

// Every string `pattern` names, in order (the leftmost group varies slowest). A group is
// `{a,b,...}` (alternatives, themselves patterns, so groups nest; empty ones allowed) or
// `{M..N}` (integers, ascending or descending, zero-padded to the wider bound when either bound
// has a leading zero, as bash does). Braces holding neither a comma nor a range stay as they
// are ("{x}"). InvalidArgument for unbalanced braces, a bound that is not an integer, or more
// than 1,000,000 results.
absl::StatusOr<std::vector<std::string>> ExpandBraces(absl::string_view pattern);

}  // namespace mimo::data
