#include "engine/util/log.h"

#include <chrono>
#include <cstdio>
#include <ctime>

namespace kvr {

LogLine::~LogLine() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const int millis =
      static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
  const char tag = level_ == LogLevel::kInfo ? 'I' : level_ == LogLevel::kWarning ? 'W' : 'E';
  char prefix[64];
  std::snprintf(prefix, sizeof(prefix), "%c %s.%03d [kvr] ", tag, stamp, millis);
  std::string line = prefix + out_.str() + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);  // one write: atomic per line
}

}  // namespace kvr
