// MoE token permutation's CUDA kernels against the CPU twins (themselves checked against
// float64): the map and every output bitwise equal, outputs poisoned first, balanced and skewed
// (Zipf) routing, odd widths, no tokens. Skips without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/moe_permute.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/moe_permute_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

template <typename T>
std::vector<char> Raw(const std::vector<T>& v) {
  return BytesOf(v.data(), v.size() * sizeof(T));
}

struct PermuteCase {
  const char* name;
  int64_t tokens, top_k, experts, align, hidden;
  double skew;
  double dropped = 0.0;  // Fraction of pairs going nowhere (expert -1).
};

void PrintTo(const PermuteCase& c, std::ostream* os) { *os << c.name; }

class MoePermuteCudaTest : public ::testing::TestWithParam<std::tuple<PermuteCase, DType>> {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  }
};

TEST_P(MoePermuteCudaTest, BitwiseEqualToTheCpuTwins) {
  const auto& [k, dtype] = GetParam();
  const int64_t t = k.tokens, pairs = k.tokens * k.top_k, h = k.hidden;
  const int64_t capacity = MoePermuteCapacity(t, k.top_k, k.experts, k.align);
  const size_t es = DTypeSize(dtype);
  std::mt19937 random(11);
  const std::vector<int32_t> indices =
      RandomRouting(t, k.top_k, k.experts, k.skew, random, k.dropped);
  const HostData x = RandomData(dtype, t * h, random, -1, 1);
  const HostData probs = RandomData(DType::kF32, pairs, random, 0, 1);
  const HostData dout = RandomData(dtype, capacity * h, random, -1, 1);
  const HostData hh = RandomData(dtype, capacity * h, random, -1, 1);
  const HostData dy = RandomData(dtype, t * h, random, -1, 1);

  // CPU twins.
  std::vector<int32_t> rows(pairs), offsets(k.experts + 1), pair_of_row(capacity);
  ASSERT_TRUE(MoePermuteMapCpu({.indices = indices.data(),
                                .rows = rows.data(),
                                .offsets = offsets.data(),
                                .pair_of_row = pair_of_row.data(),
                                .tokens = t,
                                .top_k = k.top_k,
                                .experts = k.experts,
                                .align = k.align,
                                .capacity = capacity})
                  .ok());
  std::vector<char> out(capacity * h * es), dx(t * h * es), y(t * h * es), dh(capacity * h * es),
      dprobs(pairs * 4);
  const auto* p = reinterpret_cast<const float*>(probs.data());
  ASSERT_TRUE(MoePermuteCpu({.dtype = dtype,
                             .x = x.data(),
                             .pair_of_row = pair_of_row.data(),
                             .out = out.data(),
                             .tokens = t,
                             .top_k = k.top_k,
                             .hidden = h,
                             .capacity = capacity})
                  .ok());
  ASSERT_TRUE(MoePermuteBackwardCpu({.dtype = dtype,
                                     .dout = dout.data(),
                                     .rows = rows.data(),
                                     .dx = dx.data(),
                                     .tokens = t,
                                     .top_k = k.top_k,
                                     .hidden = h})
                  .ok());
  ASSERT_TRUE(MoeUnpermuteCpu({.dtype = dtype,
                               .h = hh.data(),
                               .rows = rows.data(),
                               .probs = p,
                               .y = y.data(),
                               .tokens = t,
                               .top_k = k.top_k,
                               .hidden = h})
                  .ok());
  ASSERT_TRUE(MoeUnpermuteBackwardCpu({.dtype = dtype,
                                       .dy = dy.data(),
                                       .h = hh.data(),
                                       .rows = rows.data(),
                                       .pair_of_row = pair_of_row.data(),
                                       .probs = p,
                                       .dh = dh.data(),
                                       .dprobs = reinterpret_cast<float*>(dprobs.data()),
                                       .tokens = t,
                                       .top_k = k.top_k,
                                       .hidden = h,
                                       .capacity = capacity})
                  .ok());

  // CUDA, every output poisoned first.
  DeviceBuffer d_indices(Raw(indices)), d_rows(pairs * 4), d_offsets((k.experts + 1) * 4),
      d_pair_of_row(capacity * 4), d_x(x.bytes), d_probs(probs.bytes), d_dout(dout.bytes),
      d_h(hh.bytes), d_dy(dy.bytes), d_out(out.size()), d_dx(dx.size()), d_y(y.size()),
      d_dh(dh.size()), d_dprobs(dprobs.size()), d_out_by_token(out.size());
  // -1 is a valid row (a pair going nowhere): poison with 0x7f bytes instead.
  ASSERT_EQ(cudaMemset(d_rows.get(), 0x7f, pairs * 4), cudaSuccess);
  ASSERT_EQ(cudaMemset(d_pair_of_row.get(), 0x7f, capacity * 4), cudaSuccess);
  const size_t ws = MoePermuteMapWorkspaceBytes(pairs, k.experts);
  DeviceBuffer workspace(ws);
  ASSERT_TRUE(LaunchMoePermuteMap({.indices = d_indices.as<int32_t>(),
                                   .rows = d_rows.as<int32_t>(),
                                   .offsets = d_offsets.as<int32_t>(),
                                   .pair_of_row = d_pair_of_row.as<int32_t>(),
                                   .tokens = t,
                                   .top_k = k.top_k,
                                   .experts = k.experts,
                                   .align = k.align,
                                   .capacity = capacity,
                                   .workspace = workspace.get(),
                                   .workspace_bytes = ws},
                                  nullptr)
                  .ok());
  const MoePermuteParams gather{.dtype = dtype,
                                .x = d_x.get(),
                                .pair_of_row = d_pair_of_row.as<int32_t>(),
                                .out = d_out.get(),
                                .tokens = t,
                                .top_k = k.top_k,
                                .hidden = h,
                                .capacity = capacity};
  ASSERT_TRUE(LaunchMoePermute(gather, nullptr).ok());
  // The same permutation in token order (rows given): each token's row read once.
  MoePermuteParams by_token = gather;
  by_token.rows = d_rows.as<int32_t>();
  by_token.out = d_out_by_token.get();
  ASSERT_TRUE(LaunchMoePermute(by_token, nullptr).ok());
  ASSERT_TRUE(LaunchMoePermuteBackward({.dtype = dtype,
                                        .dout = d_dout.get(),
                                        .rows = d_rows.as<int32_t>(),
                                        .dx = d_dx.get(),
                                        .tokens = t,
                                        .top_k = k.top_k,
                                        .hidden = h},
                                       nullptr)
                  .ok());
  ASSERT_TRUE(LaunchMoeUnpermute({.dtype = dtype,
                                  .h = d_h.get(),
                                  .rows = d_rows.as<int32_t>(),
                                  .probs = d_probs.as<float>(),
                                  .y = d_y.get(),
                                  .tokens = t,
                                  .top_k = k.top_k,
                                  .hidden = h},
                                 nullptr)
                  .ok());
  ASSERT_TRUE(LaunchMoeUnpermuteBackward({.dtype = dtype,
                                          .dy = d_dy.get(),
                                          .h = d_h.get(),
                                          .rows = d_rows.as<int32_t>(),
                                          .pair_of_row = d_pair_of_row.as<int32_t>(),
                                          .probs = d_probs.as<float>(),
                                          .dh = d_dh.get(),
                                          .dprobs = d_dprobs.as<float>(),
                                          .tokens = t,
                                          .top_k = k.top_k,
                                          .hidden = h,
                                          .capacity = capacity},
                                         nullptr)
                  .ok());
  EXPECT_EQ(d_rows.Bytes(), Raw(rows));
  EXPECT_EQ(d_offsets.Bytes(), Raw(offsets));
  EXPECT_EQ(d_pair_of_row.Bytes(), Raw(pair_of_row));
  EXPECT_EQ(d_out.Bytes(), out);
  EXPECT_EQ(d_out_by_token.Bytes(), out);
  EXPECT_EQ(d_dx.Bytes(), dx);
  EXPECT_EQ(d_y.Bytes(), y);
  EXPECT_EQ(d_dh.Bytes(), dh);
  EXPECT_EQ(d_dprobs.Bytes(), dprobs);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MoePermuteCudaTest,
    ::testing::Combine(::testing::Values(PermuteCase{"MixtralBalanced", 4097, 2, 8, 16, 1000, 0.0},
                                         PermuteCase{"FineGrainedZipf", 2049, 6, 64, 8, 64, 1.2},
                                         PermuteCase{"ManyChunksSkewed", 3000, 8, 128, 16, 24, 2.0},
                                         PermuteCase{"OneToken", 1, 1, 3, 1, 7, 0.0},
                                         PermuteCase{"DroppedPairs", 2500, 4, 16, 16, 40, 1.0, 0.3},
                                         // Rows of 130 elements: the scalar paths (no 16-byte
                                         // vectors) with padding and dropped rows to zero.
                                         PermuteCase{"ScalarRowsPadded", 700, 3, 12, 16, 130, 1.0,
                                                     0.2},
                                         PermuteCase{"NoTokens", 0, 2, 4, 4, 16, 0.0}),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    [](const auto& info) {
      return std::string(std::get<0>(info.param).name) + "_" +
             std::string(DTypeName(std::get<1>(info.param)));
    });

}  // namespace
}  // namespace mimo::kernels
