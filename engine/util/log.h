// Minimal leveled logging to stderr, one line per statement, written with a single call so
// lines from different threads never interleave. No global state.
//
//   KVR_LOG(INFO) << "loaded " << n << " tensors from " << path;
//
// Format: "I 2026-11-27 09:30:01.123 [kvr] message". WARNING and ERROR use W and E.
#pragma once

#include <sstream>
#include <string>

namespace kvr {

enum class LogLevel { kInfo, kWarning, kError };

class LogLine {
 public:
  explicit LogLine(LogLevel level) : level_(level) {}
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;
  ~LogLine();
  template <typename T>
  LogLine& operator<<(const T& v) {
    out_ << v;
    return *this;
  }

 private:
  LogLevel level_;
  std::ostringstream out_;
};

}  // namespace kvr

#define KVR_LOG_LEVEL_INFO ::kvr::LogLevel::kInfo
#define KVR_LOG_LEVEL_WARNING ::kvr::LogLevel::kWarning
#define KVR_LOG_LEVEL_ERROR ::kvr::LogLevel::kError
#define KVR_LOG(level) ::kvr::LogLine(KVR_LOG_LEVEL_##level)
