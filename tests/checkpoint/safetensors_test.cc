// Safetensors: files written and read back (tensors of every size including empty and scalar,
// metadata, slices), a file made by hand as Hugging Face's writer lays it out, and every header
// check: each malformed header, truncated or padded file gives its own clear error.
#include "checkpoint/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "common/crc32c.h"

namespace mimo::checkpoint {
namespace {

using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + name + "-" + std::to_string(::getpid());
}

// A file's bytes: the 8-byte length of `header`, `header`, then `data`.
std::string FileBytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}

absl::Status ParseError(const std::string& header, const std::string& data) {
  const std::string bytes = FileBytes(header, data);
  return ParseSafetensorsHeader(bytes, bytes.size()).status();
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(SafetensorsTest, WritesAndReadsBack) {
  const std::vector<float> a = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};      // (3, 4)
  const std::vector<uint16_t> b = {0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0};  // bf16 (5,)
  const int32_t c = 42;                                                      // I32 scalar
  const std::string path = TempPath("roundtrip.safetensors");
  const absl::StatusOr<FileDigest> written =
      WriteSafetensors(path,
                       {{.name = "layer.a", .dtype = "F32", .shape = {3, 4}, .data = a.data()},
                        {.name = "b", .dtype = "BF16", .shape = {5}, .data = b.data()},
                        {.name = "empty", .dtype = "I64", .shape = {0, 7}},
                        {.name = "c", .dtype = "I32", .shape = {}, .data = &c}},
                       {{"format", "pt"}, {"step", "100"}});
  ASSERT_TRUE(written.ok()) << written.status();
  const std::string bytes = Slurp(path);
  // The digest of what was written: the file's size and CRC-32C, as DigestOf reads them.
  EXPECT_EQ(*written,
            (FileDigest{.bytes = bytes.size(), .crc32c = Crc32c(bytes.data(), bytes.size())}));
  EXPECT_EQ(*DigestOf(path), *written);
  uint64_t length = 0;
  std::memcpy(&length, bytes.data(), 8);
  EXPECT_EQ(length % 8, 0u);  // Tensors 8-byte aligned.
  EXPECT_EQ(bytes.size(), 8 + length + 48 + 10 + 4);
  auto reader = SafetensorsReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const SafetensorsHeader& h = reader->header();
  EXPECT_EQ(h.metadata.at("step"), "100");
  ASSERT_EQ(h.tensors.size(), 4u);
  EXPECT_EQ(
      *h.Find("layer.a"),
      (TensorEntry{.name = "layer.a", .dtype = "F32", .shape = {3, 4}, .begin = 0, .end = 48}));
  EXPECT_EQ(h.Find("empty")->begin, h.Find("empty")->end);
  std::vector<float> a2(12);
  ASSERT_TRUE(reader->Read("layer.a", {reinterpret_cast<char*>(a2.data()), 48}).ok());
  EXPECT_EQ(a2, a);
  std::vector<uint16_t> b2(5);
  ASSERT_TRUE(reader->Read("b", {reinterpret_cast<char*>(b2.data()), 10}).ok());
  EXPECT_EQ(b2, b);
  int32_t c2 = 0;
  ASSERT_TRUE(reader->Read("c", {reinterpret_cast<char*>(&c2), 4}).ok());
  EXPECT_EQ(c2, 42);
  float row[4];
  ASSERT_TRUE(reader->ReadRange("layer.a", 16, {reinterpret_cast<char*>(row), 16}).ok());
  EXPECT_EQ(row[0], 5.0f);  // Row 1.
  EXPECT_EQ(reader->Read("missing", {}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reader->Read("b", {reinterpret_cast<char*>(b2.data()), 8}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(reader->ReadRange("layer.a", 40, {reinterpret_cast<char*>(row), 16}).code(),
            absl::StatusCode::kInvalidArgument);
  std::remove(path.c_str());
}

// As Hugging Face's writer lays a file out: keys in any order, metadata first or not, no
// padding required.
// Tensor by tensor, in pieces of any size: the same file as WriteSafetensors writes at once;
// bytes beyond the tensors are refused, missing ones reported by Finish.
TEST(SafetensorsTest, StreamsTensorsInPieces) {
  std::vector<float> a(10);
  std::iota(a.begin(), a.end(), 1.0f);
  const std::vector<uint16_t> b = {1, 2, 3};
  const std::vector<TensorToWrite> tensors = {
      {.name = "a", .dtype = "F32", .shape = {2, 5}, .data = a.data()},
      {.name = "b", .dtype = "U16", .shape = {3}, .data = b.data()}};
  const std::string whole = TempPath("whole.safetensors"),
                    streamed = TempPath("streamed.safetensors");
  const auto want = WriteSafetensors(whole, tensors, {{"k", "v"}});
  ASSERT_TRUE(want.ok());
  auto writer = SafetensorsStreamWriter::Create(streamed, tensors, {{"k", "v"}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  const char* pa = reinterpret_cast<const char*>(a.data());
  ASSERT_TRUE(writer->Append({pa, 7}).ok());  // Pieces that straddle elements and tensors.
  std::string rest(pa + 7, 33);
  rest.append(reinterpret_cast<const char*>(b.data()), 2);
  ASSERT_TRUE(writer->Append({rest.data(), rest.size()}).ok());
  EXPECT_EQ(writer->Append({rest.data(), 5}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(writer->Append({reinterpret_cast<const char*>(b.data()) + 2, 4}).ok());
  const auto got = writer->Finish();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, *want);
  EXPECT_EQ(Slurp(streamed), Slurp(whole));
  auto short_writer = SafetensorsStreamWriter::Create(streamed, tensors);
  ASSERT_TRUE(short_writer.ok());
  ASSERT_TRUE(short_writer->Append({pa, 40}).ok());
  const auto missing = short_writer->Finish();
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(missing.status().message(), HasSubstr("missing 6 bytes"));
  std::remove(whole.c_str());
  std::remove(streamed.c_str());
}

TEST(SafetensorsTest, ReadsAFileMadeByHand) {
  const std::string header =
      R"({"w":{"dtype":"F16","shape":[2,1],"data_offsets":[8,12]},"__metadata__":{"format":"pt"},)"
      R"("v":{"shape":[1],"dtype":"F64","data_offsets":[0,8]}})";
  const std::string bytes = FileBytes(header, std::string(12, 'x'));
  auto h = ParseSafetensorsHeader(bytes, bytes.size());
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->tensors[0].name, "v");  // In byte order.
  EXPECT_EQ(h->tensors[1].shape, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(h->metadata.at("format"), "pt");
  EXPECT_EQ(h->data_offset, 8 + header.size());
}

TEST(SafetensorsTest, RejectsEveryMalformedHeader) {
  struct Case {
    const char* what;
    std::string header;
    std::string data;
    absl::StatusCode code;
    const char* message;
  };
  const std::string ok_tensor = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<Case> cases = {
      {"not JSON", "{\"t\":", "", absl::StatusCode::kInvalidArgument, "not valid JSON"},
      {"an array", "[1,2]", "", absl::StatusCode::kInvalidArgument, "not a JSON object"},
      {"a tensor not an object", R"({"t":5})", "", absl::StatusCode::kInvalidArgument,
       "is not an object"},
      {"no dtype", R"({"t":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, 0),
       absl::StatusCode::kInvalidArgument, "dtype missing"},
      {"unknown dtype", R"({"t":{"dtype":"F31","shape":[1],"data_offsets":[0,4]}})",
       std::string(4, 0), absl::StatusCode::kInvalidArgument, "dtype missing"},
      {"negative shape", R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
       std::string(4, 0), absl::StatusCode::kInvalidArgument, "non-negative integer"},
      {"fractional shape", R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})",
       std::string(4, 0), absl::StatusCode::kInvalidArgument, "non-negative integer"},
      {"overflowing shape",
       R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})",
       std::string(4, 0), absl::StatusCode::kInvalidArgument, "overflows"},
      {"three offsets", R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})",
       std::string(4, 0), absl::StatusCode::kInvalidArgument, "data_offsets"},
      {"decreasing offsets", R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})",
       std::string(4, 0), absl::StatusCode::kInvalidArgument, "data_offsets"},
      {"wrong byte length", R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
       std::string(8, 0), absl::StatusCode::kInvalidArgument, "8 bytes for 3 elements"},
      {"past the file", "{" + ok_tensor + "}", std::string(4, 0), absl::StatusCode::kDataLoss,
       "ends at byte 8"},
      {"overlapping", "{" + ok_tensor + R"(,"u":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       std::string(8, 0), absl::StatusCode::kInvalidArgument, "another tensor's bytes"},
      {"a hole", R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, 0),
       absl::StatusCode::kInvalidArgument, "a hole begins at 0"},
      {"trailing bytes", "{" + ok_tensor + "}", std::string(12, 0),
       absl::StatusCode::kInvalidArgument, "the tensors hold 8 bytes, the file 12"},
      {"a duplicate name", "{" + ok_tensor + "," + ok_tensor + "}", std::string(8, 0),
       absl::StatusCode::kInvalidArgument, "key \"t\" given twice"},
      {"a field given twice",
       R"({"t":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}})", std::string(8, 0),
       absl::StatusCode::kInvalidArgument, "key \"dtype\" given twice"},
      {"metadata not strings", "{" + ok_tensor + R"(,"__metadata__":{"a":1}})", std::string(8, 0),
       absl::StatusCode::kInvalidArgument, "is not a string"},
      {"an unknown field",
       R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"strides":[1]}})", std::string(8, 0),
       absl::StatusCode::kInvalidArgument, "fields other than"},
      {"an empty name", R"({"":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})", "",
       absl::StatusCode::kInvalidArgument, "empty name"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const absl::Status s = ParseError(c.header, c.data);
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_THAT(s.message(), HasSubstr(c.message));
  }
}

