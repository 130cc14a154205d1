// Device memory for tensors: the allocator interface, its statistics, and the host allocator.
#include "kernels/allocator.h"

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mimo::kernels {

namespace {
constexpr size_t kCpuAlignment = 256;
}  // namespace

double AllocatorStats::Fragmentation() const {
  const int64_t cached = reserved_bytes - allocated_bytes;
  if (cached <= 0) return 0.0;
  return 1.0 - static_cast<double>(largest_free_block) / static_cast<double>(cached);
}

std::string AllocatorStats::ToString() const {
  return absl::StrFormat("allocated %s (peak %s), reserved %s (peak %s), fragmentation %.2f",
                         FormatBytes(allocated_bytes), FormatBytes(peak_allocated_bytes),
                         FormatBytes(reserved_bytes), FormatBytes(peak_reserved_bytes),
                         Fragmentation());
}

std::string FormatBytes(int64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  if (unit == 0) return absl::StrCat(bytes, " B");
  std::string text = absl::StrFormat("%.2f", value);
  // "1.50" -> "1.5", "2.00" -> "2".
  while (text.back() == '0') text.pop_back();
  if (text.back() == '.') text.pop_back();
  return absl::StrCat(text, " ", kUnits[unit]);
}

absl::StatusOr<void*> CpuAllocator::Allocate(size_t bytes, StreamHandle) {
  if (bytes == 0) return absl::InvalidArgumentError("cannot allocate 0 bytes");
  const size_t rounded = (bytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
  void* ptr = rounded < bytes ? nullptr : std::aligned_alloc(kCpuAlignment, rounded);
  absl::MutexLock lock(&mu_);
  if (ptr == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("out of host memory: asked ",
                                                     FormatBytes(static_cast<int64_t>(bytes)), "; ",
                                                     stats_.ToString()));
  }
  sizes_[ptr] = rounded;
  stats_.allocated_bytes += static_cast<int64_t>(rounded);
  stats_.reserved_bytes = stats_.allocated_bytes;
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  stats_.peak_reserved_bytes = stats_.peak_allocated_bytes;
  ++stats_.allocations;
  ++stats_.system_allocations;
  return ptr;
}

void CpuAllocator::Free(void* ptr) {
  if (ptr == nullptr) return;
  {
    absl::MutexLock lock(&mu_);
    auto it = sizes_.find(ptr);
    if (it != sizes_.end()) {
      stats_.allocated_bytes -= static_cast<int64_t>(it->second);
      stats_.reserved_bytes = stats_.allocated_bytes;
      ++stats_.system_frees;
      sizes_.erase(it);
    }
  }
  std::free(ptr);
}

absl::StatusOr<Allocator::PoolId> Allocator::BeginPrivatePool(StreamHandle) {
  return absl::UnimplementedError(
      absl::StrCat("the allocator of ", device().ToString(), " has no private pools"));
}

absl::Status Allocator::EndPrivatePool(StreamHandle) {
  return absl::UnimplementedError(
      absl::StrCat("the allocator of ", device().ToString(), " has no private pools"));
}

void Allocator::ReleasePrivatePool(PoolId) {}

AllocatorStats CpuAllocator::stats() {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace mimo::kernels
