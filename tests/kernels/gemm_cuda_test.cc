// The cuBLASLt GEMM against float64 on fresh random inputs and odd shapes, every transpose, bias,
// GELU fused (n % 8 == 0) and unfused, accumulation (relative error: f32 < 3e-6, bf16 outputs <
// 1e-2); plans cached per problem; batches on several streams, products of one shape stacked into
// pointer-array products, against their products one by one; argument errors, misaligned buffers
// among them. Skips without a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <vector>

#include "kernels/cuda_graph.h"
#include "kernels/cuda_stream.h"
#include "kernels/gemm.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/gemm_reference.h"
#include "tests/kernels/op_test_util.h"

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;
using namespace ::mimo::kernels::testing;  // NOLINT: test helpers.

struct DTypes {
  DType ab, d;
};

class GemmCudaTest : public ::testing::TestWithParam<DTypes> {
 protected:
  void SetUp() override {
    const CudaDevices devices = ListCudaDevices();
    if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
    auto blas = CublasLt::Create();
    ASSERT_TRUE(blas.ok()) << blas.status();
    blas_ = std::move(*blas);
  }
  std::unique_ptr<CublasLt> blas_;
};

TEST_P(GemmCudaTest, MatchesFloat64) {
  const auto [ab, dt] = GetParam();
  const double bound = dt == DType::kF32 ? 3e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  struct Case {
    int64_t m, n, k;
    bool ta, tb, bias, gelu, accumulate;
  };
  for (const Case& c : {Case{1, 1, 1, false, false, false, false, false},
                        Case{3, 5, 7, true, false, true, false, false},
                        Case{17, 33, 65, false, true, true, true, false},
                        Case{64, 48, 200, true, true, false, true, false},
                        Case{64, 48, 200, false, true, true, true, false},
                        Case{9, 40, 31, false, false, false, false, true},
                        Case{5, 6, 0, false, false, false, false, false},
                        Case{777, 1024, 512, false, true, true, true, false},
                        Case{512, 768, 1031, true, false, false, false, true}}) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeName(ab) << "->" << DTypeName(dt) << " m " << c.m << " n " << c.n << " k "
                 << c.k << " ta " << c.ta << " tb " << c.tb << " bias " << c.bias << " gelu "
                 << c.gelu << " acc " << c.accumulate);
    const HostData a = RandomData(ab, c.m * c.k, random, -1, 1);
    const HostData b = RandomData(ab, c.k * c.n, random, -1, 1);
    const HostData bias = RandomData(dt, c.n, random, -1, 1);
    const HostData d0 = RandomData(dt, c.m * c.n, random, -1, 1);
    const DeviceBuffer da(a.bytes), db(b.bytes), dbias(bias.bytes),
        dd(c.accumulate ? DeviceBuffer(d0.bytes) : DeviceBuffer(c.m * c.n * DTypeSize(dt))),
        dpre(c.m * c.n * DTypeSize(dt));
    const absl::Status status =
        blas_->Gemm({.ab_dtype = ab,
                     .d_dtype = dt,
                     .a = da.get(),
                     .b = db.get(),
                     .d = dd.get(),
                     .transpose_a = c.ta,
                     .transpose_b = c.tb,
                     .m = c.m,
                     .n = c.n,
                     .k = c.k,
                     .accumulate = c.accumulate,
                     .bias = c.bias ? dbias.get() : nullptr,
                     .activation = c.gelu ? GemmActivation::kGeluTanh : GemmActivation::kNone,
                     .pre_activation = c.gelu ? dpre.get() : nullptr},
                    nullptr);
    ASSERT_TRUE(status.ok()) << status;
    std::vector<double> want = GemmFloat64(a.exact, c.ta, b.exact, c.tb, c.m, c.n, c.k,
                                           c.bias ? bias.exact : std::vector<double>{});
    const std::vector<double> got = ValuesOf(dt, dd.Bytes());
    ASSERT_TRUE(AllFinite(got)) << "an output element was not written";
    if (c.gelu) {
      EXPECT_LT(RelativeError(ValuesOf(dt, dpre.Bytes()), want), bound);
      for (double& v : want) v = GeluTanhFloat64(v);
    }
    if (c.accumulate) {
      for (size_t i = 0; i < want.size(); ++i) want[i] += d0.exact[i];
    }
    EXPECT_LT(RelativeError(got, want), bound);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, GemmCudaTest,
                         ::testing::Values(DTypes{DType::kF32, DType::kF32},
                                           DTypes{DType::kBF16, DType::kBF16},
                                           DTypes{DType::kBF16, DType::kF32}),
                         [](const auto& info) {
                           return std::string(DTypeName(info.param.ab)) + "_" +
                                  std::string(DTypeName(info.param.d));
                         });

