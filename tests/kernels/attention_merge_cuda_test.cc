// The attention merge's CUDA kernels against the CPU twin on fresh random inputs and odd shapes
// (fp32 relative error < 1e-6; `first` bitwise), rows without keys kept, and argument errors.
// Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/attention_merge.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

class AttentionMergeCudaTest : public CudaOpTest {};

std::vector<float> FloatsOf(const std::vector<char>& bytes) {
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

TEST_P(AttentionMergeCudaTest, MatchesTheCpuTwin) {
  const DType dtype = GetParam();
  std::mt19937 random(std::random_device{}());
  for (const auto& [tokens, heads, head_dim] :
       {std::tuple{1, 1, 1}, std::tuple{7, 3, 5}, std::tuple{1025, 8, 128}}) {
    for (const bool first : {false, true}) {
      SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " " << tokens << "x" << heads << "x"
                                        << head_dim << (first ? " first" : ""));
      const int64_t n = int64_t{tokens} * heads * head_dim, rows = int64_t{tokens} * heads;
      HostData out = RandomData(DType::kF32, n, random, -2, 2);
      HostData lse = RandomData(DType::kF32, rows, random, -3, 6);
      const HostData part = RandomData(dtype, n, random, -2, 2);
      HostData part_lse = RandomData(DType::kF32, rows, random, -3, 6);
      constexpr float kNoKeys = -std::numeric_limits<float>::infinity();
      if (rows > 2) {
        std::memcpy(lse.bytes.data(), &kNoKeys, 4);
        std::memcpy(part_lse.bytes.data() + 4, &kNoKeys, 4);
        std::memcpy(lse.bytes.data() + 8, &kNoKeys, 4);
        std::memcpy(part_lse.bytes.data() + 8, &kNoKeys, 4);
      }
      const DeviceBuffer d_out(out.bytes), d_lse(lse.bytes), d_part(part.bytes),
          d_part_lse(part_lse.bytes);
      AttentionMergeParams p{.dtype = dtype,
                             .out = reinterpret_cast<float*>(out.data()),
                             .lse = reinterpret_cast<float*>(lse.data()),
                             .part_out = part.data(),
                             .part_lse = reinterpret_cast<const float*>(part_lse.data()),
                             .tokens = tokens,
                             .heads = heads,
                             .head_dim = head_dim,
                             .first = first};
      ASSERT_TRUE(AttentionMergeCpu(p).ok());
      p.out = d_out.as<float>();
      p.lse = d_lse.as<float>();
      p.part_out = d_part.get();
      p.part_lse = d_part_lse.as<const float>();
      ASSERT_TRUE(LaunchAttentionMerge(p, nullptr).ok());
      const std::vector<float> got = FloatsOf(d_out.Bytes()), want = FloatsOf(out.bytes);
      const std::vector<float> got_lse = FloatsOf(d_lse.Bytes()), want_lse = FloatsOf(lse.bytes);
      if (first) {
        EXPECT_EQ(got, want);
        EXPECT_EQ(got_lse, want_lse);
        continue;
      }
      // Each output is a convex combination of the running and the partial value, so its
      // rounding (exp, the weights, two products and a sum) is a few ulps of the larger of the two
      // (relative to the output itself it is unbounded where they cancel: a 1x1x1 case once
      // read 1.9e-6).
      for (int64_t i = 0; i < n; ++i) {
        const double scale = std::max(std::abs(out.exact[i]), std::abs(part.exact[i]));
        EXPECT_NEAR(got[i], want[i], 2e-6 * scale) << "element " << i;
      }
      for (int64_t i = 0; i < rows; ++i) {
        if (std::isinf(want_lse[i])) {
          EXPECT_EQ(got_lse[i], want_lse[i]);
        } else {
          EXPECT_NEAR(got_lse[i], want_lse[i], 1e-6 * std::max(1.0f, std::abs(want_lse[i])));
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, AttentionMergeCudaTest,
                         ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST_P(AttentionMergeCudaTest, RejectsBadArgumentsBeforeLaunching) {
  const DeviceBuffer b(64);
  AttentionMergeParams p{.dtype = GetParam(),
                         .out = b.as<float>(),
                         .lse = b.as<float>(),
                         .part_out = b.get(),
                         .part_lse = nullptr,
                         .tokens = 1,
                         .heads = 1,
                         .head_dim = 1};
  EXPECT_THAT(LaunchAttentionMerge(p, nullptr).message(), HasSubstr("part_lse"));
}

}  // namespace
}  // namespace mimo::kernels
