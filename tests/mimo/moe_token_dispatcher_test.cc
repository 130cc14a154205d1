// Tests of mimo/moe_token_dispatcher.h over an EP group of CPU workers (ranks as threads, Gloo
// over loopback): the members pad their tokens to the group's largest count rounded up to
// pad_multiple (padding pairs get zero weights and go to no expert, so no row of theirs is sent),
// what one member sends another receives, and through identity experts the combine and both
// backward steps give each member exactly its own tokens' results.
#include "mimo/moe_token_dispatcher.h"

#include <algorithm>
#include <cstdint>
#include <ostream>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "gtest/gtest.h"
#include "tests/comm/run_ranks.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;
using testing::Download;
using testing::RandomFloats;
using testing::Upload;
using testing::UploadInts;

constexpr int64_t kExperts = 4, kTopK = 2, kHidden = 3;

std::vector<int32_t> Ints(kernels::Ops& ops, const Tensor& t) {
  std::vector<int32_t> v(t.numel());
  EXPECT_TRUE(ops.CopyToHost(v.data(), t.data(), sizeof(int32_t) * v.size()).ok());
  return v;
}

// (t, kTopK) int32 expert indices.
Tensor IndicesOf(kernels::Ops& ops, const std::vector<int32_t>& indices, int64_t t) {
  auto view = UploadInts(ops, indices).View({t, kTopK});
  EXPECT_TRUE(view.ok()) << view.status();
  return view.ok() ? *view : Tensor();
}

// One member's tokens: x (T, C), two distinct experts per token (every fifth token's second
// choice goes nowhere: -1), combine weights and an output gradient.
struct Tokens {
  std::vector<float> x, probs, dy;
  std::vector<int32_t> indices;
};

Tokens RandomTokens(int64_t t, std::mt19937& random) {
  Tokens out{.x = RandomFloats(t * kHidden, random),
             .probs = RandomFloats(t * kTopK, random, 0.1f, 1.0f),
             .dy = RandomFloats(t * kHidden, random)};
  std::uniform_int_distribution<int32_t> expert(0, kExperts - 1), step(1, kExperts - 1);
  for (int64_t i = 0; i < t; ++i) {
    const int32_t first = expert(random);
    out.indices.push_back(first);
    out.indices.push_back(i % 5 == 4 ? -1 : (first + step(random)) % kExperts);
  }
  return out;
}

// What one member saw: the dispatch state's sizes and padding, and its results.
struct MemberResult {
  int64_t padded = -1;
  std::vector<size_t> send_rows, recv_rows;
  std::vector<double> pad_probs;  // The combine weights of the padding tokens.
  std::vector<int32_t> pad_rows;  // The send rows of the padding tokens' pairs.
  std::vector<double> y, dx, dprobs;
};

// Each member's tokens, the pad multiple, and the tokens every member dispatches.
struct PadCase {
  std::vector<int64_t> tokens;
  int64_t pad_multiple, padded;
};

void PrintTo(const PadCase& c, std::ostream* os) {
  *os << c.tokens[0] << " and " << c.tokens[1] << " tokens, pad multiple " << c.pad_multiple;
}

class MoeTokenDispatcherTest : public ::testing::TestWithParam<PadCase> {};

