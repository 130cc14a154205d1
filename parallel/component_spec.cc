// Parses Megatron's MIMO component syntax:
// NAME=tp=N[,pp=N,dp=N,cp=N,ep=N,etp=N,vpp=N,rank_offset=N].
#include "parallel/component_spec.h"

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace mimo::parallel {
namespace {

constexpr absl::string_view kSyntax = "NAME=KEY=VALUE[,KEY=VALUE...], e.g. language=tp=2,ep=4";

bool IsKey(absl::string_view key) {
  for (absl::string_view k : kComponentKeys) {
    if (k == key) return true;
  }
  return false;
}

void Assign(absl::string_view key, int value, ModuleParallelism& m) {
  if (key == "tp") m.tp = value;
  if (key == "pp") m.pp = value;
  if (key == "dp") m.dp = value;
  if (key == "cp") m.cp = value;
  if (key == "ep") m.ep = value;
  if (key == "etp") m.etp = value;
  if (key == "vpp") m.vpp = value;
  if (key == "rank_offset") m.rank_offset = value;
}

}  // namespace

absl::StatusOr<ModuleParallelism> ParseComponent(absl::string_view text) {
  const std::string quoted = absl::StrCat("component '", text, "'");
  const size_t eq = text.find('=');
  if (eq == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(quoted, " is malformed: expected ", kSyntax));
  }
  ModuleParallelism m;
  m.name = std::string(absl::StripAsciiWhitespace(text.substr(0, eq)));
  if (m.name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(quoted, " has an empty module name"));
  }
  std::vector<std::string> errors;
  absl::flat_hash_set<std::string> seen;
  for (absl::string_view token : absl::StrSplit(text.substr(eq + 1), ',')) {
    token = absl::StripAsciiWhitespace(token);
    if (token.empty()) continue;
    const size_t teq = token.find('=');
    const absl::string_view key =
        absl::StripAsciiWhitespace(token.substr(0, teq == absl::string_view::npos ? 0 : teq));
    if (teq == absl::string_view::npos || key.empty()) {
      errors.push_back(
          absl::StrCat(quoted, ": token '", token, "' is malformed: expected KEY=VALUE"));
      continue;
    }
    const absl::string_view value = absl::StripAsciiWhitespace(token.substr(teq + 1));
    if (!IsKey(key)) {
      errors.push_back(absl::StrCat(quoted, ": unknown key '", key, "' (supported keys: ",
                                    absl::StrJoin(kComponentKeys, ", "), ")"));
      continue;
    }
    if (!seen.insert(std::string(key)).second) {
      errors.push_back(absl::StrCat(quoted, ": key '", key, "' is given twice"));
      continue;
    }
    int parsed = 0;
    if (!absl::SimpleAtoi(value, &parsed)) {
      errors.push_back(
          absl::StrCat(quoted, ": value '", value, "' of key '", key, "' is not an integer"));
      continue;
    }
    Assign(key, parsed, m);
  }
  if (!errors.empty()) return absl::InvalidArgumentError(absl::StrJoin(errors, "\n"));
  return m;
}

absl::StatusOr<std::vector<ModuleParallelism>> ParseComponents(
    absl::Span<const std::string> components) {
  if (components.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no component given: pass at least one ", kSyntax));
  }
  std::vector<ModuleParallelism> modules;
  std::vector<std::string> errors;
  absl::flat_hash_map<std::string, std::string> by_name;  // Module name -> its component.
  for (const std::string& text : components) {
    absl::StatusOr<ModuleParallelism> m = ParseComponent(text);
    if (!m.ok()) {
      errors.push_back(std::string(m.status().message()));
      continue;
    }
    auto [it, inserted] = by_name.emplace(m->name, text);
    if (!inserted) {
      errors.push_back(absl::StrCat("module '", m->name, "' is given by two components ('",
                                    it->second, "' and '", text, "')"));
      continue;
    }
    modules.push_back(*std::move(m));
  }
  if (!errors.empty()) return absl::InvalidArgumentError(absl::StrJoin(errors, "\n"));
  return modules;
}

}  // namespace mimo::parallel
