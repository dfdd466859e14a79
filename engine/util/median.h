// The median of repeated timings, as every benchmark and the calibration report them.
#pragma once

#include <algorithm>
#include <vector>

namespace kvr {

// The middle value of v (the upper of the two middle ones for an even count); 0 for none.
inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

}  // namespace kvr
