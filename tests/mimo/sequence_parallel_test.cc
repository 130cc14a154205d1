// Tests of mimo/sequence_parallel.h over three Gloo ranks: GatherRows concatenates the members'
// rows in rank order, ReduceScatterRows gives member r row block r of the sum (f32 exactly; bf16
// as the sum rounded once); a group of one is the identity; rows that do not split are refused.
#include "mimo/sequence_parallel.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "common/bfloat16.h"
#include "tests/comm/run_ranks.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

constexpr int kRanks = 3;

// Small integers: exact in bf16, and so are their sums over three ranks.
float Value(int rank, int64_t i) { return static_cast<float>((rank + 1) * (i % 7) - 3); }

Tensor Filled(kernels::Ops& ops, const kernels::Shape& shape, DType dtype, int rank) {
  auto t = Tensor::Empty(shape, dtype, ops.allocator());
  EXPECT_TRUE(t.ok()) << t.status();
  for (int64_t i = 0; i < t->numel(); ++i) {
    if (dtype == DType::kF32) {
      t->data<float>()[i] = Value(rank, i);
    } else {
      t->data<uint16_t>()[i] = FloatToBFloat16(Value(rank, i));
    }
  }
  return *t;
}

float At(const Tensor& t, int64_t i) {
  return t.dtype() == DType::kF32 ? t.data<float>()[i] : BFloat16ToFloat(t.data<uint16_t>()[i]);
}

class SequenceParallelTest : public ::testing::TestWithParam<DType> {};

TEST_P(SequenceParallelTest, GathersAndReduceScattersRows) {
  const DType dtype = GetParam();
  constexpr int64_t kRows = 5, kCols = 6;  // Per member.
  comm::InMemoryStore store;
  comm::RunRanks(kRanks, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {0, 1, 2}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    comm::Communicator* tp = (*groups)->Get("tp");
    auto ops = kernels::NewCpuOps();
    const Tensor local = Filled(*ops, {kRows, kCols}, dtype, rank);
    auto full = GatherRows(*ops, tp, local);
    ASSERT_TRUE(full.ok()) << full.status();
    ASSERT_EQ(full->shape(), (kernels::Shape{kRanks * kRows, kCols}));
    for (int r = 0; r < kRanks; ++r) {
      for (int64_t i = 0; i < kRows * kCols; ++i) {
        ASSERT_EQ(At(*full, r * kRows * kCols + i), Value(r, i)) << "member " << r << " " << i;
      }
    }
    // Every member's (3R, C) partial sums: member r keeps block r of their sum.
    const Tensor partial = Filled(*ops, {kRanks * kRows, kCols}, dtype, rank);
    auto own = ReduceScatterRows(*ops, tp, partial);
    ASSERT_TRUE(own.ok()) << own.status();
    ASSERT_EQ(own->shape(), (kernels::Shape{kRows, kCols}));
    for (int64_t i = 0; i < kRows * kCols; ++i) {
      const int64_t at = rank * kRows * kCols + i;
      ASSERT_EQ(At(*own, i), Value(0, at) + Value(1, at) + Value(2, at)) << i;
    }
    const Tensor odd = Filled(*ops, {kRanks * kRows + 1, kCols}, dtype, rank);
    EXPECT_EQ(ReduceScatterRows(*ops, tp, odd).status().code(), absl::StatusCode::kInvalidArgument);
  });
}

TEST_P(SequenceParallelTest, AGroupOfOneIsTheIdentity) {
  auto ops = kernels::NewCpuOps();
  const Tensor x = Filled(*ops, {4, 2}, GetParam(), 0);
  for (auto* fn : {&GatherRows, &ReduceScatterRows}) {
    auto y = fn(*ops, nullptr, x);
    ASSERT_TRUE(y.ok()) << y.status();
    EXPECT_EQ(y->data(), x.data());
  }
  EXPECT_EQ(GatherRows(*ops, nullptr, Tensor()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(DTypes, SequenceParallelTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

}  // namespace
}  // namespace mimo
