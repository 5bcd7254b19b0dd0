#include "proxy/observe/logger.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace bulwark::observe {

namespace {
const char* levelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}
}  // namespace

std::string isoTimestampNow() {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ms % 1000));
  return buf;
}

Logger& Logger::get() {
  static Logger logger;
  return logger;
}

void Logger::configure(LogLevel level, config::LogFormat format) {
  level_.store(level, std::memory_order_relaxed);
  format_.store(format, std::memory_order_relaxed);
}

void Logger::log(LogLevel level, std::string_view msg, std::initializer_list<LogField> fields) {
  std::string line = format_.load(std::memory_order_relaxed) == config::LogFormat::kJson
                         ? formatJson(level, msg, fields)
                         : formatText(level, msg, fields);
  line.push_back('\n');
  std::lock_guard<std::mutex> lock(write_mutex_);
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere to report a failing log sink; drop the line
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

std::string Logger::formatJson(LogLevel level, std::string_view msg,
                               std::initializer_list<LogField> fields) const {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
  w.StartObject();
  w.Key("ts");
  std::string ts = isoTimestampNow();
  w.String(ts.data(), static_cast<rapidjson::SizeType>(ts.size()));
  w.Key("level");
  w.String(levelName(level));
  w.Key("msg");
  w.String(msg.data(), static_cast<rapidjson::SizeType>(msg.size()));
  for (const LogField& f : fields) {
    w.Key(f.key.data(), static_cast<rapidjson::SizeType>(f.key.size()));
    switch (f.value.kind()) {
      case LogValue::Kind::kString:
        w.String(f.value.str().data(), static_cast<rapidjson::SizeType>(f.value.str().size()));
        break;
      case LogValue::Kind::kInt:
        w.Int64(f.value.integer());
        break;
      case LogValue::Kind::kDouble:
        w.Double(f.value.real());
        break;
      case LogValue::Kind::kBool:
        w.Bool(f.value.boolean());
        break;
      case LogValue::Kind::kNull:
        w.Null();
        break;
    }
  }
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

std::string Logger::formatText(LogLevel level, std::string_view msg,
                               std::initializer_list<LogField> fields) const {
  std::string line = isoTimestampNow();
  line += ' ';
  line += levelName(level);
  line += ' ';
  line += msg;
  for (const LogField& f : fields) {
    line += ' ';
    line += f.key;
    line += '=';
    switch (f.value.kind()) {
      case LogValue::Kind::kString:
        line += f.value.str();
        break;
      case LogValue::Kind::kInt:
        line += std::to_string(f.value.integer());
        break;
      case LogValue::Kind::kDouble:
        line += std::to_string(f.value.real());
        break;
      case LogValue::Kind::kBool:
        line += f.value.boolean() ? "true" : "false";
        break;
      case LogValue::Kind::kNull:
        line += "null";
        break;
    }
  }
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';  // one event, one line
  }
  return line;
}

}  // namespace bulwark::observe
