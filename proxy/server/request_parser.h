// Incremental HTTP/1.x request parser over Debian's http_parser, with Bulwark's limits.
// One instance per client connection, single-threaded. Stops after each complete request
// so pipelined requests are taken one at a time.
// A body larger than retry_body (by Content-Length, or a chunked body once it grows past it),
// or one the client sends only after "100 Continue", is not collected: the parser stops at
// kStreamStart, and the rest of the body goes to the RequestBody given to streamBodyTo().
#pragma once

#include <http_parser.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "proxy/server/http_request.h"

namespace bulwark::server {

struct ParserLimits {
  std::size_t max_header_bytes = 64 * 1024;  // request line + all header lines
  std::size_t max_headers = 128;
  std::uint64_t max_body = 512ull * 1024 * 1024;
  std::uint64_t retry_body = 8ull * 1024 * 1024;  // larger bodies are streamed
};

enum class ParseStatus {
  kNeedMore,         // all input consumed, no complete request yet
  kComplete,         // a request is ready: take it with takeRequest()
  kStreamStart,      // a request whose body is still to come: takeRequest(), streamBodyTo()
  kBodyEnd,          // the streamed body is complete: the next request may follow
  kBadRequest,       // malformed: answer 400 and close
  kHeadersTooLarge,  // answer 431 and close
  kBodyTooLarge,     // answer 413 and close
};

class RequestParser {
 public:
  explicit RequestParser(const ParserLimits& limits);
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  // Parses as much of [data, data+len) as it can; *consumed says how much was used.
  // After kComplete, call again with the rest to parse the next pipelined request.
  ParseStatus feed(const char* data, std::size_t len, std::size_t* consumed);
  // The client closed its side: completes a request whose end is the close, if any.
  ParseStatus finish();

  HttpRequest takeRequest();
  // After kStreamStart: body bytes go to `body` (whose room the caller respects by feeding
  // no more input than body->room()), until kBodyEnd or an error.
  void streamBodyTo(RequestBody* body) { stream_to_ = body; }
  bool streamingBody() const { return stream_to_ != nullptr; }
  // True while part of a request has been received (a request head is being read).
  bool inRequest() const { return in_message_; }
  bool headComplete() const { return head_complete_; }
  // The Content-Length of the request being read (none for a chunked body).
  std::optional<std::uint64_t> contentLength() const;
  const std::string& errorDetail() const { return error_detail_; }

 private:
  static int onMessageBegin(http_parser* p);
  static int onUrl(http_parser* p, const char* at, size_t len);
  static int onHeaderField(http_parser* p, const char* at, size_t len);
  static int onHeaderValue(http_parser* p, const char* at, size_t len);
  static int onHeadersComplete(http_parser* p);
  static int onBody(http_parser* p, const char* at, size_t len);
  static int onMessageComplete(http_parser* p);

  bool countHeaderBytes(size_t len);
  bool finishHead();
  void startStreaming();

  ParserLimits limits_;
  http_parser parser_;
  http_parser_settings settings_;
  HttpRequest current_;
  HttpRequest ready_;
  std::size_t header_bytes_ = 0;
  bool last_was_value_ = false;
  bool in_message_ = false;
  bool head_complete_ = false;
  bool complete_ = false;
  bool stream_start_ = false;  // stop at kStreamStart (the parser is paused there)
  bool body_end_ = false;      // the streamed body ended (kBodyEnd)
  RequestBody* stream_to_ = nullptr;
  std::uint64_t body_bytes_ = 0;
  std::optional<std::uint64_t> content_length_;  // as the head said (http_parser counts down)
  ParseStatus failure_ = ParseStatus::kNeedMore;
  std::string error_detail_;
};

}  // namespace bulwark::server
