// The body of a request handed to the exchange before the client finished sending it.
// The client connection appends what arrives; the exchange reads it out. Two kinds:
//   retained: every byte is kept (a body up to server.retry_body_limit whose head asked
//     "Expect: 100-continue"): the exchange takes it whole once it has ended, and it can be
//     sent as often as retries need;
//   streamed: a bounded window. The connection reads from the client only while the window
//     has room, so a slow upstream holds the client back and memory stays fixed per upload.
// A retained body that grows past the retry limit (a chunked one) becomes streamed.
// Single-threaded: the worker that owns the connection. The callbacks are invoked
// synchronously, so both sides must defer work that could re-enter the other.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace bulwark::server {

class RequestBody {
 public:
  // How a body failed on the client side.
  enum class Failure { kNone, kTooLarge, kMalformed };

  RequestBody(std::size_t window, std::optional<std::uint64_t> length, bool retained);
  RequestBody(const RequestBody&) = delete;
  RequestBody& operator=(const RequestBody&) = delete;

  // ---- the reader (the exchange)
  // Copies out up to `max` buffered bytes; 0 when nothing is buffered right now.
  std::size_t read(char* out, std::size_t max);
  std::size_t buffered() const { return data_.size() - offset_; }
  bool ended() const { return ended_; }  // the client sent all of it
  Failure failure() const { return failure_; }
  bool retained() const { return retained_; }
  // The whole body of a retained body that has ended; the object is empty afterwards.
  std::string takeAll();
  std::uint64_t received() const { return received_; }
  std::uint64_t consumed() const { return consumed_; }
  std::optional<std::uint64_t> length() const { return length_; }  // Content-Length, if sent
  // Called when bytes arrive, the body ends or fails, or it stops being retained.
  void onReadable(std::function<void()> callback) { on_readable_ = std::move(callback); }

  // ---- the writer (the client connection)
  // How many more bytes append() may take now.
  std::size_t room() const;
  void append(const char* data, std::size_t len);
  void end();
  void fail(Failure failure);
  // Too large to keep whole: from now on only a window is held.
  void stopRetaining();
  // Called when read() makes room (only while streamed).
  void onRoom(std::function<void()> callback) { on_room_ = std::move(callback); }

 private:
  void notifyReader();

  std::size_t window_;
  std::optional<std::uint64_t> length_;
  bool retained_;
  std::string data_;
  std::size_t offset_ = 0;  // data_ before this has been read
  std::uint64_t received_ = 0;
  std::uint64_t consumed_ = 0;
  bool ended_ = false;
  Failure failure_ = Failure::kNone;
  std::function<void()> on_readable_;
  std::function<void()> on_room_;
};

}  // namespace bulwark::server