TEST_P(GemmCudaTest, PlansAreCachedPerProblem) {
  const auto [ab, dt] = GetParam();
  const DeviceBuffer a(64 * 64 * 4), b(64 * 64 * 4), d(64 * 64 * 4);
  const GemmParams p{.ab_dtype = ab,
                     .d_dtype = dt,
                     .a = a.get(),
                     .b = b.get(),
                     .d = d.get(),
                     .m = 64,
                     .n = 64,
                     .k = 64};
  ASSERT_TRUE(blas_->Gemm(p, nullptr).ok());
  EXPECT_EQ(blas_->cached_plans(), 1u);
  ASSERT_TRUE(blas_->Gemm(p, nullptr).ok());
  EXPECT_EQ(blas_->cached_plans(), 1u);
  GemmParams q = p;
  q.k = 32;
  ASSERT_TRUE(blas_->Gemm(q, nullptr).ok());
  EXPECT_EQ(blas_->cached_plans(), 2u);
  q.transpose_a = true;
  ASSERT_TRUE(blas_->Gemm(q, nullptr).ok());
  EXPECT_EQ(blas_->cached_plans(), 3u);
}

// One cached plan serves calls with other buffers: bias, pre-activation and output pointers are
// those of each call.
TEST_P(GemmCudaTest, APlanReusedWithOtherBuffersUsesThem) {
  const auto [ab, dt] = GetParam();
  const double bound = dt == DType::kF32 ? 3e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  constexpr int64_t kM = 40, kN = 64, kK = 48;
  for (int call = 0; call < 2; ++call) {
    const HostData a = RandomData(ab, kM * kK, random, -1, 1);
    const HostData b = RandomData(ab, kN * kK, random, -1, 1);
    const HostData bias = RandomData(dt, kN, random, -1, 1);
    const DeviceBuffer da(a.bytes), db(b.bytes), dbias(bias.bytes), d(kM * kN * DTypeSize(dt)),
        pre(kM * kN * DTypeSize(dt));
    ASSERT_TRUE(blas_
                    ->Gemm({.ab_dtype = ab,
                            .d_dtype = dt,
                            .a = da.get(),
                            .b = db.get(),
                            .d = d.get(),
                            .transpose_b = true,
                            .m = kM,
                            .n = kN,
                            .k = kK,
                            .bias = dbias.get(),
                            .activation = GemmActivation::kGeluTanh,
                            .pre_activation = pre.get()},
                           nullptr)
                    .ok());
    std::vector<double> want = GemmFloat64(a.exact, false, b.exact, true, kM, kN, kK, bias.exact);
    EXPECT_LT(RelativeError(ValuesOf(dt, pre.Bytes()), want), bound) << "call " << call;
    for (double& v : want) v = GeluTanhFloat64(v);
    EXPECT_LT(RelativeError(ValuesOf(dt, d.Bytes()), want), bound) << "call " << call;
  }
  EXPECT_EQ(blas_->cached_plans(), 1u);
}

