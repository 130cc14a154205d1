// ParseNpy: the magic string, the little-endian header length, a small parser for the header's
// Python dict literal, then the data. EncodeNpy: the same layout written.
#include "data/npy.h"

#include <cstring>
#include <map>
#include <optional>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mimo::data {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

// One value of the header dict: a string, a boolean or a tuple of integers.
struct Value {
  enum Kind { kString, kBool, kTuple } kind = kString;
  std::string text;
  bool boolean = false;
  std::vector<int64_t> tuple;
};

// A cursor over the header text, parsing the subset of Python literals numpy writes.
class HeaderParser {
 public:
  explicit HeaderParser(absl::string_view text) : text_(text) {}

  std::optional<std::map<std::string, Value>> Dict() {
    std::map<std::string, Value> dict;
    if (!Eat('{')) return std::nullopt;
    while (!Eat('}')) {
      std::optional<std::string> key = String();
      if (!key || !Eat(':')) return std::nullopt;
      std::optional<Value> value = Parse();
      if (!value) return std::nullopt;
      dict[*key] = *std::move(value);
      if (!Eat(',')) {
        if (!Eat('}')) return std::nullopt;
        break;
      }
    }
    SkipSpace();
    return at_ == text_.size() ? std::optional(dict) : std::nullopt;
  }

 private:
  void SkipSpace() {
    while (at_ < text_.size() && (text_[at_] == ' ' || text_[at_] == '\n')) ++at_;
  }
  bool Eat(char c) {
    SkipSpace();
    if (at_ < text_.size() && text_[at_] == c) {
      ++at_;
      return true;
    }
    return false;
  }
  bool EatWord(absl::string_view word) {
    SkipSpace();
    if (text_.substr(at_, word.size()) != word) return false;
    at_ += word.size();
    return true;
  }
  std::optional<std::string> String() {
    SkipSpace();
    if (at_ >= text_.size() || (text_[at_] != '\'' && text_[at_] != '"')) return std::nullopt;
    const char quote = text_[at_++];
    const size_t end = text_.find(quote, at_);
    if (end == absl::string_view::npos) return std::nullopt;
    std::string s(text_.substr(at_, end - at_));
    at_ = end + 1;
    return s;
  }
  std::optional<int64_t> Integer() {
    SkipSpace();
    const size_t start = at_;
    int64_t v = 0;
    while (at_ < text_.size() && text_[at_] >= '0' && text_[at_] <= '9') {
      if (v > (int64_t{1} << 50)) return std::nullopt;
      v = v * 10 + (text_[at_++] - '0');
    }
    if (at_ < text_.size() && text_[at_] == 'L') ++at_;  // Python 2 longs.
    return at_ == start ? std::nullopt : std::optional(v);
  }
  std::optional<Value> Parse() {
    Value v;
    SkipSpace();
    if (EatWord("True") || EatWord("False")) {
      v.kind = Value::kBool;
      v.boolean = absl::EndsWith(text_.substr(0, at_), "True");
      return v;
    }
    if (Eat('(')) {
      v.kind = Value::kTuple;
      while (!Eat(')')) {
        const std::optional<int64_t> n = Integer();
        if (!n) return std::nullopt;
        v.tuple.push_back(*n);
        if (!Eat(',')) {
          if (!Eat(')')) return std::nullopt;
          break;
        }
      }
      return v;
    }
    std::optional<std::string> s = String();
    if (!s) return std::nullopt;
    v.text = *std::move(s);
    return v;
  }

  absl::string_view text_;
  size_t at_ = 0;
};

uint32_t LittleEndian(absl::string_view bytes, size_t at, int width) {
  uint32_t v = 0;
  for (int i = width - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
  return v;
}

}  // namespace

