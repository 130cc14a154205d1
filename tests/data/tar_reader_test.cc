// TarReader on archives the test writes: plain, ustar-prefixed, GNU long and pax names, base-256
// sizes; directories skipped, hard links and symlinks given their targets' data (or listed when
// they name no member); corrupt checksums, truncated files and missing ones refused with the
// file and offset named; members read back by pread, also from many threads.
#include "data/tar_reader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/data/test_files.h"

namespace mimo::data {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
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

TEST(TarReaderTest, LongLinkChainsResolveInLinearTimeUpToFortyHops) {
  // 20000 symlinks, each to the next, the last to a file: one walk, not 20000 passes (which took
  // minutes). Only the 40 nearest the file resolve, as a kernel's path walk would.
  TarBuilder tar;
  constexpr int kChain = 20000;
  for (int i = 0; i < kChain; ++i) {
    tar.Link(absl::StrCat("l", i, ".png"), '2', absl::StrCat("l", i + 1, ".png"));
  }
  tar.File(absl::StrCat("l", kChain, ".png"), "end");
  TempDir dir;
  const std::string path = dir.File("chain.tar");
  WriteFile(path, tar.Finish());
  auto reader = TarReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const std::vector<TarMember>& m = (*reader)->members();
  ASSERT_EQ(m.size(), 41u);  // The file and the 40 links within 40 hops of it.
  for (const TarMember& member : m) EXPECT_EQ(*(*reader)->Read(member), "end") << member.name;
  EXPECT_EQ(m.front().name, absl::StrCat("l", kChain - 40, ".png"));
  EXPECT_EQ((*reader)->skipped_link_count(), kChain - 40);
  EXPECT_EQ((*reader)->skipped_links().size(), TarReader::kMaxListedLinks);
}

TEST(TarReaderTest, LinksAreMembersWithTheirTargetsData) {
  // A hard link names an earlier member from the root; a symlink a member relative to its own
  // folder, earlier or later, through other symlinks. Both used to be skipped, so their samples
  // lost an image or caption without a word.
  TempDir dir;
  const std::string long_target = std::string(110, 'l') + "/0002.txt";
  const std::string archive =
      TarBuilder()
          .File("s/0000.png", "png zero")
          .File("s/0000.txt", "caption zero")
          .Link("s/0001.png", '1', "s/0000.png")                       // 2
          .Link("s/0001.txt", '1', "./s/0000.txt")                     // 3
          .Link("s/0002.png", '2', "0000.png")                         // 4: same folder.
          .Link("t/0003.png", '2', "../s/0000.png")                    // 5
          .Link("t/0004.png", '2', "0005.png")                         // 6: a later member.
          .Link("t/0004.txt", '2', "../t/0003.png")                    // 7: a symlink to a symlink.
          .File("t/0005.png", "png five")                              // 8
          .File(long_target, "long", TarBuilder::NameStyle::kGnuLong)  // 9
          .Link("t/0006.txt", '2', "../" + long_target, /*gnu_long_target=*/true)  // 10
          .Link("s/0007.png", '1', "s/later.png")  // Skipped: not earlier.
          .Link("s/0008.png", '2', "/etc/passwd")  // Skipped: absolute.
          .Link("s/0009.png", '2', "../../x.png")  // Skipped: outside the archive.
          .Link("s/0010.png", '2', "missing.png")  // Skipped: no such member.
          .Link("s/0011.png", '2', "0012.png")     // Skipped: a cycle.
          .Link("s/0012.png", '2', "0011.png")
          .File("s/later.png", "later")
          .Finish();
  const std::string path = dir.File("links.tar");
  WriteFile(path, archive);
  auto reader = TarReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const std::vector<TarMember>& m = (*reader)->members();
  std::vector<std::pair<std::string, std::string>> got;
  for (const TarMember& member : m) got.emplace_back(member.name, *(*reader)->Read(member));
  EXPECT_THAT(got, ElementsAre(Pair("s/0000.png", "png zero"), Pair("s/0000.txt", "caption zero"),
                               Pair("s/0001.png", "png zero"), Pair("s/0001.txt", "caption zero"),
                               Pair("s/0002.png", "png zero"), Pair("t/0003.png", "png zero"),
                               Pair("t/0004.png", "png five"), Pair("t/0004.txt", "png zero"),
                               Pair("t/0005.png", "png five"), Pair(long_target, "long"),
                               Pair("t/0006.txt", "long"), Pair("s/later.png", "later")));
  EXPECT_THAT((*reader)->skipped_links(),
              ElementsAre("'s/0007.png' (hard link to 's/later.png'): names no earlier member",
                          "'s/0008.png' (symlink to '/etc/passwd'): outside the archive",
                          "'s/0009.png' (symlink to '../../x.png'): outside the archive",
                          "'s/0010.png' (symlink to 'missing.png'): names no member of it",
                          "'s/0011.png' (symlink to '0012.png'): names no member of it",
                          "'s/0012.png' (symlink to '0011.png'): names no member of it"));
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
