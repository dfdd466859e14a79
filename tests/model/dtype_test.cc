// DType conversions: exhaustive round trips of every bf16/fp16 bit pattern, and float -> half
// rounding against an independent nearest-value search (ties to even).
#include "engine/model/dtype.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "gtest/gtest.h"

namespace kvr {
namespace {

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Reference narrowing: the finite positive 16-bit values are increasing in their bit patterns
// 0..max_bits; find the neighbours of |f| by binary search and pick the nearer, ties to even.
template <typename ToFloat>
uint16_t ReferenceRound(float f, uint16_t max_bits, uint16_t inf_bits, ToFloat to_float) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  const double max = to_float(max_bits);
  // One ulp above max would be the next power of two; the midpoint rounds (to even) to inf.
  const double next = to_float(max_bits - 1) + 2 * (max - to_float(max_bits - 1));
  if (a >= (max + next) / 2) return sign | inf_bits;
  uint32_t lo = 0, hi = max_bits;  // largest k with value(k) <= a
  while (lo < hi) {
    const uint32_t mid = (lo + hi + 1) / 2;
    if (to_float(static_cast<uint16_t>(mid)) <= a) lo = mid; else hi = mid - 1;
  }
  if (lo == max_bits) return sign | static_cast<uint16_t>(lo);
  const double below = to_float(static_cast<uint16_t>(lo)), above = to_float(static_cast<uint16_t>(lo + 1));
  uint32_t pick;
  if (a - below < above - a) pick = lo;
  else if (a - below > above - a) pick = lo + 1;
  else pick = (lo % 2 == 0) ? lo : lo + 1;
  return sign | static_cast<uint16_t>(pick);
}

uint16_t RefBf16(float f) { return ReferenceRound(f, 0x7f7f, 0x7f80, Bf16ToFloat); }
uint16_t RefF16(float f) { return ReferenceRound(f, 0x7bff, 0x7c00, F16ToFloat); }

TEST(DTypeTest, SizesNamesAndParsing) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    auto parsed = ParseSafetensorsDType(DTypeName(t));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, t);
  }
  for (const char* bad : {"I8", "F64", "bf16", "", "F8_E4M3"}) {
    auto parsed = ParseSafetensorsDType(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(parsed.status().message()).find("supported: F32, F16, BF16"), std::string::npos);
  }
}

TEST(DTypeTest, Bf16RoundTripsEveryPattern) {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(b));
    EXPECT_EQ(Bits(f), b << 16);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(f)))) << std::hex << b;
    } else {
      ASSERT_EQ(FloatToBf16(f), b) << std::hex << b;
    }
  }
}

TEST(DTypeTest, F16RoundTripsEveryPattern) {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const float f = F16ToFloat(static_cast<uint16_t>(b));
    if (((b >> 10) & 0x1f) == 0x1f && (b & 0x3ff) != 0) {
      EXPECT_TRUE(std::isnan(f)) << std::hex << b;
      EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(f)))) << std::hex << b;
    } else {
      ASSERT_EQ(FloatToF16(f), b) << std::hex << b << " " << f;
    }
  }
}

TEST(DTypeTest, F16KnownValues) {
  EXPECT_EQ(F16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(F16ToFloat(0xc000), -2.0f);
  EXPECT_EQ(F16ToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(F16ToFloat(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(F16ToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::signbit(F16ToFloat(0x8000)));
  EXPECT_EQ(FloatToF16(65519.0f), 0x7bff);  // just below the midpoint to inf
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);  // the midpoint rounds to even: inf
  EXPECT_EQ(FloatToF16(1e10f), 0x7c00);
  EXPECT_EQ(FloatToF16(-1e10f), 0xfc00);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);  // half the smallest subnormal: to even (0)
  EXPECT_EQ(FloatToF16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even (down)
  EXPECT_EQ(FloatToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie to even (up)
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
}

// Every midpoint between neighbouring 16-bit values (and one float ulp either side of it): the
// cases where rounding goes wrong.
TEST(DTypeTest, NarrowingMidpointsMatchReference) {
  for (uint32_t b = 0; b < 0x7f7f; ++b) {
    const double mid = (static_cast<double>(Bf16ToFloat(b)) + Bf16ToFloat(b + 1)) / 2;
    const float m = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(m), mid);
    for (float f : {m, std::nextafter(m, 0.0f), std::nextafter(m, 1e30f), -m}) {
      ASSERT_EQ(FloatToBf16(f), RefBf16(f)) << std::hex << b << " " << f;
    }
  }
  for (uint32_t b = 0; b < 0x7bff; ++b) {
    const double mid = (static_cast<double>(F16ToFloat(b)) + F16ToFloat(b + 1)) / 2;
    const float m = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(m), mid);
    for (float f : {m, std::nextafter(m, 0.0f), std::nextafter(m, 1e30f), -m}) {
      ASSERT_EQ(FloatToF16(f), RefF16(f)) << std::hex << b << " " << f;
    }
  }
}

// A stride through all 2^32 float patterns (every finite float class: zeros, subnormals, normals).
TEST(DTypeTest, NarrowingSampledFloatsMatchReference) {
  for (uint64_t b = 0; b <= 0xffffffffull; b += 9973) {
    const float f = FromBits(static_cast<uint32_t>(b));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(f))));
      EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(f))));
      continue;
    }
    ASSERT_EQ(FloatToBf16(f), RefBf16(f)) << std::hex << b;
    ASSERT_EQ(FloatToF16(f), RefF16(f)) << std::hex << b;
  }
}

}  // namespace
}  // namespace kvr
