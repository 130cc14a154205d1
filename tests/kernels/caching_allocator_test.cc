// CachingAllocator over a fake segment source with a capacity: reuse without new segments, best
// fit, splitting and merging, per-stream pools, peaks and fragmentation, running out, and private
// pools (what a CUDA graph's capture allocates and frees is handed to no one else until released).
#include "kernels/caching_allocator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
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

TEST(CachingAllocatorTest, APrivatePoolKeepsWhatItsCaptureAllocatedAndFreedFromOthers) {
  FakeDevice device;
  CachingAllocator allocator(Device::Cuda(0), device.Source());
  // Before the capture: a cached block and a live one on the capture's stream, one on another.
  void* cached = *allocator.Allocate(4 * kMiB, Stream(1));
  void* replaced = *allocator.Allocate(4 * kMiB, Stream(1));
  void* other = *allocator.Allocate(4 * kMiB, Stream(2));
  allocator.Free(cached);
  const absl::StatusOr<Allocator::PoolId> pool = allocator.BeginPrivatePool(Stream(1));
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_TRUE(absl::IsFailedPrecondition(allocator.BeginPrivatePool(Stream(1)).status()));
  // The capture: its blocks come from new segments, not from the shared cache; its temporaries
  // are reused within it; what it frees from outside (a tensor it replaced) is held back.
  void* temporary = *allocator.Allocate(4 * kMiB, Stream(1));
  EXPECT_NE(temporary, cached);
  allocator.Free(temporary);
  void* output = *allocator.Allocate(4 * kMiB, Stream(1));
  EXPECT_EQ(output, temporary);
  allocator.Free(replaced);
  void* beside = *allocator.Allocate(4 * kMiB, Stream(2));  // Other streams: the shared cache.
  EXPECT_NE(beside, temporary);
  allocator.Free(beside);
  ASSERT_TRUE(allocator.EndPrivatePool(Stream(1)).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(allocator.EndPrivatePool(Stream(1))));
  // Between replays: the stream's requests get the shared cache, never the pool's or the held
  // block; the output freed now stays in the pool.
  allocator.Free(output);
  std::set<void*> given;
  for (int i = 0; i < 3; ++i) given.insert(*allocator.Allocate(4 * kMiB, Stream(1)));
  EXPECT_TRUE(given.contains(cached));
  EXPECT_FALSE(given.contains(output));
  EXPECT_FALSE(given.contains(replaced));
  // Emptying the cache never gives back the pool's segments (nor the held block's).
  allocator.EmptyCache();
  for (void* p : given) allocator.Free(p);
  allocator.Free(other);
  allocator.EmptyCache();
  EXPECT_EQ(device.used, 8 * kMiB);  // The pool's segment and the held block's.
  // Released: both join the shared cache and are reused (and released) like any block.
  allocator.ReleasePrivatePool(*pool);
  allocator.ReleasePrivatePool(*pool);  // Twice: a no-op.
  std::set<void*> after;
  for (int i = 0; i < 2; ++i) after.insert(*allocator.Allocate(4 * kMiB, Stream(1)));
  EXPECT_EQ(after, (std::set<void*>{output, replaced}));
  for (void* p : after) allocator.Free(p);
  allocator.EmptyCache();
  EXPECT_EQ(device.used, 0u);
  EXPECT_EQ(allocator.stats().allocated_bytes, 0);
}

// A shared request whose best fit would be a free block of an ended pool on the same stream (the
// next in the cache's order when the shared cache has nothing for the stream) gets a new segment.
TEST(CachingAllocatorTest, SharedRequestsNeverGetAnEndedPoolsFreeBlocks) {
  FakeDevice device;
  CachingAllocator allocator(Device::Cuda(0), device.Source());
  const absl::StatusOr<Allocator::PoolId> pool = allocator.BeginPrivatePool(Stream(1));
  ASSERT_TRUE(pool.ok());
  void* in_pool = *allocator.Allocate(4 * kMiB, Stream(1));
  void* small_in_pool = *allocator.Allocate(1000, Stream(1));
  allocator.Free(in_pool);
  allocator.Free(small_in_pool);
  ASSERT_TRUE(allocator.EndPrivatePool(Stream(1)).ok());
  EXPECT_EQ(allocator.stats().largest_free_block, 0);  // Nothing the others may get.
  void* shared = *allocator.Allocate(4 * kMiB, Stream(1));
  void* small_shared = *allocator.Allocate(1000, Stream(1));
  EXPECT_NE(shared, in_pool);
  EXPECT_NE(small_shared, small_in_pool);
  EXPECT_EQ(device.mallocs, 4);
  // Released while still open, a pool is ended first.
  const absl::StatusOr<Allocator::PoolId> open = allocator.BeginPrivatePool(Stream(2));
  ASSERT_TRUE(open.ok());
  allocator.ReleasePrivatePool(*open);
  EXPECT_TRUE(absl::IsFailedPrecondition(allocator.EndPrivatePool(Stream(2))));
  EXPECT_TRUE(allocator.BeginPrivatePool(Stream(2)).ok());
}

