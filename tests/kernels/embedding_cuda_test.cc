// Embedding's CUDA kernels against the CPU twin: the lookup bitwise equal (zeros and a count for
// bad ids), the backward bitwise equal (the same fp32 additions in the same order) on skewed ids
// with many duplicates, overwrite and accumulate, and runs placed on the backward's chunk grid; a
// missing workspace is refused. Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <utility>
#include <vector>

#include "kernels/embedding.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class EmbeddingCudaTest : public CudaOpTest {};

TEST_P(EmbeddingCudaTest, MatchesTheCpuTwinBitwise) {
  const DType dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  struct Size {
    int64_t vocab, tokens, dim, first_id;
  };
  // Size{2, 1500, 300, 0}: two runs of ~750 sorted positions over six chunks, cut mid-run. The
  // last: a vocabulary-parallel member's rows, ids [1000, 1037).
  for (const Size& s : {Size{1, 1, 1, 0}, Size{37, 301, 19, 0}, Size{50257, 8192, 768, 0},
                        Size{2, 1500, 300, 0}, Size{37, 301, 19, 1000}}) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(dtype) << " vocab " << s.vocab << " tokens " << s.tokens << " dim "
                 << s.dim << " first_id " << s.first_id);
    const HostData table = RandomData(dtype, s.vocab * s.dim, random, -1, 1);
    const HostData dout = RandomData(dtype, s.tokens * s.dim, random, -1, 1);
    std::vector<int32_t> ids(s.tokens);
    // Skewed, as token frequencies are: half the tokens share 4 ids.
    for (int64_t t = 0; t < s.tokens; ++t) {
      ids[t] =
          static_cast<int32_t>(s.first_id + (random() % 2 ? random() % std::min<int64_t>(4, s.vocab)
                                                          : random() % s.vocab));
    }
    if (s.tokens > 3) ids[3] = -1;
    if (s.first_id > 0) {  // Another member's ids, just below and just above.
      ids[4] = static_cast<int32_t>(s.first_id - 1);
      ids[5] = static_cast<int32_t>(s.first_id + s.vocab);
    }
    const DeviceBuffer d_table(table.bytes), d_dout(dout.bytes),
        d_ids(BytesOf(ids.data(), ids.size() * 4)), d_bad(BytesOf("\0\0\0\0", 4));
    const DeviceBuffer d_out(s.tokens * s.dim * DTypeSize(dtype));
    ASSERT_TRUE(LaunchEmbedding({.dtype = dtype,
                                 .table = d_table.get(),
                                 .ids = d_ids.as<const int32_t>(),
                                 .out = d_out.get(),
                                 .bad_ids = d_bad.as<int32_t>(),
                                 .vocab = s.vocab,
                                 .tokens = s.tokens,
                                 .dim = s.dim,
                                 .first_id = s.first_id},
                                nullptr)
                    .ok());
    HostData want_out = PoisonedData(dtype, s.tokens * s.dim);
    int32_t want_bad = 0;
    ASSERT_TRUE(EmbeddingCpu({.dtype = dtype,
                              .table = table.data(),
                              .ids = ids.data(),
                              .out = want_out.data(),
                              .bad_ids = &want_bad,
                              .vocab = s.vocab,
                              .tokens = s.tokens,
                              .dim = s.dim,
                              .first_id = s.first_id})
                    .ok());
    EXPECT_EQ(d_out.Bytes(), want_out.bytes);
    EXPECT_EQ(d_bad.Bytes(), BytesOf(&want_bad, 4));

    const size_t workspace_bytes = EmbeddingBackwardWorkspaceBytes(s.tokens, s.dim);
    const DeviceBuffer workspace(workspace_bytes);
    const DeviceBuffer d_dtable(s.vocab * s.dim * 4);
    std::vector<float> want_dtable(s.vocab * s.dim);
    for (bool accumulate : {false, true}) {
      EmbeddingBackwardParams b{.dtype = dtype,
                                .dout = d_dout.get(),
                                .ids = d_ids.as<const int32_t>(),
                                .dtable = d_dtable.as<float>(),
                                .vocab = s.vocab,
                                .tokens = s.tokens,
                                .dim = s.dim,
                                .first_id = s.first_id,
                                .accumulate = accumulate,
                                .workspace = workspace.get(),
                                .workspace_bytes = workspace_bytes};
      ASSERT_TRUE(LaunchEmbeddingBackward(b, nullptr).ok());
      b.dout = dout.data();
      b.ids = ids.data();
      b.dtable = want_dtable.data();
      ASSERT_TRUE(EmbeddingBackwardCpu(b).ok());
      EXPECT_EQ(d_dtable.Bytes(), BytesOf(want_dtable.data(), want_dtable.size() * 4))
          << (accumulate ? "accumulating" : "overwriting");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, EmbeddingCudaTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// Runs placed on the chunk grid (the table holds ids 1-4): id 0, below the table, crosses the
// first chunk boundary (sorted positions 0-299); id 1 ends exactly at a boundary (511); id 2 starts
// at one and crosses the next; id 3 starts at a boundary and ends mid-chunk; id 4 is a short run;
// id 9, above the table, crosses a boundary at the end. Bitwise against the CPU twin, and nothing
// written outside the table: the rows around it are guards.
TEST_F(EmbeddingCudaTest, RunsOnTheChunkGridMatchTheCpuTwin) {
  const int64_t vocab = 4, dim = 33, first_id = 1;
  std::vector<int32_t> ids;
  for (const auto& [id, count] : std::vector<std::pair<int32_t, int>>{
           {0, 300}, {1, 212}, {2, 512}, {3, 600}, {4, 37}, {9, 300}}) {
    ids.insert(ids.end(), count, id);
  }
  std::mt19937 random(11);
  std::shuffle(ids.begin(), ids.end(), random);  // Token order is not sorted order.
  const auto tokens = static_cast<int64_t>(ids.size());
  const HostData dout = RandomData(DType::kBF16, tokens * dim, random, -1, 1);
  // Rows -1 and vocab of the buffer are guards, poisoned.
  std::vector<float> init((vocab + 2) * dim, 0.25f);
  for (int64_t d = 0; d < dim; ++d) init[d] = init[(vocab + 1) * dim + d] = 1e30f;
  const DeviceBuffer d_dout(dout.bytes), d_ids(BytesOf(ids.data(), ids.size() * 4)),
      d_dtable(BytesOf(init.data(), init.size() * 4));
  const size_t workspace_bytes = EmbeddingBackwardWorkspaceBytes(tokens, dim);
  const DeviceBuffer workspace(workspace_bytes);
  EmbeddingBackwardParams b{.dtype = DType::kBF16,
                            .dout = d_dout.get(),
                            .ids = d_ids.as<const int32_t>(),
                            .dtable = d_dtable.as<float>() + dim,
                            .vocab = vocab,
                            .tokens = tokens,
                            .dim = dim,
                            .first_id = first_id,
                            .accumulate = true,
                            .workspace = workspace.get(),
                            .workspace_bytes = workspace_bytes};
  ASSERT_TRUE(LaunchEmbeddingBackward(b, nullptr).ok());
  std::vector<float> want = init;
  b.dout = dout.data();
  b.ids = ids.data();
  b.dtable = want.data() + dim;
  ASSERT_TRUE(EmbeddingBackwardCpu(b).ok());
  EXPECT_EQ(d_dtable.Bytes(), BytesOf(want.data(), want.size() * 4));
  EXPECT_EQ(want[0], 1e30f);  // The CPU twin kept to the table too.
  EXPECT_EQ(want[(vocab + 1) * dim], 1e30f);
}

TEST_F(EmbeddingCudaTest, AMissingWorkspaceIsRefused) {
  const DeviceBuffer dout(16), ids(16), dtable(16);
  const absl::Status status = LaunchEmbeddingBackward({.dout = dout.get(),
                                                       .ids = ids.as<const int32_t>(),
                                                       .dtable = dtable.as<float>(),
                                                       .vocab = 4,
                                                       .tokens = 4,
                                                       .dim = 1,
                                                       .workspace_bytes = 0},
                                                      nullptr);
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("the workspace has 0 bytes, 4 tokens of width 1 need"));
}

}  // namespace
}  // namespace mimo::kernels