float HalfToFloat(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000) << 16;
  uint32_t exponent = (half >> 10) & 0x1f, mantissa = half & 0x3ff;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // Infinity or NaN.
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;  // Zero.
  } else {
    // Subnormal: normalize the mantissa.
    exponent = 113;
    while ((mantissa & 0x400) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

absl::StatusOr<NpyArray> ParseNpy(absl::string_view bytes, absl::string_view name) {
  const auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("npy '", name, "': ", what));
  };
  if (bytes.size() < kMagicLen + 2 || bytes.substr(0, kMagicLen) != kMagic) {
    return bad("not a .npy file (no \\x93NUMPY magic string)");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  const int minor = static_cast<unsigned char>(bytes[7]);
  if (major < 1 || major > 3 || minor != 0) {
    return bad(absl::StrCat("format version ", major, ".", minor, " (1.0, 2.0 or 3.0 expected)"));
  }
  const size_t length_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + length_bytes) return bad("truncated header");
  const size_t header_len = LittleEndian(bytes, 8, static_cast<int>(length_bytes));
  const size_t data_at = 8 + length_bytes + header_len;
  if (bytes.size() < data_at) {
    return bad(absl::StrCat("truncated header (", header_len, " bytes announced, ",
                            bytes.size() - 8 - length_bytes, " present)"));
  }
  const std::optional<std::map<std::string, Value>> dict =
      HeaderParser(bytes.substr(8 + length_bytes, header_len)).Dict();
  if (!dict)
    return bad(absl::StrCat("malformed header '", bytes.substr(8 + length_bytes, header_len), "'"));
  const auto descr = dict->find("descr"), fortran = dict->find("fortran_order"),
             shape = dict->find("shape");
  if (descr == dict->end() || descr->second.kind != Value::kString || fortran == dict->end() ||
      fortran->second.kind != Value::kBool || shape == dict->end() ||
      shape->second.kind != Value::kTuple) {
    return bad(
        "the header needs 'descr' (a string), 'fortran_order' (a bool) and 'shape' (a "
        "tuple)");
  }
  const std::string& dtype = descr->second.text;
  if (dtype != "<f4" && dtype != "<f2") {
    return bad(absl::StrCat("dtype '", dtype,
                            "': only little-endian float32 ('<f4') and float16 ('<f2') are read"));
  }
  if (fortran->second.boolean) {
    return bad(
        "fortran_order arrays are not read: save a C-order array "
        "(np.ascontiguousarray)");
  }
  NpyArray array;
  array.shape = shape->second.tuple;
  int64_t count = 1;
  for (const int64_t d : array.shape) {
    if (d != 0 && count > (int64_t{1} << 40) / d) return bad("shape too large");
    count *= d;
  }
  const size_t item = dtype == "<f4" ? 4 : 2;
  const size_t data_bytes = bytes.size() - data_at;
  if (data_bytes != static_cast<size_t>(count) * item) {
    return bad(absl::StrCat("shape (", absl::StrJoin(array.shape, ", "), ") of ", dtype, " needs ",
                            count * item, " data bytes, the file has ", data_bytes));
  }
  array.data.resize(count);
  if (item == 4) {
    for (int64_t i = 0; i < count; ++i) {
      const uint32_t bits = LittleEndian(bytes, data_at + 4 * i, 4);
      std::memcpy(&array.data[i], &bits, 4);
    }
  } else {
    for (int64_t i = 0; i < count; ++i) {
      array.data[i] = HalfToFloat(static_cast<uint16_t>(LittleEndian(bytes, data_at + 2 * i, 2)));
    }
  }
  return array;
}

std::string NpyHeaderDict(absl::string_view descr, const std::vector<int64_t>& shape) {
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";  // A one-element tuple.
  return absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", dims, "), }");
}

std::string NpyPreamble(absl::string_view dict, int version) {
  const size_t fixed = kMagicLen + 2 + (version == 1 ? 2 : 4);  // Magic, version, length.
  const size_t padding = (64 - (fixed + dict.size() + 1) % 64) % 64;
  const uint32_t length = static_cast<uint32_t>(dict.size() + padding + 1);
  std::string out(kMagic, kMagicLen);
  out += static_cast<char>(version);
  out += '\0';
  for (size_t i = 0; i < fixed - kMagicLen - 2; ++i) {
    out += static_cast<char>((length >> (8 * i)) & 0xff);
  }
  absl::StrAppend(&out, dict, std::string(padding, ' '), "\n");
  return out;
}

absl::StatusOr<std::string> EncodeNpy(const std::vector<int64_t>& shape,
                                      absl::Span<const float> values) {
  int64_t count = 1;
  for (const int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat("EncodeNpy: negative dimension in shape (",
                                                     absl::StrJoin(shape, ", "), ")"));
    }
    count *= d;
  }
  if (count != static_cast<int64_t>(values.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("EncodeNpy: ", values.size(), " values for shape (",
                     absl::StrJoin(shape, ", "), "), which holds ", count));
  }
  std::string out = NpyPreamble(NpyHeaderDict("<f4", shape));
  const size_t header = out.size();
  out.resize(header + values.size() * sizeof(float));
  if (!values.empty())
    std::memcpy(out.data() + header, values.data(), values.size() * sizeof(float));
  return out;
}

}  // namespace mimo::data