TEST(SafetensorsTest, RejectsBadLengthsAndTruncatedFiles) {
  EXPECT_EQ(ParseSafetensorsHeader("abc", 3).status().code(), absl::StatusCode::kDataLoss);
  std::string huge(8, '\0');
  const uint64_t length = kMaxHeaderBytes + 1;
  std::memcpy(huge.data(), &length, 8);
  const absl::Status too_long = ParseSafetensorsHeader(huge, uint64_t{1} << 40).status();
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_long.message(), HasSubstr("exceeds the limit"));
  const std::string bytes = FileBytes("{}", "");
  EXPECT_EQ(ParseSafetensorsHeader(bytes.substr(0, 9), 9).status().code(),
            absl::StatusCode::kDataLoss);                         // The header runs past the file.
  EXPECT_TRUE(ParseSafetensorsHeader(bytes, bytes.size()).ok());  // No tensors at all.
  // A written file cut short: Open names the file and the missing bytes.
  const std::vector<float> a(16, 1.0f);
  const std::string path = TempPath("truncated.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(path, {{.name = "a", .dtype = "F32", .shape = {16}, .data = a.data()}})
          .ok());
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(Slurp(path).size() - 4)), 0);
  const auto reader = SafetensorsReader::Open(path);
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(reader.status().message(), HasSubstr(path));
  EXPECT_EQ(SafetensorsReader::Open(path + ".missing").status().code(),
            absl::StatusCode::kNotFound);
  std::remove(path.c_str());
}

TEST(SafetensorsTest, WriterRefusesBadTensorsBeforeWriting) {
  const float x = 1;
  const std::string path = TempPath("refused.safetensors");
  for (const std::vector<TensorToWrite>& bad :
       {std::vector<TensorToWrite>{{.name = "a", .dtype = "F32", .shape = {1}, .data = &x},
                                   {.name = "a", .dtype = "F32", .shape = {1}, .data = &x}},
        std::vector<TensorToWrite>{{.name = "a", .dtype = "float", .shape = {1}, .data = &x}},
        std::vector<TensorToWrite>{
            {.name = "__metadata__", .dtype = "F32", .shape = {1}, .data = &x}},
        std::vector<TensorToWrite>{{.name = "a", .dtype = "F32", .shape = {-1}, .data = &x}},
        std::vector<TensorToWrite>{{.name = "a", .dtype = "F32", .shape = {1}}}}) {
    EXPECT_EQ(WriteSafetensors(path, bad).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_FALSE(std::ifstream(path).good());  // Nothing created.
  }
}

}  // namespace
}  // namespace mimo::checkpoint
