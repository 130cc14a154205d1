// Reads a JobSpec from YAML or JSON text, following the proto3 JSON mapping.
#include "tools/mimoctl/spec_file.h"

#include <google/protobuf/util/json_util.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/anchor.h"
#include "yaml-cpp/emitterstyle.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/exceptions.h"
#include "yaml-cpp/mark.h"
#include "yaml-cpp/parser.h"

namespace mimo::tools {
namespace {

using Json = nlohmann::ordered_json;

// Far deeper than any JobSpec (modules[i].language.moe.num_experts is 5 levels); bounds the
// recursion on hostile input.
constexpr size_t kMaxDepth = 64;
// Bounds the JSON built from a YAML document whose aliases repeat large subtrees.
constexpr int64_t kMaxValues = 1 << 17;
// Far longer than any JobSpec field's path; longer ones are not given a line in errors.
constexpr size_t kMaxPathLength = 128;

std::string Where(const YAML::Mark& mark) {
  if (mark.is_null()) return "";
  return absl::StrCat("line ", mark.line + 1, ", column ", mark.column + 1, ": ");
}

absl::Status YamlError(const YAML::Mark& mark, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("invalid YAML spec: ", Where(mark), what));
}

// Parses all of `text` with std::from_chars in `base`; false on any leftover or overflow.
template <typename T>
bool ParseInteger(absl::string_view text, int base, T* out) {
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, *out, base);
  return ec == std::errc() && ptr == end && !text.empty();
}

bool AllOf(absl::string_view s, bool (*pred)(unsigned char)) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!pred(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool IsOctalDigit(unsigned char c) { return c >= '0' && c <= '7'; }
bool IsDecimalDigit(unsigned char c) { return absl::ascii_isdigit(c); }
bool IsHexDigit(unsigned char c) { return absl::ascii_isxdigit(c); }

// YAML 1.2 core schema float: [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
bool IsCoreFloat(absl::string_view s) {
  size_t i = 0;
  auto digits = [&] {
    const size_t start = i;
    while (i < s.size() && absl::ascii_isdigit(s[i])) ++i;
    return i - start;
  };
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (digits() == 0) return false;
  } else {
    if (digits() == 0) return false;
    if (i < s.size() && s[i] == '.') {
      ++i;
      digits();
    }
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    if (digits() == 0) return false;
  }
  return i == s.size();
}

// A JSON number for a finite double, else the proto3 JSON mapping's string for it.
Json JsonDouble(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  return value;
}

// A plain (unquoted, untagged) scalar, resolved with the YAML 1.2 core schema.
Json ResolvePlainScalar(const std::string& s) {
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  for (const auto& [prefix, base, is_digit] :
       {std::tuple{"0o", 8, &IsOctalDigit}, std::tuple{"0x", 16, &IsHexDigit}}) {
    absl::string_view digits = s;
    if (absl::ConsumePrefix(&digits, prefix) && AllOf(digits, is_digit)) {
      if (uint64_t u; ParseInteger(digits, base, &u)) return u;
      return s;  // Beyond 64 bits: protobuf rejects the string as a number.
    }
  }
  absl::string_view unsigned_part = s;
  const bool negative = absl::ConsumePrefix(&unsigned_part, "-");
  if (!negative) absl::ConsumePrefix(&unsigned_part, "+");
  if (AllOf(unsigned_part, IsDecimalDigit)) {
    const absl::string_view signed_part = negative ? absl::string_view(s) : unsigned_part;
    if (int64_t i; ParseInteger(signed_part, 10, &i)) return i;
    if (uint64_t u; !negative && ParseInteger(unsigned_part, 10, &u)) return u;
    // Beyond 64 bits: read below as the nearest double, which protobuf range-checks.
  }
  if (unsigned_part == ".inf" || unsigned_part == ".Inf" || unsigned_part == ".INF") {
    return negative ? "-Infinity" : "Infinity";
  }
  if (s == ".nan" || s == ".NaN" || s == ".NAN") return "NaN";
  if (double d; IsCoreFloat(s) && absl::SimpleAtod(s, &d)) return JsonDouble(d);
  return s;
}

// Builds the JSON value of the first YAML document from the parser's events. yaml-cpp's Node
// API is avoided: its LoadAll() loops forever on some malformed input (" ,"), and events carry
// what the conversion needs (tags, marks, anchors). Events of later documents are ignored; the
// caller only counts them.
class JsonBuilder : public YAML::EventHandler {
 public:
  // Thrown out of the parser to stop at the first problem.
  struct Error {
    absl::Status status;
  };

