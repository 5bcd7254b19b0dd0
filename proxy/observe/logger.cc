#include "proxy/observe/logger.h"

#include "proxy/observe/timestamp.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <utility>

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

Logger& Logger::get() {
  static Logger logger;
  return logger;
}

void Logger::configure(LogLevel level, config::LogFormat format) {
  level_.store(level, std::memory_order_relaxed);
  format_.store(format, std::memory_order_relaxed);
}

namespace {
constexpr std::size_t kMaxQueuedBytes = 4 * 1024 * 1024;
// Lines are written in batches: the writer, once woken, gathers for up to this long (or
// until kBatchBytes are queued), so a busy proxy makes a few hundred writes a second, not
// one per request, and a request wakes the writer only when the queue was empty.
constexpr std::chrono::milliseconds kBatchWindow{2};
constexpr std::size_t kBatchBytes = 64 * 1024;
}  // namespace

Logger::Logger() : writer_([this] { writerLoop(); }) {}

Logger::~Logger() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  writer_.join();
}

void Logger::log(LogLevel level, std::string_view msg, std::initializer_list<LogField> fields) {
  std::string line = format_.load(std::memory_order_relaxed) == config::LogFormat::kJson
                         ? formatJson(level, msg, fields)
                         : formatText(level, msg, fields);
  line.push_back('\n');
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (queued_bytes_ + line.size() > kMaxQueuedBytes) {
      ++dropped_;
      return;
    }
    first = queue_.empty();
    queued_bytes_ += line.size();
    queue_.push_back(std::move(line));
  }
  // A queue with lines in it already has the writer's attention: it takes all of them.
  if (first) wake_.notify_one();
}

void Logger::flush() {
  std::unique_lock<std::mutex> lock(mutex_);
  ++flushing_;
  wake_.notify_one();
  drained_.wait(lock, [this] { return queue_.empty() && !writing_; });
  --flushing_;
}

void Logger::writerLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty() && stopping_) return;
    // Gather a batch; flush() and shutdown do not wait for the window.
    wake_.wait_for(lock, kBatchWindow,
                   [this] { return stopping_ || flushing_ > 0 || queued_bytes_ >= kBatchBytes; });
    std::deque<std::string> batch;
    batch.swap(queue_);
    queued_bytes_ = 0;
    std::size_t dropped = std::exchange(dropped_, 0);
    writing_ = true;
    lock.unlock();
    std::string out;
    for (const std::string& line : batch) out += line;
    if (dropped > 0) {
      out += formatJson(LogLevel::kWarn, "log lines dropped: stdout could not keep up",
                        {{"dropped", dropped}});
      out += '\n';
    }
    writeAll(out);
    lock.lock();
    writing_ = false;
    if (queue_.empty()) drained_.notify_all();
  }
}

void Logger::writeAll(const std::string& data) {
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere to report a failing log sink; drop the lines
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
