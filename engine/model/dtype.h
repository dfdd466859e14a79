// Element types of checkpoint tensors and device buffers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace kvr {

enum class DType { kF32, kF16, kBF16 };

size_t DTypeSize(DType t);
std::string_view DTypeName(DType t);  // "F32", "F16", "BF16" as safetensors spells them
// Parses a safetensors dtype string; anything but F32/F16/BF16 is an error naming what is allowed.
absl::StatusOr<DType> ParseSafetensorsDType(std::string_view s);

// Scalar conversions (round-to-nearest-even for the narrowing ones).
float Bf16ToFloat(uint16_t v);
float F16ToFloat(uint16_t v);
uint16_t FloatToBf16(float f);
uint16_t FloatToF16(float f);

}  // namespace kvr