  const std::vector<YAML::Mark>& document_starts() const { return document_starts_; }
  const Json& root() const { return root_; }
  // Where the key of the field at `path` ("modules[0].language.vocab_size", names in
  // lower_snake_case, as protobuf's JSON errors give them) is; null when not known.
  const YAML::Mark* KeyMark(const std::string& path) const {
    const auto it = key_marks_.find(path);
    return it == key_marks_.end() ? nullptr : &it->second;
  }
  const YAML::Mark& root_mark() const { return root_mark_; }

  void OnDocumentStart(const YAML::Mark& mark) override { document_starts_.push_back(mark); }
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (!InFirstDocument()) return;
    if (AwaitingKey()) Fail(mark, "a mapping key must be a non-null scalar");
    Count(mark, 1);
    Attach(mark, nullptr, anchor, 1);
  }

  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (!InFirstDocument()) return;
    const auto it = anchors_.find(anchor);
    if (it == anchors_.end()) Fail(mark, "an alias refers to a node that contains it");
    const auto& [value, count] = it->second;
    if (AwaitingKey()) {
      if (!value.is_string()) Fail(mark, "a mapping key must be a scalar");
      SetKey(mark, value.get<std::string>());
      return;
    }
    Count(mark, count);
    Attach(mark, value, YAML::NullAnchor, count);
  }

  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& value) override {
    if (!InFirstDocument()) return;
    if (AwaitingKey()) {
      SetKey(mark, value);
      if (anchor != YAML::NullAnchor) anchors_[anchor] = {value, 1};
      return;
    }
    Count(mark, 1);
    // yaml-cpp tags plain scalars "?", quoted and block ones "!"; explicitly tagged ones keep
    // their text too.
    Attach(mark, tag == "?" ? ResolvePlainScalar(value) : Json(value), anchor, 1);
  }

  void OnSequenceStart(const YAML::Mark& mark, const std::string& /*tag*/, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value /*style*/) override {
    Push(mark, Json::array(), anchor);
  }
  void OnSequenceEnd() override { Pop(); }

  void OnMapStart(const YAML::Mark& mark, const std::string& /*tag*/, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value /*style*/) override {
    Push(mark, Json::object(), anchor);
  }
  void OnMapEnd() override { Pop(); }

 private:
  // An open sequence or mapping.
  struct Frame {
    Json value;
    YAML::Mark mark;
    YAML::anchor_t anchor = YAML::NullAnchor;
    int64_t count = 1;               // Values in this subtree, itself included.
    std::optional<std::string> key;  // Mappings: the key whose value comes next.
    std::string path;                // As KeyMark's; "" for the root.
  };

  // The lower_snake_case of a lowerCamel name, as protobuf names fields.
  static std::string SnakeCase(absl::string_view name) {
    std::string out;
    for (char c : name) {
      if (absl::ascii_isupper(static_cast<unsigned char>(c))) {
        out += '_';
        out += absl::ascii_tolower(static_cast<unsigned char>(c));
      } else {
        out += c;
      }
    }
    return out;
  }

  // The path of the top frame's member `key` (a mapping's) or next item (a sequence's).
  std::string ChildPath(absl::string_view key) const {
    const Frame& parent = stack_.back();
    if (parent.value.is_array()) return absl::StrCat(parent.path, "[", parent.value.size(), "]");
    return parent.path.empty() ? std::string(key) : absl::StrCat(parent.path, ".", key);
  }

  // Records where the field at `path` is; paths longer than any JobSpec field's are not kept, so
  // that hostile input cannot make them add up.
  void RecordKey(const YAML::Mark& mark, std::string path) {
    if (path.size() <= kMaxPathLength) key_marks_.try_emplace(std::move(path), mark);
  }

  [[noreturn]] static void Fail(const YAML::Mark& mark, absl::string_view what) {
    throw Error{YamlError(mark, what)};
  }

  bool InFirstDocument() const { return document_starts_.size() == 1; }
  bool AwaitingKey() const {
    return !stack_.empty() && stack_.back().value.is_object() && !stack_.back().key;
  }

  void Count(const YAML::Mark& mark, int64_t count) {
    values_ += count;
    if (values_ > kMaxValues) {
      Fail(mark, absl::StrCat("more than ", kMaxValues, " values once aliases are expanded"));
    }
  }

  void SetKey(const YAML::Mark& mark, const std::string& key) {
    if (stack_.back().value.contains(key)) Fail(mark, absl::StrCat("duplicate key '", key, "'"));
    stack_.back().key = key;
    RecordKey(mark, ChildPath(SnakeCase(key)));
    RecordKey(mark, ChildPath(key));  // An unknown field is named as written.
  }

  void Push(const YAML::Mark& mark, Json value, YAML::anchor_t anchor) {
    if (!InFirstDocument()) return;
    if (AwaitingKey()) Fail(mark, "a mapping key must be a scalar");
    if (stack_.size() >= kMaxDepth) {
      Fail(mark, absl::StrCat("nested deeper than ", kMaxDepth, " levels"));
    }
    Count(mark, 1);
    std::string path;
    if (!stack_.empty()) {
      path = ChildPath(stack_.back().key ? SnakeCase(*stack_.back().key) : "");
      if (stack_.back().value.is_array()) RecordKey(mark, path);
    }
    stack_.push_back(
        {.value = std::move(value), .mark = mark, .anchor = anchor, .path = std::move(path)});
  }

  void Pop() {
    if (!InFirstDocument()) return;
    Frame frame = std::move(stack_.back());
    stack_.pop_back();
    Attach(frame.mark, std::move(frame.value), frame.anchor, frame.count);
  }

  // Stores a finished value in its parent (or as the root) and under its anchor.
  void Attach(const YAML::Mark& mark, Json value, YAML::anchor_t anchor, int64_t count) {
    if (anchor != YAML::NullAnchor) anchors_[anchor] = {value, count};
    if (stack_.empty()) {
      root_ = std::move(value);
      root_mark_ = mark;
      return;
    }
    Frame& parent = stack_.back();
    parent.count += count;
    if (parent.value.is_array()) {
      parent.value.push_back(std::move(value));
    } else {
      parent.value[*parent.key] = std::move(value);
      parent.key.reset();
    }
  }

  std::vector<YAML::Mark> document_starts_;
  std::vector<Frame> stack_;
  absl::flat_hash_map<std::string, YAML::Mark> key_marks_;
  absl::flat_hash_map<YAML::anchor_t, std::pair<Json, int64_t>> anchors_;  // Value, count.
  int64_t values_ = 0;
  Json root_;
  YAML::Mark root_mark_;
};

