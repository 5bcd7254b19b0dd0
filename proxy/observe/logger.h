// The process-wide structured logger: one JSON object (or text line) per event on stdout.
// Thread-safe and never blocking: the caller formats the line and queues it; a writer
// thread does the write(2)s. When stdout cannot keep up and the queue is full (4 MiB),
// lines are dropped and counted, and the count is logged once the writer catches up.
// Never pass API keys, Authorization values or bodies as fields.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
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
  // Writes every queued line before returning (at shutdown).
  void flush();

 private:
  Logger();
  ~Logger();
  void writerLoop();
  void writeAll(const std::string& data);
  std::string formatJson(LogLevel level, std::string_view msg,
                         std::initializer_list<LogField> fields) const;
  std::string formatText(LogLevel level, std::string_view msg,
                         std::initializer_list<LogField> fields) const;

  std::atomic<LogLevel> level_{LogLevel::kInfo};
  std::atomic<config::LogFormat> format_{config::LogFormat::kJson};
  int fd_ = 1;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable drained_;
  std::deque<std::string> queue_;
  std::size_t queued_bytes_ = 0;
  std::size_t dropped_ = 0;
  bool writing_ = false;
  bool stopping_ = false;
  int flushing_ = 0;  // callers waiting in flush(): the writer skips its batch window
  std::thread writer_;
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

}  // namespace bulwark::observe
