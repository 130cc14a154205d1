// libFuzzer target: any bytes as a safetensors file -> ParseSafetensorsHeader never crashes, and
// a header it accepts describes tensors back to back over exactly the bytes after it, each of
// dtype size x elements bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "checkpoint/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return -1;  // Headers of a few KiB are what matters.
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<mimo::checkpoint::SafetensorsHeader> h =
      mimo::checkpoint::ParseSafetensorsHeader(bytes, size);
  if (!h.ok()) return 0;
  uint64_t next = 0;
  for (const mimo::checkpoint::TensorEntry& t : h->tensors) {
    uint64_t elements = 1;
    for (int64_t d : t.shape) elements *= static_cast<uint64_t>(d);
    if (t.begin != next || t.end - t.begin != elements * mimo::checkpoint::DTypeBytes(t.dtype)) {
      std::abort();
    }
    next = t.end;
  }
  if (h->data_offset + next != size) std::abort();
  return 0;
}