// A JSON object's key given twice (protobuf's JSON parser would merge or override them
// silently, where YAML refuses a duplicate), or where the text is not JSON: "line L, column C:
// what" (protobuf's own message has no position and spans lines).
class DuplicateKeyFinder : public nlohmann::json_sax<nlohmann::json> {
 public:
  std::string duplicate;
  std::string syntax_error;

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    objects_.emplace_back();
    return true;
  }
  bool key(string_t& key) override {
    if (!objects_.back().insert(key).second) {
      duplicate = key;
      return false;
    }
    return true;
  }
  bool end_object() override {
    objects_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    // "[json.exception.parse_error.101] parse error at line 4, column 13: syntax error ...".
    const absl::string_view what = e.what();
    const size_t at = what.find(" at ");
    syntax_error = std::string(at == absl::string_view::npos ? what : what.substr(at + 4));
    return false;
  }

 private:
  std::vector<std::set<std::string>> objects_;  // The keys of each open object.
};

absl::StatusOr<v1::JobSpec> FromJson(absl::string_view json) {
  DuplicateKeyFinder finder;
  nlohmann::json::sax_parse(json.begin(), json.end(), &finder);
  if (!finder.syntax_error.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("JSON syntax error: ", finder.syntax_error));
  }
  if (!finder.duplicate.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid job spec: key \"", finder.duplicate,
                                                   "\" is given twice in one object"));
  }
  v1::JobSpec spec;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &spec, options);
  if (!status.ok()) {
    const auto message = status.message();  // A protobuf StringPiece.
    return absl::InvalidArgumentError(
        absl::StrCat("invalid job spec: ", absl::string_view(message.data(), message.size())));
  }
  return spec;
}

