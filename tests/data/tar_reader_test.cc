// TarReader on archives the test writes: plain, ustar-prefixed, GNU long and pax names, base-256
// sizes; directories and links skipped; corrupt checksums, truncated files and missing ones
// refused with the file and offset named; members read back by pread, also from many threads.
#include "data/tar_reader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "tests/data/test_files.h"

namespace mimo::data {
namespace {

using ::testing::HasSubstr;
using testing::PatternBytes;
using testing::TarBuilder;
using testing::TempDir;
using testing::WriteFile;

TEST(TarReaderTest, IndexesRegularFilesOfEveryNameStyle) {
  TempDir dir;
  const std::string long_name = "deep/" + std::string(120, 'x') + "/0001.jpg";
  const std::string pax_name = "pax/" + std::string(200, 'p') + ".txt";
  const std::string ustar_name = std::string(80, 'u') + "/" + std::string(60, 'n') + ".png";
  const std::string archive =
      TarBuilder()
          .Special("dir/", '5')
          .File("dir/0000.txt", "hello")
          .File("dir/0000.bin", PatternBytes(1000, 3))
          .Special("dir/link", '2')
          .File(long_name, PatternBytes(512, 1), TarBuilder::NameStyle::kGnuLong)
          .File(pax_name, "pax data", TarBuilder::NameStyle::kPaxPath)
          .File(ustar_name, "", TarBuilder::NameStyle::kUstar)
          .Base256File("big.npy", PatternBytes(700, 5))
          .Finish();
  const std::string path = dir.File("a.tar");
  WriteFile(path, archive);
  auto reader = TarReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const std::vector<TarMember>& m = (*reader)->members();
  ASSERT_EQ(m.size(), 6u);
  EXPECT_EQ(m[0].name, "dir/0000.txt");
  EXPECT_EQ(m[1].name, "dir/0000.bin");
  EXPECT_EQ(m[2].name, long_name);
  EXPECT_EQ(m[3].name, pax_name);
  EXPECT_EQ(m[4].name, ustar_name);
  EXPECT_EQ(m[5].name, "big.npy");
  EXPECT_EQ(m[0].size, 5);
  EXPECT_EQ(m[1].size, 1000);
  EXPECT_EQ(m[4].size, 0);
  EXPECT_EQ(m[5].size, 700);
  EXPECT_EQ(m[0].offset % 512, 0);
  EXPECT_EQ(*(*reader)->Read(m[0]), "hello");
  EXPECT_EQ(*(*reader)->Read(m[1]), PatternBytes(1000, 3));
  EXPECT_EQ(*(*reader)->Read(m[2]), PatternBytes(512, 1));
  EXPECT_EQ(*(*reader)->Read(m[3]), "pax data");
  EXPECT_EQ(*(*reader)->Read(m[4]), "");
  EXPECT_EQ(*(*reader)->Read(m[5]), PatternBytes(700, 5));
  EXPECT_EQ((*reader)->file_size(), static_cast<int64_t>(archive.size()));
}

TEST(TarReaderTest, ConcurrentReadsSeeTheirOwnMembers) {
  TempDir dir;
  TarBuilder builder;
  for (int i = 0; i < 16; ++i) builder.File("m" + std::to_string(i), PatternBytes(300 + 97 * i, i));
  WriteFile(dir.File("a.tar"), builder.Finish());
  auto reader = TarReader::Open(dir.File("a.tar"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<std::thread> threads;
  std::vector<int> wrong(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round) {
        for (int i = t; i < 16; i += 4) {
          auto data = (*reader)->Read((*reader)->members()[i]);
          if (!data.ok() || *data != PatternBytes(300 + 97 * i, i)) ++wrong[t];
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong, std::vector<int>(4, 0));
}

TEST(TarReaderTest, CorruptChecksumNamesTheFileAndOffset) {
  TempDir dir;
  std::string archive = TarBuilder().File("a.txt", "aaa").File("b.txt", "bbb").Finish();
  archive[1024 + 3] ^= 0x20;  // The second header's name: its checksum no longer matches.
  WriteFile(dir.File("bad.tar"), archive);
  auto reader = TarReader::Open(dir.File("bad.tar"));
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(reader.status().message(), HasSubstr(dir.File("bad.tar")));
  EXPECT_THAT(reader.status().message(), HasSubstr("offset 1024"));
  EXPECT_THAT(reader.status().message(), HasSubstr("checksum"));

  WriteFile(dir.File("text.tar"), std::string(2048, 'z'));  // Not a tar file at all.
  EXPECT_EQ(TarReader::Open(dir.File("text.tar")).status().code(), absl::StatusCode::kDataLoss);
}

TEST(TarReaderTest, TruncatedFilesAreRefused) {
  TempDir dir;
  const std::string archive =
      TarBuilder().File("a.txt", "aaa").File("b.bin", PatternBytes(2000, 1)).Finish();
  // Cut inside b.bin's data: the member's data does not fit.
  WriteFile(dir.File("data.tar"), archive.substr(0, 1024 + 512 + 700));
  auto reader = TarReader::Open(dir.File("data.tar"));
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(reader.status().message(), HasSubstr("'b.bin' at offset 1024"));
  EXPECT_THAT(reader.status().message(), HasSubstr("truncated"));
  // Cut inside a header.
  WriteFile(dir.File("header.tar"), archive.substr(0, 1024 + 100));
  reader = TarReader::Open(dir.File("header.tar"));
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(reader.status().message(), HasSubstr("partial header at offset 1024"));
  // Cut before the end-of-archive blocks.
  WriteFile(dir.File("end.tar"), archive.substr(0, archive.size() - 1024));
  reader = TarReader::Open(dir.File("end.tar"));
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(reader.status().message(), HasSubstr("end-of-archive"));
  // Truncated after Open: Read says so.
  WriteFile(dir.File("later.tar"), archive);
  reader = TarReader::Open(dir.File("later.tar"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ(truncate(dir.File("later.tar").c_str(), 1024 + 512 + 100), 0);
  EXPECT_EQ((*reader)->Read((*reader)->members()[1]).status().code(), absl::StatusCode::kDataLoss);
}

TEST(TarReaderTest, MissingFileIsNotFound) {
  auto reader = TarReader::Open("/nonexistent/shard-000.tar");
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(reader.status().message(), HasSubstr("/nonexistent/shard-000.tar"));
}

TEST(TarReaderTest, EmptyArchiveHasNoMembers) {
  TempDir dir;
  WriteFile(dir.File("empty.tar"), TarBuilder().Finish());
  auto reader = TarReader::Open(dir.File("empty.tar"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_TRUE((*reader)->members().empty());
}

}  // namespace
}  // namespace mimo::data