// Token counts vary per micro-batch: the first problem of a size class (m 897..1024 here) is
// timed, the others take its algorithm without asking the heuristic; each result still right,
// with the bias and GELU epilogue (whose pointers are the call's) and accumulating.
TEST_P(GemmCudaTest, ProblemsOfOneSizeClassShareItsTimedAlgorithm) {
  const auto [ab, dt] = GetParam();
  const double bound = dt == DType::kF32 ? 3e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  constexpr int64_t kN = 72, kK = 56;
  for (const int64_t m : {1000, 897, 960, 1024, 931}) {
    const HostData a = RandomData(ab, m * kK, random, -1, 1);
    const HostData b = RandomData(ab, kN * kK, random, -1, 1);
    const HostData bias = RandomData(dt, kN, random, -1, 1);
    const DeviceBuffer da(a.bytes), db(b.bytes), dbias(bias.bytes), d(m * kN * DTypeSize(dt)),
        pre(m * kN * DTypeSize(dt)), sum(m * kN * DTypeSize(dt));
    GemmParams p{.ab_dtype = ab,
                 .d_dtype = dt,
                 .a = da.get(),
                 .b = db.get(),
                 .d = d.get(),
                 .transpose_b = true,
                 .m = m,
                 .n = kN,
                 .k = kK,
                 .bias = dbias.get(),
                 .activation = GemmActivation::kGeluTanh,
                 .pre_activation = pre.get()};
    ASSERT_TRUE(blas_->Gemm(p, nullptr).ok()) << "m " << m;
    std::vector<double> want = GemmFloat64(a.exact, false, b.exact, true, m, kN, kK, bias.exact);
    EXPECT_LT(RelativeError(ValuesOf(dt, pre.Bytes()), want), bound) << "m " << m;
    std::vector<double> gelu = want;
    for (double& v : gelu) v = GeluTanhFloat64(v);
    EXPECT_LT(RelativeError(ValuesOf(dt, d.Bytes()), gelu), bound) << "m " << m;
    // sum = 0, then twice accumulated: 2 a b^T.
    ASSERT_EQ(cudaMemset(sum.get(), 0, m * kN * DTypeSize(dt)), cudaSuccess);
    GemmParams q{.ab_dtype = ab,
                 .d_dtype = dt,
                 .a = da.get(),
                 .b = db.get(),
                 .d = sum.get(),
                 .transpose_b = true,
                 .m = m,
                 .n = kN,
                 .k = kK,
                 .accumulate = true};
    ASSERT_TRUE(blas_->Gemm(q, nullptr).ok());
    ASSERT_TRUE(blas_->Gemm(q, nullptr).ok());
    std::vector<double> twice = GemmFloat64(a.exact, false, b.exact, true, m, kN, kK, {});
    for (double& v : twice) v *= 2;
    EXPECT_LT(RelativeError(ValuesOf(dt, sum.Bytes()), twice), bound) << "m " << m;
  }
}