absl::StatusOr<v1::JobSpec> FromYaml(absl::string_view text) {
  std::istringstream in{std::string(text)};
  JsonBuilder builder;
  try {
    YAML::Parser parser(in);
    // Three documents at most: enough to tell a second document from a parser that stopped
    // making progress (yaml-cpp then starts every further "document" at the same mark).
    for (int i = 0; i < 3 && parser.HandleNextDocument(builder); ++i) {
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("YAML syntax error: ", Where(e.mark), e.msg));
  } catch (const JsonBuilder::Error& e) {
    return e.status;
  }
  const std::vector<YAML::Mark>& starts = builder.document_starts();
  for (size_t i = 1; i < starts.size(); ++i) {
    if (starts[i].pos == starts[i - 1].pos) {
      const size_t pos = static_cast<size_t>(starts[i].pos);
      return absl::InvalidArgumentError(absl::StrCat(
          "YAML syntax error: ", Where(starts[i]), "unexpected '",
          absl::CHexEscape(pos < text.size() ? text.substr(pos, 1) : absl::string_view()), "'"));
    }
  }
  if (starts.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid YAML spec: ", Where(starts[1]),
                     "a second YAML document starts here; a spec is exactly one document"));
  }
  const Json& root = builder.root();
  if (root.is_null()) {
    return absl::InvalidArgumentError("empty YAML document: expected a mapping of JobSpec fields");
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid YAML spec: ", Where(builder.root_mark()),
                     "the top level must be a mapping of JobSpec fields, got ",
                     root.is_array() ? "a sequence" : "a scalar"));
  }
  std::string json;
  try {
    json = root.dump();
  } catch (const Json::type_error& e) {
    return absl::InvalidArgumentError(absl::StrCat("invalid YAML spec: ", e.what()));
  }
  absl::StatusOr<v1::JobSpec> spec = FromJson(json);
  if (spec.ok()) return spec;
  // protobuf names the field ("(modules[0].language.vocab_size): invalid value ...", "(modules[0])
  // replicas: Cannot find field.", "name: ..." at the top) but not its line: add the line.
  absl::string_view rest = spec.status().message();
  if (!absl::ConsumePrefix(&rest, "invalid job spec: ")) return spec;
  const absl::string_view error = rest;
  std::string path;
  if (absl::ConsumePrefix(&rest, "(")) {
    const size_t close = rest.find(')');
    if (close == absl::string_view::npos) return spec;
    path = std::string(rest.substr(0, close));
    rest.remove_prefix(close + 1);
    if (absl::ConsumePrefix(&rest, " ")) {
      absl::StrAppend(&path, path.empty() ? "" : ".", rest.substr(0, rest.find(':')));
    }
  } else {
    path = std::string(rest.substr(0, rest.find(':')));
  }
  const YAML::Mark* mark = builder.KeyMark(path);
  if (mark == nullptr) return spec;
  return absl::InvalidArgumentError(absl::StrCat("invalid job spec: ", Where(*mark), error));
}

}  // namespace

absl::StatusOr<v1::JobSpec> ParseJobSpec(absl::string_view text, SpecFormat format) {
  switch (format) {
    case SpecFormat::kYaml:
      return FromYaml(text);
    case SpecFormat::kJson:
      return FromJson(text);
  }
  return absl::InvalidArgumentError("unknown spec format");
}

absl::StatusOr<v1::JobSpec> ReadJobSpecFile(const std::string& path) {
  const std::string extension =
      absl::AsciiStrToLower(std::filesystem::path(path).extension().string());
  SpecFormat format;
  if (extension == ".yaml" || extension == ".yml") {
    format = SpecFormat::kYaml;
  } else if (extension == ".json") {
    format = SpecFormat::kJson;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(path, ": unknown spec file extension '",
                                                   extension, "'; use .yaml, .yml or .json"));
  }
  const std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (file == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  std::string text;
  char buffer[1 << 16];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file.get())) > 0) {
    text.append(buffer, n);
    if (text.size() > kMaxSpecFileBytes) {
      // Not a regular file (a pipe): its size is unknown.
      std::error_code error;
      const uintmax_t size = std::filesystem::file_size(path, error);
      const std::string bytes =
          error ? absl::StrCat("more than ", kMaxSpecFileBytes) : absl::StrCat(size);
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": the file is ", bytes, " bytes; a spec file is at most ",
                       kMaxSpecFileBytes, " bytes (", kMaxSpecFileBytes >> 20, " MiB)"));
    }
  }
  if (std::ferror(file.get()))
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot read"));
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpec(text, format);
  if (!spec.ok()) {
    return absl::Status(spec.status().code(), absl::StrCat(path, ": ", spec.status().message()));
  }
  return spec;
}

}  // namespace mimo::tools
