// A reusable byte buffer that never initializes its bytes: growing std::vector<char> zeroes every
// new byte (a memset as large as each read it is about to be overwritten by), and a buffer made
// per call faults in fresh pages every time.
#pragma once

#include <cstddef>
#include <memory>
#include <new>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace mimo {

class ByteBuffer {
 public:
  // Makes the buffer `n` bytes long; its contents are unspecified afterwards (allocates only
  // when `n` exceeds every size before). ResourceExhausted when the memory is not there.
  absl::Status Resize(size_t n) {
    if (n > capacity_) {
      data_.reset();
      capacity_ = 0;
      data_.reset(new (std::nothrow) char[n]);
      if (data_ == nullptr) {
        size_ = 0;
        return absl::ResourceExhaustedError(
            absl::StrCat("cannot allocate ", n, " bytes of host memory"));
      }
      capacity_ = n;
    }
    size_ = n;
    return absl::OkStatus();
  }
  char* data() { return data_.get(); }
  const char* data() const { return data_.get(); }
  size_t size() const { return size_; }
  absl::Span<char> span() { return {data_.get(), size_}; }
  absl::Span<const char> span() const { return {data_.get(), size_}; }

 private:
  std::unique_ptr<char[]> data_;
  size_t size_ = 0, capacity_ = 0;
};

}  // namespace mimo
