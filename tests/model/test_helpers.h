// Assertions shared by the model tests.
#pragma once

#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace kvr::testutil {

// Checks `s` has `code` and that its message contains every one of `parts` (file, tensor, reason).
inline ::testing::AssertionResult HasError(const absl::Status& s, absl::StatusCode code,
                                           std::initializer_list<std::string> parts) {
  if (s.code() != code) {
    return ::testing::AssertionFailure() << "code " << absl::StatusCodeToString(s.code()) << ", expected "
                                         << absl::StatusCodeToString(code) << ": " << s;
  }
  for (const std::string& p : parts) {
    if (std::string(s.message()).find(p) == std::string::npos) {
      return ::testing::AssertionFailure() << "message lacks \"" << p << "\": " << s;
    }
  }
  return ::testing::AssertionSuccess() << s;
}

}  // namespace kvr::testutil