// An MoE layer's per-expert products as one batch on 4 streams, experts of equal row counts
// stacked into pointer-array products: within the bound of float64 and of the products one by one,
// eagerly and replayed from a CUDA graph onto poisoned outputs (the same bits as eagerly), and the
// same bits on 4 streams as on 1.
TEST_P(GemmCudaTest, ABatchMatchesItsProductsOneByOne) {
  const auto [ab, dt] = GetParam();
  const double bound = dt == DType::kF32 ? 3e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  constexpr int64_t kIn = 192, kOut = 136;
  // Rows per expert, the zero-row expert included, two stacks (333 twice, 256 three times); then
  // each expert's weight gradient (out, in) accumulated from its rows.
  const std::vector<int64_t> rows = {333, 0, 1, 1024, 256, 77, 512, 333, 96, 256, 256};
  int64_t total = 0;
  for (const int64_t r : rows) total += r;
  const int64_t experts = static_cast<int64_t>(rows.size());
  const HostData x = RandomData(ab, total * kIn, random, -1, 1);
  const HostData w = RandomData(ab, experts * kOut * kIn, random, -1, 1);
  const HostData dy = RandomData(ab, total * kOut, random, -1, 1);
  const HostData dw0 = RandomData(DType::kF32, experts * kOut * kIn, random, -1, 1);
  const DeviceBuffer dx(x.bytes), dwt(w.bytes), ddy(dy.bytes);
  // Outputs of the batch, of the one-by-one run and of the replay.
  const size_t y_bytes = total * kOut * DTypeSize(dt);
  const DeviceBuffer y_batch(y_bytes), y_single(y_bytes), y_replay(y_bytes);
  const DeviceBuffer g_batch(dw0.bytes), g_single(dw0.bytes), g_replay(dw0.bytes);
  const auto problems = [&](const DeviceBuffer& y, const DeviceBuffer& g) {
    std::vector<GemmParams> out;
    int64_t first = 0;
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t n = rows[e];
      const char* xe = static_cast<const char*>(dx.get()) + first * kIn * DTypeSize(ab);
      const char* dye = static_cast<const char*>(ddy.get()) + first * kOut * DTypeSize(ab);
      out.push_back({.ab_dtype = ab,
                     .d_dtype = dt,
                     .a = xe,
                     .b = static_cast<const char*>(dwt.get()) + e * kOut * kIn * DTypeSize(ab),
                     .d = static_cast<char*>(y.get()) + first * kOut * DTypeSize(dt),
                     .transpose_b = true,
                     .m = n,
                     .n = kOut,
                     .k = kIn});
      out.push_back({.ab_dtype = ab,
                     .d_dtype = DType::kF32,
                     .a = dye,
                     .b = xe,
                     .d = static_cast<char*>(g.get()) + e * kOut * kIn * 4,
                     .transpose_a = true,
                     .m = kOut,
                     .n = kIn,
                     .k = n,
                     .accumulate = true});
      first += n;
    }
    return out;
  };
  const auto reset_gradients = [&](const DeviceBuffer& g) {
    ASSERT_EQ(cudaMemcpy(g.get(), dw0.data(), dw0.bytes.size(), cudaMemcpyHostToDevice),
              cudaSuccess);
  };
  auto stream = CudaStream::Create(0);
  ASSERT_TRUE(stream.ok()) << stream.status();
  reset_gradients(g_batch);
  reset_gradients(g_single);
  ASSERT_TRUE(blas_->GemmBatch(problems(y_batch, g_batch), stream->get()).ok());
  for (const GemmParams& p : problems(y_single, g_single)) {
    ASSERT_TRUE(blas_->Gemm(p, stream->get()).ok());
  }
  ASSERT_TRUE(stream->Synchronize().ok());
  // Experts alone in their row count are plain products: what Gemm gives them, bit for bit.
  {
    const std::vector<char> yb = y_batch.Bytes(), ys = y_single.Bytes();
    const std::vector<char> gb = g_batch.Bytes(), gs = g_single.Bytes();
    int64_t first = 0;
    for (int64_t e = 0; e < experts; ++e) {
      if (std::count(rows.begin(), rows.end(), rows[e]) == 1) {
        const size_t y0 = first * kOut * DTypeSize(dt),
                     y1 = (first + rows[e]) * kOut * DTypeSize(dt);
        EXPECT_TRUE(std::equal(yb.begin() + y0, yb.begin() + y1, ys.begin() + y0))
            << "expert " << e;
        const size_t g0 = e * kOut * kIn * 4, g1 = (e + 1) * kOut * kIn * 4;
        EXPECT_TRUE(std::equal(gb.begin() + g0, gb.begin() + g1, gs.begin() + g0))
            << "expert " << e;
      }
      first += rows[e];
    }
  }
  EXPECT_LT(RelativeError(ValuesOf(dt, y_batch.Bytes()), ValuesOf(dt, y_single.Bytes())), bound);
  EXPECT_LT(RelativeError(ValuesOf(DType::kF32, g_batch.Bytes()),
                          ValuesOf(DType::kF32, g_single.Bytes())),
            1e-5);
  // Against float64: y = x w_e^T per expert, dw = dw0 + dy_e^T x_e.
  std::vector<double> want_y, want_g = dw0.exact;
  int64_t first = 0;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t n = rows[e];
    const std::vector<double> xe(x.exact.begin() + first * kIn,
                                 x.exact.begin() + (first + n) * kIn);
    const std::vector<double> we(w.exact.begin() + e * kOut * kIn,
                                 w.exact.begin() + (e + 1) * kOut * kIn);
    const std::vector<double> dye(dy.exact.begin() + first * kOut,
                                  dy.exact.begin() + (first + n) * kOut);
    const std::vector<double> ye = GemmFloat64(xe, false, we, true, n, kOut, kIn, {});
    want_y.insert(want_y.end(), ye.begin(), ye.end());
    const std::vector<double> ge = GemmFloat64(dye, true, xe, false, kOut, kIn, n, {});
    for (int64_t i = 0; i < kOut * kIn; ++i) want_g[e * kOut * kIn + i] += ge[i];
    first += n;
  }
  EXPECT_LT(RelativeError(ValuesOf(dt, y_batch.Bytes()), want_y), bound);
  EXPECT_LT(RelativeError(ValuesOf(DType::kF32, g_batch.Bytes()), want_g), 1e-5);
  // Captured once, replayed onto poisoned outputs (the gradients reset): the same bits.
  reset_gradients(g_replay);
  const std::vector<GemmParams> replayed = problems(y_replay, g_replay);
  auto graph =
      CudaGraph::Capture(stream->get(), [&] { return blas_->GemmBatch(replayed, stream->get()); });
  ASSERT_TRUE(graph.ok()) << graph.status();
  ASSERT_TRUE(graph->Replay(stream->get()).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  EXPECT_EQ(y_replay.Bytes(), y_batch.Bytes());
  EXPECT_EQ(g_replay.Bytes(), g_batch.Bytes());
  // Fresh deterministic contexts (each product or stack the heuristic's choice for it, nothing
  // timed or lent): the batch on 4 streams and on 1 give the same bits.
  auto batched = CublasLt::Create({.deterministic = true});
  auto single = CublasLt::Create({.deterministic = true, .batch_streams = 1});
  ASSERT_TRUE(batched.ok() && single.ok());
  reset_gradients(g_batch);
  reset_gradients(g_single);
  ASSERT_TRUE((*batched)->GemmBatch(problems(y_batch, g_batch), stream->get()).ok());
  ASSERT_TRUE((*single)->GemmBatch(problems(y_single, g_single), stream->get()).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  EXPECT_EQ(y_batch.Bytes(), y_single.Bytes());
  EXPECT_EQ(g_batch.Bytes(), g_single.Bytes());
  // A batch with an output overlapping an input is refused before anything runs.
  std::vector<GemmParams> overlapping = problems(y_batch, g_batch);
  overlapping[4].d = const_cast<void*>(overlapping[0].a);  // Expert 2's one row.
  EXPECT_THAT(blas_->GemmBatch(overlapping, stream->get()).message(),
              HasSubstr("an input of product 0 overlaps the output of product 4"));
}

// 131 products of one shape: a stack of 128 and one of 3 (two batched plans, no plain one), each
// product within the bound of float64, and the same bits replayed twice from a CUDA graph onto
// poisoned outputs after an eager batch over other buffers rewrote the operand tables.
TEST_P(GemmCudaTest, ProductsOfOneShapeStackUpTo128AtATime) {
  const auto [ab, dt] = GetParam();
  const double bound = dt == DType::kF32 ? 3e-6 : 1e-2;
  std::mt19937 random(std::random_device{}());
  constexpr int64_t kProducts = 131, kM = 24, kN = 40, kK = 56;
  const HostData a = RandomData(ab, kProducts * kM * kK, random, -1, 1);
  const HostData b = RandomData(ab, kProducts * kN * kK, random, -1, 1);
  const DeviceBuffer da(a.bytes), db(b.bytes);
  const size_t d_bytes = kProducts * kM * kN * DTypeSize(dt);
  const DeviceBuffer d(d_bytes), replay(d_bytes);
  const auto problems = [&](const DeviceBuffer& out) {
    std::vector<GemmParams> batch;
    for (int64_t i = 0; i < kProducts; ++i) {
      batch.push_back({.ab_dtype = ab,
                       .d_dtype = dt,
                       .a = static_cast<const char*>(da.get()) + i * kM * kK * DTypeSize(ab),
                       .b = static_cast<const char*>(db.get()) + i * kN * kK * DTypeSize(ab),
                       .d = static_cast<char*>(out.get()) + i * kM * kN * DTypeSize(dt),
                       .transpose_b = true,
                       .m = kM,
                       .n = kN,
                       .k = kK});
    }
    return batch;
  };
  auto stream = CudaStream::Create(0);
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_EQ(cudaMemset(d.get(), 0xff, d_bytes), cudaSuccess);  // NaN in bf16 and f32.
  ASSERT_TRUE(blas_->GemmBatch(problems(d), stream->get()).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  EXPECT_EQ(blas_->cached_plans(), 2u);  // Stacks of 128 and 3: nothing fell back to plain ones.
  const std::vector<double> got = ValuesOf(dt, d.Bytes());
  for (int64_t i = 0; i < kProducts; ++i) {
    const std::vector<double> ai(a.exact.begin() + i * kM * kK,
                                 a.exact.begin() + (i + 1) * kM * kK);
    const std::vector<double> bi(b.exact.begin() + i * kN * kK,
                                 b.exact.begin() + (i + 1) * kN * kK);
    const std::vector<double> want = GemmFloat64(ai, false, bi, true, kM, kN, kK, {});
    const std::vector<double> gi(got.begin() + i * kM * kN, got.begin() + (i + 1) * kM * kN);
    ASSERT_LT(RelativeError(gi, want), bound) << "product " << i;
  }
  const std::vector<GemmParams> replayed = problems(replay);
  auto graph =
      CudaGraph::Capture(stream->get(), [&] { return blas_->GemmBatch(replayed, stream->get()); });
  ASSERT_TRUE(graph.ok()) << graph.status();
  const DeviceBuffer other(d_bytes);
  for (int round = 0; round < 2; ++round) {
    ASSERT_TRUE(blas_->GemmBatch(problems(other), stream->get()).ok());
    ASSERT_EQ(cudaMemsetAsync(replay.get(), 0xff, d_bytes, stream->get()), cudaSuccess);
    ASSERT_TRUE(graph->Replay(stream->get()).ok());
    ASSERT_TRUE(stream->Synchronize().ok());
    EXPECT_EQ(replay.Bytes(), d.Bytes()) << "replay " << round;
    EXPECT_EQ(other.Bytes(), d.Bytes()) << "eager " << round;
  }
}

TEST_P(GemmCudaTest, BadArgumentsFailBeforeLaunching) {
  EXPECT_THAT(blas_->Gemm({.ab_dtype = DType::kI64, .m = 1, .n = 1, .k = 1}, nullptr).message(),
              HasSubstr("dtype i64 is not supported"));
  EXPECT_THAT(blas_->Gemm({.m = 2, .n = 2, .k = 2}, nullptr).message(), HasSubstr("a is null"));
  EXPECT_TRUE(blas_->Gemm({.m = 0, .n = 2, .k = 2}, nullptr).ok());
  const DeviceBuffer buf(1024);
  const char* base = static_cast<const char*>(buf.get());
  EXPECT_THAT(
      blas_->Gemm({.a = base + 4, .b = base, .d = buf.get(), .m = 2, .n = 2, .k = 2}, nullptr)
          .message(),
      HasSubstr("a is not 16-byte aligned"));
  EXPECT_THAT(
      blas_
          ->Gemm({.a = base, .b = base, .d = buf.get(), .m = 2, .n = 2, .k = 2, .bias = base + 8},
                 nullptr)
          .message(),
      HasSubstr("bias is not 16-byte aligned"));
  EXPECT_EQ(blas_->cached_plans(), 0u);
  EXPECT_THAT(CublasLt::Create({.batch_streams = 0}).status().message(),
              HasSubstr("batch_streams is 0, needs 1 to 16"));
  EXPECT_THAT(CublasLt::Create({.batch_streams = 17}).status().message(),
              HasSubstr("batch_streams is 17"));
}

}  // namespace
}  // namespace mimo::kernels
