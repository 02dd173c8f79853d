// Logging to stderr with journald priority prefixes ("<6>" = info), which
// systemd turns into priorities; on a terminal they are harmless.
#pragma once

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <string>

namespace kvs::log {

// "2026-12-03T01:41:18Z": a Unix time in ns, for messages.
inline std::string utc_time(uint64_t unix_ns) {
  const auto t = static_cast<time_t>(unix_ns / 1000000000);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

enum class Level { kError = 3, kWarning = 4, kInfo = 6, kDebug = 7 };

inline Level& threshold() {
  static Level l = Level::kInfo;
  return l;
}

inline bool set_level(const std::string& name) {
  if (name == "debug")
    threshold() = Level::kDebug;
  else if (name == "info")
    threshold() = Level::kInfo;
  else if (name == "warning")
    threshold() = Level::kWarning;
  else if (name == "error")
    threshold() = Level::kError;
  else
    return false;
  return true;
}

__attribute__((format(printf, 2, 3))) inline void write(Level level, const char* fmt, ...) {
  if (static_cast<int>(level) > static_cast<int>(threshold())) return;
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "<%d>kvsd: %s\n", static_cast<int>(level), buf);
}

}  // namespace kvs::log

#define KVS_LOG_ERROR(...) ::kvs::log::write(::kvs::log::Level::kError, __VA_ARGS__)
#define KVS_LOG_WARN(...) ::kvs::log::write(::kvs::log::Level::kWarning, __VA_ARGS__)
#define KVS_LOG_INFO(...) ::kvs::log::write(::kvs::log::Level::kInfo, __VA_ARGS__)
#define KVS_LOG_DEBUG(...) ::kvs::log::write(::kvs::log::Level::kDebug, __VA_ARGS__)
