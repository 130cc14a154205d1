// ParseNpy: float32 and float16 arrays (versions 1.0 and 2.0), and refusals that say why: bad
// magic, dtype, fortran order, header, data size. EncodeNpy: what numpy writes, read back.
#include "data/npy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "tests/data/test_files.h"

namespace mimo::data {
namespace {

using ::testing::HasSubstr;
using testing::MakeNpy;

TEST(NpyTest, Float32) {
  const std::vector<float> values = {0.5f, -1.25f, 3e-8f, 1e20f, 0.0f, -7.0f};
  auto a = ParseNpy(MakeNpy({3, 2}, values), "x.npy");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(a->data, values);
  a = ParseNpy(MakeNpy({6}, values, "<f4", 2), "x.npy");  // Version 2.0, a 1-D shape "(6,)".
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{6}));
  EXPECT_EQ(a->data, values);
  a = ParseNpy(MakeNpy({0, 4}, {}), "empty.npy");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{0, 4}));
  EXPECT_TRUE(a->data.empty());
}

TEST(NpyTest, Float16) {
  const std::vector<float> values = {0.5f, -1.25f, 65504.0f, 1.0f / 1024, -0.0f, 3.0f};
  auto a = ParseNpy(MakeNpy({2, 3}, values, "<f2"), "h.npy");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->data, values);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // The smallest subnormal.
  EXPECT_EQ(HalfToFloat(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_TRUE(std::isinf(HalfToFloat(0xfc00)) && HalfToFloat(0xfc00) < 0);
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
}

TEST(NpyTest, RefusesWhatItCannotRead) {
  const auto error = [](const std::string& bytes) {
    auto a = ParseNpy(bytes, "s/0001.mel.npy");
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(a.status().message(), HasSubstr("s/0001.mel.npy"));
    return std::string(a.status().message());
  };
  EXPECT_THAT(error("not numpy at all"), HasSubstr("magic"));
  EXPECT_THAT(error(MakeNpy({2}, {1, 2}, ">f4")), HasSubstr("'>f4'"));
  EXPECT_THAT(error(MakeNpy({2}, {1, 2}, "<i4")), HasSubstr("'<i4'"));
  EXPECT_THAT(error(MakeNpy({2}, {1, 2}, "<f8")), HasSubstr("float32"));
  EXPECT_THAT(error(MakeNpy({2, 1}, {1, 2}, "<f4", 1,
                            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 1), }")),
              HasSubstr("fortran_order"));
  EXPECT_THAT(error(MakeNpy({2}, {1, 2}, "<f4", 1, "{'descr': '<f4', 'shape': (2,), }")),
              HasSubstr("'fortran_order'"));
  EXPECT_THAT(error(MakeNpy({2}, {1, 2}, "<f4", 1, "{'descr': '<f4', 'shape': (2,")),
              HasSubstr("malformed header"));
  EXPECT_THAT(error(MakeNpy({3}, {1, 2})), HasSubstr("needs 12 data bytes, the file has 8"));
  std::string bad_version = MakeNpy({2}, {1, 2});
  bad_version[6] = 9;
  EXPECT_THAT(error(bad_version), HasSubstr("version 9.0"));
  EXPECT_THAT(error(MakeNpy({2}, {1, 2}).substr(0, 30)), HasSubstr("truncated header"));
}

TEST(NpyTest, EncodeNpyWritesWhatNumpyWrites) {
  const std::vector<float> values = {0.5f, -1.25f, 3e-8f, 1e20f, 0.0f, -7.0f};
  auto bytes = EncodeNpy({3, 2}, values);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  // numpy.save's header for a (3, 2) float32 array: 128 bytes, data from there.
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }";
  ASSERT_EQ(bytes->size(), 128u + 6 * 4);
  EXPECT_EQ(bytes->substr(0, 10), std::string("\x93NUMPY\x01\x00\x76\x00", 10));
  EXPECT_EQ(bytes->substr(10, dict.size()), dict);
  EXPECT_EQ(bytes->substr(10 + dict.size(), 118 - dict.size()),
            std::string(117 - dict.size(), ' ') + "\n");
  auto a = ParseNpy(*bytes, "x.npy");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(a->data, values);
  for (const std::vector<int64_t>& shape :
       {std::vector<int64_t>{}, std::vector<int64_t>{1}, std::vector<int64_t>{1, 1, 1}}) {
    a = ParseNpy(*EncodeNpy(shape, {2.5f}), "s.npy");
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->shape, shape);
    EXPECT_EQ(a->data, std::vector<float>{2.5f});
  }
  EXPECT_EQ(NpyHeaderDict("<f2", {7}), "{'descr': '<f2', 'fortran_order': False, 'shape': (7,), }");
  EXPECT_EQ(NpyPreamble("{}", 2).size() % 64, 0u);
}

TEST(NpyTest, EncodeNpyRefusals) {
  EXPECT_THAT(EncodeNpy({3, 2}, {1, 2}).status().message(),
              HasSubstr("2 values for shape (3, 2), which holds 6"));
  EXPECT_THAT(EncodeNpy({-1, 2}, {}).status().message(), HasSubstr("negative dimension"));
}

}  // namespace
}  // namespace mimo::data
