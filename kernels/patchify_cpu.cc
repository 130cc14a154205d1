// Patchify: the argument checks and the CPU twin.
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/op_checks.h"
#include "kernels/patchify.h"

namespace mimo::kernels {

absl::Status CheckPatchify(const PatchifyParams& p) {
  MIMO_RETURN_IF_ERROR(CheckFloatDType("Patchify", p.dtype));
  if (p.batch < 0 || p.channels < 0 || p.height < 0 || p.width < 0 || p.patch <= 0 ||
      p.height % p.patch != 0 || p.width % p.patch != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Patchify: bad shape: batch ", p.batch, ", channels ", p.channels, ", image ", p.height,
        "x", p.width, ", patch ", p.patch, " (sides must be multiples of a positive patch)"));
  }
  return CheckBuffers("Patchify", p.batch * p.channels * p.height * p.width > 0,
                      {{p.in, "in"}, {p.out, "out"}});
}

absl::Status PatchifyCpu(const PatchifyParams& p) {
  MIMO_RETURN_IF_ERROR(CheckPatchify(p));
  const int64_t size = DTypeSize(p.dtype);
  const int64_t ph = p.height / p.patch, pw = p.width / p.patch;
  const int64_t features = p.channels * p.patch * p.patch;
  const auto* in = static_cast<const char*>(p.in);
  auto* out = static_cast<char*>(p.out);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t c = 0; c < p.channels; ++c) {
      for (int64_t y = 0; y < p.height; ++y) {
        for (int64_t x = 0; x < p.width; ++x) {
          const int64_t image = ((b * p.channels + c) * p.height + y) * p.width + x;
          const int64_t patch = b * ph * pw + (y / p.patch) * pw + x / p.patch;
          const int64_t feature = (c * p.patch + y % p.patch) * p.patch + x % p.patch;
          const int64_t patches = patch * features + feature;
          const int64_t from = p.backward ? patches : image, to = p.backward ? image : patches;
          std::memcpy(out + to * size, in + from * size, size);
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace mimo::kernels