TEST_P(MoeTokenDispatcherTest, PadsToTheGroupsLargestCountAndTrimsAfterTheCombine) {
  const auto& [tokens, pad_multiple, padded] = GetParam();
  std::mt19937 random(static_cast<uint32_t>(17 + pad_multiple + tokens[0]));
  std::vector<Tokens> in;
  for (int64_t t : tokens) in.push_back(RandomTokens(t, random));
  std::vector<MemberResult> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "ep", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto dispatcher = MoeTokenDispatcher::Create({.experts = kExperts,
                                                  .top_k = kTopK,
                                                  .hidden = kHidden,
                                                  .align = 4,
                                                  .ep = (*groups)->Get("ep"),
                                                  .pad_multiple = pad_multiple});
    ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
    auto ops = kernels::NewCpuOps();
    const StepContext ctx{.ops = ops.get()};
    const int64_t t = tokens[rank];
    const Tokens& mine = in[rank];
    auto dispatched = dispatcher->Dispatch(ctx, Upload(*ops, mine.x, {t, kHidden}, DType::kF32),
                                           IndicesOf(*ops, mine.indices, t),
                                           Upload(*ops, mine.probs, {t, kTopK}, DType::kF32));
    ASSERT_TRUE(dispatched.ok()) << dispatched.status();
    // Each local expert's received rows padded to `align`: offsets that promise it, so grouped
    // experts may run them as row tiles (GroupedGemmParams::row_multiple).
    EXPECT_EQ(dispatched->offsets.row_multiple, 4);
    for (int32_t o : dispatched->offsets.host) EXPECT_EQ(o % 4, 0) << o;
    MoeDispatchState& s = dispatched->state;
    MemberResult& r = got[rank];
    r.padded = s.padded;
    r.send_rows = s.send_rows;
    r.recv_rows = s.recv_rows;
    const std::vector<double> probs = Download(*ops, s.probs);
    r.pad_probs.assign(probs.begin() + t * kTopK, probs.end());
    const std::vector<int32_t> rows = Ints(*ops, s.rows);
    r.pad_rows.assign(rows.begin() + t * kTopK, rows.end());
    // Identity experts: each row comes back as it went.
    auto y = dispatcher->Combine(ctx, s, dispatched->rows);
    ASSERT_TRUE(y.ok()) << y.status();
    ASSERT_EQ(y->size(0), t);
    r.y = Download(*ops, *y);
    auto grads =
        dispatcher->CombineBackward(ctx, s, Upload(*ops, mine.dy, {t, kHidden}, DType::kF32));
    ASSERT_TRUE(grads.ok()) << grads.status();
    ASSERT_EQ(grads->dprobs.size(0), t);
    r.dprobs = Download(*ops, grads->dprobs);
    auto dx = dispatcher->DispatchBackward(ctx, s, grads->dh);
    ASSERT_TRUE(dx.ok()) << dx.status();
    ASSERT_EQ(dx->size(0), t);
    r.dx = Download(*ops, *dx);
  });
  for (int rank = 0; rank < 2; ++rank) {
    SCOPED_TRACE(absl::StrCat("rank ", rank, " with ", tokens[rank], " tokens"));
    const MemberResult& r = got[rank];
    const Tokens& mine = in[rank];
    const int64_t t = tokens[rank];
    EXPECT_EQ(r.padded, padded);
    EXPECT_EQ(r.pad_probs, std::vector<double>((padded - t) * kTopK, 0.0));
    EXPECT_EQ(r.pad_rows, std::vector<int32_t>((padded - t) * kTopK, -1));
    // Only the real pairs travel, and each member receives what the other sends it.
    const int64_t real =
        std::count_if(mine.indices.begin(), mine.indices.end(), [](int32_t e) { return e >= 0; });
    ASSERT_EQ(r.send_rows.size(), 2u);
    EXPECT_EQ(static_cast<int64_t>(r.send_rows[0] + r.send_rows[1]), real);
    EXPECT_EQ(r.recv_rows[1 - rank], got[1 - rank].send_rows[rank]);
    // y[t] = (sum of the real pairs' weights) x[t]; dx likewise of dy; dprobs[t, j] = dy[t] . x[t]
    // for a real pair, else 0.
    ASSERT_EQ(r.y.size(), static_cast<size_t>(t * kHidden));
    ASSERT_EQ(r.dx.size(), r.y.size());
    ASSERT_EQ(r.dprobs.size(), static_cast<size_t>(t * kTopK));
    for (int64_t i = 0; i < t; ++i) {
      double weight = 0, dot = 0;
      for (int64_t j = 0; j < kTopK; ++j) {
        if (mine.indices[i * kTopK + j] >= 0) weight += mine.probs[i * kTopK + j];
      }
      for (int64_t c = 0; c < kHidden; ++c) {
        EXPECT_NEAR(r.y[i * kHidden + c], weight * mine.x[i * kHidden + c], 1e-5) << i;
        EXPECT_NEAR(r.dx[i * kHidden + c], weight * mine.dy[i * kHidden + c], 1e-5) << i;
        dot += static_cast<double>(mine.dy[i * kHidden + c]) * mine.x[i * kHidden + c];
      }
      for (int64_t j = 0; j < kTopK; ++j) {
        EXPECT_NEAR(r.dprobs[i * kTopK + j], mine.indices[i * kTopK + j] >= 0 ? dot : 0.0, 1e-5)
            << i << ", " << j;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(UnevenMembers, MoeTokenDispatcherTest,
                         ::testing::Values(PadCase{{0, 65}, 64, 128}, PadCase{{0, 65}, 16, 80},
                                           PadCase{{1, 63}, 64, 64}, PadCase{{1, 63}, 16, 64},
                                           PadCase{{64, 64}, 64, 64}, PadCase{{64, 64}, 16, 64},
                                           PadCase{{130, 3}, 64, 192}, PadCase{{130, 3}, 16, 144},
                                           PadCase{{0, 0}, 64, 0}, PadCase{{0, 0}, 16, 0}));

}  // namespace
}  // namespace mimo
