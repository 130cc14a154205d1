// Tests of worker/sample_prefetcher.h: samples asked for ahead are read on background threads and
// handed out once each, in any order; others are read on demand; read errors reach the taker;
// a prefetcher destroyed with reads in flight waits for them.
#include "worker/sample_prefetcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <vector>

namespace mimo::worker {
namespace {

// Sample i's caption is "i"; index 13 fails; counts the reads.
class CountingSource : public data::SampleSource {
 public:
  int64_t num_samples() const override { return 1000; }
  absl::StatusOr<data::Sample> Get(int64_t index) const override {
    ++reads;
    if (index == 13) return absl::DataLossError("sample 13 is corrupt");
    data::Sample s;
    s.caption = std::to_string(index);
    return s;
  }
  mutable std::atomic<int> reads{0};
};

TEST(SamplePrefetcherTest, HandsOutFetchedSamplesOnceAndReadsOthersOnDemand) {
  CountingSource source;
  SamplePrefetcher prefetcher(source, 3);
  prefetcher.Fetch({5, 6, 7, 8, 9, 10, 11, 5});  // 5 twice: read once.
  EXPECT_EQ(prefetcher.pending(), 7);
  prefetcher.Fetch({7, 12});  // 7 is requested already.
  EXPECT_EQ(prefetcher.pending(), 8);
  for (int64_t i : {9, 5, 12, 6, 7, 8, 11, 10}) {
    auto s = prefetcher.Take(i);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->caption, std::to_string(i));
  }
  EXPECT_EQ(prefetcher.pending(), 0);
  EXPECT_EQ(source.reads.load(), 8);
  auto again = prefetcher.Take(5);  // Taken before: read now.
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->caption, "5");
  EXPECT_EQ(source.reads.load(), 9);
}

TEST(SamplePrefetcherTest, ReadErrorsReachTheTaker) {
  CountingSource source;
  SamplePrefetcher prefetcher(source, 2);
  prefetcher.Fetch({12, 13, 14});
  EXPECT_EQ(prefetcher.Take(13).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(prefetcher.Take(14).ok());
  EXPECT_EQ(prefetcher.Take(13).status().code(), absl::StatusCode::kDataLoss);  // On demand.
}

TEST(SamplePrefetcherTest, WaitsForReadsInFlightWhenDestroyed) {
  CountingSource source;
  {
    SamplePrefetcher prefetcher(source, 4);
    std::vector<int64_t> indices;
    for (int64_t i = 100; i < 400; ++i) indices.push_back(i);
    prefetcher.Fetch(indices);
  }
  EXPECT_EQ(source.reads.load(), 300);
}

}  // namespace
}  // namespace mimo::worker
