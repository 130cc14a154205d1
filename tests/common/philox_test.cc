// Philox4x32-10 against the Random123 known-answer vectors.
#include "common/philox.h"

#include <gtest/gtest.h>

namespace mimo {
namespace {

TEST(Philox4x32Test, ZeroCounterAndKey) {
  EXPECT_EQ(Philox4x32({0, 0, 0, 0}, {0, 0}),
            (PhiloxCounter{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
}

TEST(Philox4x32Test, AllOnes) {
  EXPECT_EQ(
      Philox4x32({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu}),
      (PhiloxCounter{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
}

TEST(Philox4x32Test, DigitsOfPi) {
  EXPECT_EQ(
      Philox4x32({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u}),
      (PhiloxCounter{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

TEST(Philox4x32Test, IsAConstantExpression) {
  constexpr PhiloxCounter kBlock = Philox4x32({0, 0, 0, 0}, {0, 0});
  static_assert(kBlock[0] == 0x6627e8d5u);
}

}  // namespace
}  // namespace mimo
