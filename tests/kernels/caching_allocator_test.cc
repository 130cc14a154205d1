// CachingAllocator over a fake segment source with a capacity: reuse without new segments, best
// fit, splitting and merging, per-stream pools, peaks and fragmentation, and running out.
#include "kernels/caching_allocator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <set>
#include <vector>

namespace mimo::kernels {
namespace {

using ::testing::HasSubstr;

constexpr size_t kMiB = size_t{1} << 20;

// Host memory standing in for a device of `capacity` bytes.
struct FakeDevice {
  size_t capacity = size_t{256} << 20;
  size_t used = 0;
  int mallocs = 0;
  int frees = 0;
  std::vector<std::pair<void*, size_t>> live;

  SegmentSource Source() {
    return {.allocate = [this](size_t bytes) -> absl::StatusOr<void*> {
              if (used + bytes > capacity) {
                return absl::ResourceExhaustedError("fake device: out of memory");
              }
              void* p = std::aligned_alloc(4096, bytes);
              used += bytes;
              ++mallocs;
              live.emplace_back(p, bytes);
              return p;
            },
            .free =
                [this](void* p) {
                  for (auto it = live.begin(); it != live.end(); ++it) {
                    if (it->first == p) {
                      used -= it->second;
                      live.erase(it);
                      break;
                    }
                  }
                  ++frees;
                  std::free(p);
                }};
  }
};

StreamHandle Stream(int i) { return reinterpret_cast<StreamHandle>(static_cast<uintptr_t>(i)); }

TEST(CachingAllocatorTest, FreedBlocksAreReusedWithoutNewSegments) {
  FakeDevice device;
  CachingAllocator allocator(Device::Cuda(0), device.Source());
  // A training-step-like pattern, repeated: after the first step nothing new is asked.
  std::mt19937 random(3);
  std::vector<size_t> sizes;
  for (int i = 0; i < 40; ++i) sizes.push_back(1 + random() % (3 * kMiB));
  int mallocs_after_first = 0;
  for (int step = 0; step < 5; ++step) {
    std::vector<void*> held;
    for (size_t s : sizes) held.push_back(*allocator.Allocate(s));
    for (void* p : held) allocator.Free(p);
    if (step == 0) mallocs_after_first = device.mallocs;
  }
  EXPECT_EQ(device.mallocs, mallocs_after_first);
  const AllocatorStats stats = allocator.stats();
  EXPECT_EQ(stats.allocated_bytes, 0);
  EXPECT_EQ(stats.allocations, 200);
  EXPECT_EQ(stats.system_allocations, mallocs_after_first);
  EXPECT_GT(stats.peak_allocated_bytes, 0);
  EXPECT_EQ(stats.reserved_bytes, static_cast<int64_t>(device.used));
}

TEST(CachingAllocatorTest, SmallRequestsShareASegmentAndMerge) {
  FakeDevice device;
  CachingAllocator allocator(Device::Cuda(0), device.Source());
  void* a = *allocator.Allocate(1000);  // Rounded to 1024.
  void* b = *allocator.Allocate(512);
  void* c = *allocator.Allocate(1);
  EXPECT_EQ(device.mallocs, 1);  // One 2 MiB small segment.
  EXPECT_EQ(static_cast<char*>(b) - static_cast<char*>(a), 1024);
  EXPECT_EQ(static_cast<char*>(c) - static_cast<char*>(b), 512);
  EXPECT_EQ(allocator.stats().allocated_bytes, 2048);
  EXPECT_EQ(allocator.stats().reserved_bytes, static_cast<int64_t>(2 * kMiB));
  // Freeing the middle, then its neighbours, merges back into one whole segment.
  allocator.Free(b);
  EXPECT_EQ(allocator.stats().largest_free_block, static_cast<int64_t>(2 * kMiB - 2048));
  allocator.Free(a);
  allocator.Free(c);
  EXPECT_EQ(allocator.stats().largest_free_block, static_cast<int64_t>(2 * kMiB));
  EXPECT_EQ(allocator.stats().Fragmentation(), 0.0);
  allocator.EmptyCache();
  EXPECT_EQ(device.frees, 1);
  EXPECT_EQ(allocator.stats().reserved_bytes, 0);
}

TEST(CachingAllocatorTest, BestFitSplitsLargeBlocksAndShowsFragmentation) {
  FakeDevice device;
  CachingAllocator allocator(Device::Cuda(0), device.Source());
  void* big = *allocator.Allocate(9 * kMiB);  // A 10 MiB segment (2 MiB rounding).
  EXPECT_EQ(device.mallocs, 1);
  allocator.Free(big);
  // 3 MiB fits in the cached 10 MiB block: split, no new segment.
  void* x = *allocator.Allocate(3 * kMiB);
  void* y = *allocator.Allocate(3 * kMiB);
  EXPECT_EQ(device.mallocs, 1);
  EXPECT_EQ(x, big);
  EXPECT_EQ(static_cast<char*>(y) - static_cast<char*>(x), static_cast<ptrdiff_t>(3 * kMiB));
  allocator.Free(x);
  // Free: 3 MiB at the front and 4 MiB at the back, not adjacent.
  AllocatorStats stats = allocator.stats();
  EXPECT_EQ(stats.largest_free_block, static_cast<int64_t>(4 * kMiB));
  EXPECT_NEAR(stats.Fragmentation(), 3.0 / 7.0, 1e-9);
  // A 4 MiB request takes the exact fit, not the front block.
  void* z = *allocator.Allocate(4 * kMiB);
  EXPECT_EQ(static_cast<char*>(z) - static_cast<char*>(y), static_cast<ptrdiff_t>(3 * kMiB));
  allocator.Free(y);
  allocator.Free(z);
  EXPECT_EQ(allocator.stats().largest_free_block, static_cast<int64_t>(10 * kMiB));
}

TEST(CachingAllocatorTest, BlocksAreReusedOnlyOnTheirStream) {
  FakeDevice device;
  CachingAllocator allocator(Device::Cuda(0), device.Source());
  void* a = *allocator.Allocate(4 * kMiB, Stream(1));
  allocator.Free(a);
  void* b = *allocator.Allocate(4 * kMiB, Stream(2));
  EXPECT_NE(a, b);
  EXPECT_EQ(device.mallocs, 2);
  void* c = *allocator.Allocate(4 * kMiB, Stream(1));
  EXPECT_EQ(c, a);
  EXPECT_EQ(device.mallocs, 2);
}

TEST(CachingAllocatorTest, RunningOutReleasesTheCacheThenFailsWithStatistics) {
  FakeDevice device;
  device.capacity = 8 * kMiB;
  CachingAllocator allocator(Device::Cuda(3), device.Source());
  void* a = *allocator.Allocate(4 * kMiB, Stream(1));
  allocator.Free(a);  // Cached for stream 1.
  // Stream 2 cannot use it; the device is full; releasing the cache makes room.
  void* b = *allocator.Allocate(6 * kMiB, Stream(2));
  EXPECT_NE(b, nullptr);
  EXPECT_EQ(device.frees, 1);
  // Now nothing can be released.
  const absl::StatusOr<void*> c = allocator.Allocate(4 * kMiB);
  EXPECT_TRUE(absl::IsResourceExhausted(c.status())) << c.status();
  EXPECT_THAT(c.status().message(), HasSubstr("out of memory on cuda:3: asked 4 MiB"));
  EXPECT_THAT(c.status().message(), HasSubstr("allocated 6 MiB"));
  EXPECT_THAT(c.status().message(), HasSubstr("fake device: out of memory"));
  allocator.Free(b);
  EXPECT_TRUE(allocator.Allocate(4 * kMiB).ok());
}

TEST(CachingAllocatorTest, BadRequestsAndForeignPointers) {
  FakeDevice device;
  CachingAllocator allocator(Device::Cuda(0), device.Source());
  EXPECT_TRUE(absl::IsInvalidArgument(allocator.Allocate(0).status()));
  EXPECT_TRUE(absl::IsResourceExhausted(allocator.Allocate(~size_t{0}).status()));
  int local = 0;
  allocator.Free(&local);  // Not ours: ignored.
  allocator.Free(nullptr);
  void* a = *allocator.Allocate(100);
  allocator.Free(a);
  allocator.Free(a);  // Twice: ignored, the block is not cached twice.
  void* b = *allocator.Allocate(100);
  void* c = *allocator.Allocate(100);
  EXPECT_NE(b, c);
}

// Random allocations and frees: live blocks never overlap, the accounting always adds up, and
// freeing everything merges every segment back whole.
TEST(CachingAllocatorTest, RandomSequencesKeepBlocksDisjointAndAccounted) {
  FakeDevice device;
  device.capacity = size_t{256} << 20;
  CachingAllocator allocator(Device::Cuda(0), device.Source());
  std::mt19937 random(11);
  std::vector<std::pair<char*, size_t>> live;
  for (int i = 0; i < 3000; ++i) {
    if (live.empty() || (live.size() < 100 && random() % 2 == 0)) {
      const size_t size = random() % 4 == 0 ? 1 + random() % (5 * kMiB) : 1 + random() % 20000;
      absl::StatusOr<void*> p = allocator.Allocate(size, Stream(random() % 2));
      ASSERT_TRUE(p.ok()) << p.status();
      live.emplace_back(static_cast<char*>(*p), size);
    } else {
      const size_t k = random() % live.size();
      allocator.Free(live[k].first);
      live.erase(live.begin() + k);
    }
  }
  std::set<std::pair<char*, size_t>> sorted(live.begin(), live.end());
  char* end = nullptr;
  for (const auto& [p, size] : sorted) {
    EXPECT_GE(p, end);
    end = p + size;
  }
  for (const auto& [p, size] : live) allocator.Free(p);
  const AllocatorStats stats = allocator.stats();
  EXPECT_EQ(stats.allocated_bytes, 0);
  EXPECT_EQ(stats.reserved_bytes, static_cast<int64_t>(device.used));
  allocator.EmptyCache();
  EXPECT_EQ(device.used, 0u);
  EXPECT_EQ(allocator.stats().reserved_bytes, 0);
}

}  // namespace
}  // namespace mimo::kernels
