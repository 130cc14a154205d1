// TarWriter: archives TarReader reads back (plain and GNU long names, empty and block-sized
// members), the layout (512-byte blocks, two zero blocks at the end, the checksum), header
// refusals and file errors naming the file.
#include "data/tar_writer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "data/tar_reader.h"
#include "tests/data/test_files.h"

namespace mimo::data {
namespace {

using ::testing::HasSubstr;
using testing::PatternBytes;
using testing::ReadFile;
using testing::TempDir;

TEST(TarWriterTest, TarReaderReadsItBack) {
  TempDir dir;
  const std::string path = dir.File("a.tar");
  const std::string name100 = std::string(96, 'a') + ".txt";  // Fits the header exactly.
  const std::string long_name = "deep/" + std::string(150, 'x') + "/000001.mel.npy";
  const std::vector<std::pair<std::string, std::string>> files = {
      {"000000.png", PatternBytes(1000, 1)},
      {"000000.txt", "a red circle"},
      {"empty.txt", ""},
      {"block.bin", PatternBytes(512, 2)},
      {name100, "exactly 100"},
      {long_name, PatternBytes(3, 3)},
  };
  auto tar = TarWriter::Create(path);
  ASSERT_TRUE(tar.ok()) << tar.status();
  for (const auto& [name, data] : files) ASSERT_TRUE((*tar)->AddFile(name, data).ok()) << name;
  ASSERT_TRUE((*tar)->Close().ok());

  auto reader = TarReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const std::vector<TarMember>& m = (*reader)->members();
  ASSERT_EQ(m.size(), files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    EXPECT_EQ(m[i].name, files[i].first);
    EXPECT_EQ(m[i].offset % kTarBlockSize, 0);
    EXPECT_EQ(*(*reader)->Read(m[i]), files[i].second) << files[i].first;
  }

  // Blocks: header and data of each member (3 + 2 + 1 + 2 + 2), the long name's 'L' header and
  // name block before its own (4), the two end blocks.
  const std::string bytes = ReadFile(path);
  const int64_t expected = 16 * kTarBlockSize;
  EXPECT_EQ(static_cast<int64_t>(bytes.size()), expected);
  EXPECT_EQ(bytes.substr(bytes.size() - 2 * kTarBlockSize), std::string(2 * kTarBlockSize, '\0'));
}

TEST(TarWriterTest, HeaderBlockLayoutAndChecksum) {
  auto block = TarHeaderBlock({.name = "000007.txt", .size = 1234, .mtime = 1700000000});
  ASSERT_TRUE(block.ok()) << block.status();
  ASSERT_EQ(block->size(), 512u);
  EXPECT_EQ(block->substr(0, 11), std::string("000007.txt\0", 11));
  EXPECT_EQ(block->substr(100, 8), std::string("0000644\0", 8));
  EXPECT_EQ(block->substr(124, 12), std::string("00000002322\0", 12));  // 1234 in octal.
  EXPECT_EQ(block->substr(136, 12), std::string("14524770400\0", 12));
  EXPECT_EQ((*block)[156], '0');
  EXPECT_EQ(block->substr(257, 8), std::string("ustar\0"
                                               "00",
                                               8));
  // The checksum: every byte summed with the field itself counted as spaces.
  unsigned sum = 0;
  for (int i = 0; i < 512; ++i) {
    const bool in_field = i >= kTarChecksumOffset && i < kTarChecksumOffset + kTarChecksumWidth;
    sum += in_field ? ' ' : static_cast<unsigned char>((*block)[i]);
  }
  char digits[8];
  std::snprintf(digits, sizeof(digits), "%06o", sum);
  EXPECT_EQ(block->substr(kTarChecksumOffset, 8), std::string(digits) + std::string("\0 ", 2));
}

TEST(TarWriterTest, Base256Sizes) {
  auto forced = TarHeaderBlock({.name = "b", .size = 700, .base256_size = true});
  ASSERT_TRUE(forced.ok());
  EXPECT_EQ(static_cast<unsigned char>((*forced)[124]), 0x80u);
  EXPECT_EQ(static_cast<unsigned char>((*forced)[134]), 700u >> 8);
  EXPECT_EQ(static_cast<unsigned char>((*forced)[135]), 700u & 0xff);
  // 8 GiB does not fit 11 octal digits: base-256 without asking.
  auto big = TarHeaderBlock({.name = "big", .size = int64_t{1} << 33});
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(static_cast<unsigned char>((*big)[124]), 0x80u);
  EXPECT_EQ(static_cast<unsigned char>((*big)[131]), 2u);  // 2^33 = 2 << 32.
}

TEST(TarWriterTest, HeaderRefusals) {
  EXPECT_THAT(TarHeaderBlock({.name = std::string(101, 'n')}).status().message(),
              HasSubstr("longer than 100 bytes"));
  EXPECT_THAT(TarHeaderBlock({.name = "p", .prefix = std::string(156, 'p')}).status().message(),
              HasSubstr("prefix"));
  EXPECT_THAT(TarHeaderBlock({.name = "s", .size = -1}).status().message(),
              HasSubstr("negative size"));
  EXPECT_THAT(TarHeaderBlock({.name = "m", .mode = 0100000000}).status().message(),
              HasSubstr("mode"));
}

TEST(TarWriterTest, ErrorsNameTheFile) {
  TempDir dir;
  const std::string missing = dir.File("no/such/dir/a.tar");
  auto tar = TarWriter::Create(missing);
  EXPECT_EQ(tar.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tar.status().message(), HasSubstr(missing));

  const std::string path = dir.File("b.tar");
  tar = TarWriter::Create(path);
  ASSERT_TRUE(tar.ok());
  EXPECT_EQ((*tar)->AddFile("", "x").code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*tar)->Close().ok());
  const absl::Status after = (*tar)->AddFile("a.txt", "x");
  EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(after.message(), HasSubstr(path));
  EXPECT_EQ((*tar)->Close().code(), absl::StatusCode::kFailedPrecondition);
  // An empty archive: just the end blocks, which TarReader accepts.
  auto reader = TarReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_TRUE((*reader)->members().empty());
}

TEST(TarWriterTest, WithoutCloseTheArchiveIsIncomplete) {
  TempDir dir;
  const std::string path = dir.File("c.tar");
  {
    auto tar = TarWriter::Create(path);
    ASSERT_TRUE(tar.ok());
    ASSERT_TRUE((*tar)->AddFile("a.txt", "x").ok());
  }
  EXPECT_EQ(TarReader::Open(path).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace mimo::data
