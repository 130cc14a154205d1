// Tests of mimo/packed_sequences.h.
#include "mimo/packed_sequences.h"

#include "gtest/gtest.h"

namespace mimo {
namespace {

TEST(PackedSequencesTest, BoundariesAndPositions) {
  auto ops = kernels::NewCpuOps();
  auto s = PackedSequences::Create(*ops, {3, 0, 2});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->tokens(), 5);
  EXPECT_EQ(s->num_seqs(), 3);
  EXPECT_EQ(s->max_seqlen(), 3);
  EXPECT_EQ(s->host_cu_seqlens(), (std::vector<int32_t>{0, 3, 3, 5}));
  EXPECT_EQ(std::vector<int32_t>(s->cu_seqlens(), s->cu_seqlens() + 4),
            (std::vector<int32_t>{0, 3, 3, 5}));
  EXPECT_EQ(std::vector<int32_t>(s->positions(), s->positions() + 5),
            (std::vector<int32_t>{0, 1, 2, 0, 1}));
}

TEST(PackedSequencesTest, RejectsEmptyAndNegative) {
  auto ops = kernels::NewCpuOps();
  EXPECT_EQ(PackedSequences::Create(*ops, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PackedSequences::Create(*ops, {0, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  const auto negative = PackedSequences::Create(*ops, {2, -1});
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(negative.status().message().find("sequence 1"), absl::string_view::npos);
}

}  // namespace
}  // namespace mimo