TEST(CachingAllocatorTest, NoCacheIsReleasedWhileAPrivatePoolIsOpen) {
  FakeDevice device;
  device.capacity = 8 * kMiB;
  CachingAllocator allocator(Device::Cuda(0), device.Source());
  allocator.Free(*allocator.Allocate(6 * kMiB, Stream(2)));  // Cached.
  const absl::StatusOr<Allocator::PoolId> pool = allocator.BeginPrivatePool(Stream(1));
  ASSERT_TRUE(pool.ok());
  // cudaFree during a capture would break it: out of memory instead.
  const absl::StatusOr<void*> a = allocator.Allocate(4 * kMiB, Stream(1));
  EXPECT_TRUE(absl::IsResourceExhausted(a.status())) << a.status();
  EXPECT_EQ(device.frees, 0);
  ASSERT_TRUE(allocator.EndPrivatePool(Stream(1)).ok());
  allocator.ReleasePrivatePool(*pool);
  EXPECT_TRUE(allocator.Allocate(4 * kMiB, Stream(1)).ok());
  EXPECT_EQ(device.frees, 1);
}

TEST(CachingAllocatorTest, TheHostAllocatorHasNoPrivatePools) {
  CpuAllocator allocator;
  EXPECT_TRUE(absl::IsUnimplemented(allocator.BeginPrivatePool(nullptr).status()));
  EXPECT_TRUE(absl::IsUnimplemented(allocator.EndPrivatePool(nullptr)));
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

// Random allocations and frees on 3 streams while private pools open, end and are released at
// random: no request is ever answered with memory a pool not yet released holds (allocated in it,
// or freed from outside it while it was open) unless it is a request of that pool's capture;
// releasing everything gives every byte back.
TEST(CachingAllocatorTest, RandomPrivatePoolsNeverLendTheirMemory) {
  FakeDevice device;
  device.capacity = size_t{1} << 30;
  CachingAllocator allocator(Device::Cuda(0), device.Source());
  std::mt19937 random(17);
  struct Live {
    char* ptr;
    size_t size;
    int stream;
  };
  std::vector<Live> live;
  std::map<int, Allocator::PoolId> open;                                       // By stream.
  std::map<Allocator::PoolId, std::vector<std::pair<char*, size_t>>> guarded;  // Not released.
  std::vector<Allocator::PoolId> ended;
  auto overlaps = [](char* p, size_t n, const std::pair<char*, size_t>& r) {
    return p < r.first + r.second && r.first < p + n;
  };
  for (int i = 0; i < 4000; ++i) {
    const int action = static_cast<int>(random() % 100);
    const int stream = static_cast<int>(random() % 3);
    if (action < 3) {
      if (open.contains(stream)) {
        ASSERT_TRUE(allocator.EndPrivatePool(Stream(stream)).ok());
        ended.push_back(open[stream]);
        open.erase(stream);
      } else {
        absl::StatusOr<Allocator::PoolId> pool = allocator.BeginPrivatePool(Stream(stream));
        ASSERT_TRUE(pool.ok()) << pool.status();
        open[stream] = *pool;
        guarded[*pool];
      }
    } else if (action < 5 && !ended.empty()) {
      const size_t k = random() % ended.size();
      allocator.ReleasePrivatePool(ended[k]);
      guarded.erase(ended[k]);
      ended.erase(ended.begin() + k);
    } else if (live.empty() || (live.size() < 100 && action < 55)) {
      const size_t size = random() % 4 == 0 ? 1 + random() % (5 * kMiB) : 1 + random() % 20000;
      absl::StatusOr<void*> p = allocator.Allocate(size, Stream(stream));
      ASSERT_TRUE(p.ok()) << p.status();
      char* c = static_cast<char*>(*p);
      const auto capture = open.find(stream);
      for (const auto& [pool, ranges] : guarded) {
        if (capture != open.end() && capture->second == pool) continue;
        for (const auto& r : ranges) ASSERT_FALSE(overlaps(c, size, r)) << "pool " << pool;
      }
      if (capture != open.end()) guarded[capture->second].emplace_back(c, size);
      live.push_back({c, size, stream});
    } else if (!live.empty()) {
      const size_t k = random() % live.size();
      const auto capture = open.find(live[k].stream);
      if (capture != open.end()) guarded[capture->second].emplace_back(live[k].ptr, live[k].size);
      allocator.Free(live[k].ptr);
      live.erase(live.begin() + k);
    }
  }
  for (const auto& [stream, pool] : open) {
    ASSERT_TRUE(allocator.EndPrivatePool(Stream(stream)).ok());
    ended.push_back(pool);
  }
  for (const Live& l : live) allocator.Free(l.ptr);
  for (Allocator::PoolId pool : ended) allocator.ReleasePrivatePool(pool);
  EXPECT_EQ(allocator.stats().allocated_bytes, 0);
  allocator.EmptyCache();
  EXPECT_EQ(device.used, 0u);
  EXPECT_EQ(allocator.stats().reserved_bytes, 0);
}

}  // namespace
}  // namespace mimo::kernels
