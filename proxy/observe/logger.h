// The process-wide structured logger: one JSON object (or text line) per event on stdout.
// Thread-safe; a line is formatted by the caller and written with a single write(2).
// Never pass API keys, Authorization values or bodies as fields.
#pragma once

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>

#include "config/config.h"

namespace bulwark::observe {

class LogValue {
 public:
  enum class Kind { kString, kInt, kDouble, kBool, kNull };
  LogValue(std::string_view s) : kind_(Kind::kString), s_(s) {}
  LogValue(const char* s) : kind_(Kind::kString), s_(s) {}
  LogValue(const std::string& s) : kind_(Kind::kString), s_(s) {}
  LogValue(bool b) : kind_(Kind::kBool), b_(b) {}
  LogValue(double d) : kind_(Kind::kDouble), d_(d) {}
  LogValue(std::nullptr_t) : kind_(Kind::kNull) {}
  template <typename T,
            typename = std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>>>
  LogValue(T i) : kind_(Kind::kInt), i_(static_cast<std::int64_t>(i)) {}

  Kind kind() const { return kind_; }
  std::string_view str() const { return s_; }
  std::int64_t integer() const { return i_; }
  double real() const { return d_; }
  bool boolean() const { return b_; }

 private:
  Kind kind_;
  std::string_view s_;
  std::int64_t i_ = 0;
  double d_ = 0;
  bool b_ = false;
};

struct LogField {
  std::string_view key;
  LogValue value;
};

using config::LogLevel;

class Logger {
 public:
  static Logger& get();

  void configure(LogLevel level, config::LogFormat format);
  bool enabled(LogLevel level) const { return level >= level_.load(std::memory_order_relaxed); }
  void log(LogLevel level, std::string_view msg, std::initializer_list<LogField> fields = {});
  // Where lines go (tests point this at a pipe); default stdout.
  void setFd(int fd) { fd_ = fd; }

 private:
  Logger() = default;
  std::string formatJson(LogLevel level, std::string_view msg,
                         std::initializer_list<LogField> fields) const;
  std::string formatText(LogLevel level, std::string_view msg,
                         std::initializer_list<LogField> fields) const;

  std::atomic<LogLevel> level_{LogLevel::kInfo};
  std::atomic<config::LogFormat> format_{config::LogFormat::kJson};
  int fd_ = 1;
  std::mutex write_mutex_;
};

inline void logDebug(std::string_view msg, std::initializer_list<LogField> f = {}) {
  if (Logger::get().enabled(LogLevel::kDebug)) Logger::get().log(LogLevel::kDebug, msg, f);
}
inline void logInfo(std::string_view msg, std::initializer_list<LogField> f = {}) {
  if (Logger::get().enabled(LogLevel::kInfo)) Logger::get().log(LogLevel::kInfo, msg, f);
}
inline void logWarn(std::string_view msg, std::initializer_list<LogField> f = {}) {
  if (Logger::get().enabled(LogLevel::kWarn)) Logger::get().log(LogLevel::kWarn, msg, f);
}
inline void logError(std::string_view msg, std::initializer_list<LogField> f = {}) {
  if (Logger::get().enabled(LogLevel::kError)) Logger::get().log(LogLevel::kError, msg, f);
}

// ISO-8601 UTC with milliseconds: "2026-11-28T14:00:00.000Z".
std::string isoTimestampNow();

}  // namespace bulwark::observe
