// Generated Unicode general-category ranges (see gen/gen_unicode_tables.py). Each entry packs
// (first code point << 5) | GeneralCategory; a range runs up to the next entry's first code point.
#pragma once

#include <cstdint>

namespace kvr {

extern const uint32_t kUnicodeCategoryRanges[];
extern const int kUnicodeCategoryRangeCount;

}  // namespace kvr
