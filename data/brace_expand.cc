// ExpandBraces: finds the first group, expands its alternatives and the rest of the pattern
// recursively, and joins them.
#include "data/brace_expand.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mimo::data {
namespace {

constexpr size_t kMaxResults = 1000000;

// The index of the '}' closing the '{' at `open` (the braces balance).
size_t Closing(absl::string_view s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) return i;
  }
  return s.size();
}

// The top-level comma-separated parts of a group's body; one part when it has no comma.
std::vector<absl::string_view> SplitTopLevel(absl::string_view body) {
  std::vector<absl::string_view> parts;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] == '{') ++depth;
    if (body[i] == '}') --depth;
    if (body[i] == ',' && depth == 0) {
      parts.push_back(body.substr(start, i - start));
      start = i + 1;
    }
  }
  parts.push_back(body.substr(start));
  return parts;
}

struct Bound {
  int64_t value = 0;
  int digits = 0;  // Without the sign.
  bool leading_zero = false;
};

std::optional<Bound> ParseBound(absl::string_view s) {
  Bound b;
  const size_t sign = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (s.size() == sign) return std::nullopt;
  const char* begin = s.data() + (s[0] == '+' ? 1 : 0);
  const auto [end, error] = std::from_chars(begin, s.data() + s.size(), b.value);
  if (error != std::errc() || end != s.data() + s.size()) return std::nullopt;
  b.digits = static_cast<int>(s.size() - sign);
  b.leading_zero = b.digits > 1 && s[sign] == '0';
  return b;
}

// `{M..N}`'s bounds, or nullopt when `body` is not a range.
std::optional<std::pair<Bound, Bound>> Range(absl::string_view body) {
  const size_t dots = body.find("..");
  if (dots == absl::string_view::npos) return std::nullopt;
  const std::optional<Bound> from = ParseBound(body.substr(0, dots));
  const std::optional<Bound> to = ParseBound(body.substr(dots + 2));
  if (!from || !to) return std::nullopt;
  return std::make_pair(*from, *to);
}

std::vector<std::string> RangeValues(const Bound& from, const Bound& to) {
  const int width = from.leading_zero || to.leading_zero ? std::max(from.digits, to.digits) : 0;
  std::vector<std::string> out;
  const int64_t step = to.value >= from.value ? 1 : -1;
  for (int64_t v = from.value;; v += step) {
    const std::string digits = std::to_string(v < 0 ? -v : v);
    const size_t pad = digits.size() < static_cast<size_t>(width) ? width - digits.size() : 0;
    out.push_back(absl::StrCat(v < 0 ? "-" : "", std::string(pad, '0'), digits));
    if (v == to.value) break;
  }
  return out;
}

absl::Status TooMany(absl::string_view whole) {
  return absl::InvalidArgumentError(
      absl::StrCat("pattern '", whole, "' names more than ", kMaxResults, " strings"));
}

// `s`'s braces balance (ExpandBraces checked the whole pattern).
absl::StatusOr<std::vector<std::string>> Expand(absl::string_view s, absl::string_view whole) {
  for (size_t open = s.find('{'); open != absl::string_view::npos; open = s.find('{', open + 1)) {
    const size_t close = Closing(s, open);
    const absl::string_view body = s.substr(open + 1, close - open - 1);
    std::vector<std::string> alternatives;
    const std::vector<absl::string_view> parts = SplitTopLevel(body);
    if (parts.size() > 1) {
      for (const absl::string_view part : parts) {
        MIMO_ASSIGN_OR_RETURN(std::vector<std::string> expanded, Expand(part, whole));
        for (std::string& e : expanded) alternatives.push_back(std::move(e));
        if (alternatives.size() > kMaxResults) return TooMany(whole);
      }
    } else if (const auto range = Range(body)) {
      // Differences of int64 bounds fit in a double well enough to compare with the limit.
      if (std::abs(static_cast<double>(range->second.value) -
                   static_cast<double>(range->first.value)) >= kMaxResults) {
        return TooMany(whole);
      }
      alternatives = RangeValues(range->first, range->second);
    } else {
      continue;  // "{x}": literal braces; groups inside them still expand.
    }
    MIMO_ASSIGN_OR_RETURN(const std::vector<std::string> rests, Expand(s.substr(close + 1), whole));
    if (alternatives.size() * rests.size() > kMaxResults) return TooMany(whole);
    std::vector<std::string> out;
    out.reserve(alternatives.size() * rests.size());
    const absl::string_view prefix = s.substr(0, open);
    for (const std::string& a : alternatives) {
      for (const std::string& r : rests) out.push_back(absl::StrCat(prefix, a, r));
    }
    return out;
  }
  return std::vector<std::string>{std::string(s)};
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ExpandBraces(absl::string_view pattern) {
  int depth = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    depth += pattern[i] == '{' ? 1 : pattern[i] == '}' ? -1 : 0;
    if (depth < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("pattern '", pattern, "': unbalanced '}' at position ", i));
    }
  }
  if (depth > 0) {
    return absl::InvalidArgumentError(absl::StrCat("pattern '", pattern, "': unbalanced '{'"));
  }
  return Expand(pattern, pattern);
}

}  // namespace mimo::data
