// Tests of common/crc32c.h against the published check values.
#include "common/crc32c.h"

#include <gtest/gtest.h>

#include <string>

namespace mimo {
namespace {

TEST(Crc32cTest, CheckValues) {
  const std::string digits = "123456789";
  EXPECT_EQ(Crc32c(digits.data(), digits.size()), 0xE3069283u);
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
  const std::string zeros(32, '\0');  // RFC 3720 B.4: 32 bytes of zeros.
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  const std::string ones(32, '\xff');
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
}

TEST(Crc32cTest, MaskedIsRotatedPlusDelta) {
  const std::string digits = "123456789";
  const uint32_t c = 0xE3069283u;
  EXPECT_EQ(MaskedCrc32c(digits.data(), digits.size()), ((c >> 15) | (c << 17)) + 0xA282EAD8u);
}

}  // namespace
}  // namespace mimo
