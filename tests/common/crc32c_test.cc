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

TEST(Crc32cTest, PiecesAndEveryPathAgree) {
  // Random bytes at every alignment and length up to 100, in one piece and in two: the CPU's
  // instruction (where the machine has it) and the table give the same CRC.
  std::string bytes(300, '\0');
  uint32_t state = 12345;
  for (char& c : bytes) c = static_cast<char>((state = state * 1103515245u + 12345u) >> 24);
  for (size_t at = 0; at < 9; ++at) {
    for (size_t n = 0; n <= 100; ++n) {
      const auto* p = reinterpret_cast<const uint8_t*>(bytes.data() + at);
      const uint32_t table = ~crc32c_internal::ExtendByTable(~0u, p, n);
      ASSERT_EQ(Crc32c(p, n), table) << "at " << at << ", n " << n;
      ASSERT_EQ(Crc32cExtend(Crc32c(p, n / 3), p + n / 3, n - n / 3), table);
    }
  }
}

TEST(Crc32cTest, MaskedIsRotatedPlusDelta) {
  const std::string digits = "123456789";
  const uint32_t c = 0xE3069283u;
  EXPECT_EQ(MaskedCrc32c(digits.data(), digits.size()), ((c >> 15) | (c << 17)) + 0xA282EAD8u);
}

}  // namespace
}  // namespace mimo
