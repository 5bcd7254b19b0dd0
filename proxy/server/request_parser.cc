#include "proxy/server/request_parser.h"

#include <climits>
#include <cstring>
#include <utility>

namespace bulwark::server {

namespace {
RequestParser* self(http_parser* p) {
  return static_cast<RequestParser*>(p->data);
}

// RFC 9110 token characters: a header name with anything else (notably whitespace before
// the colon, a classic smuggling shape) is refused, never forwarded.
bool isTokenChar(unsigned char c) {
  if (c >= 'a' && c <= 'z') return true;
  if (c >= 'A' && c <= 'Z') return true;
  if (c >= '0' && c <= '9') return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!isTokenChar(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// True when the path has a "." or ".." segment, literally or percent-encoded ("%2e%2E").
// Such a path could climb out of an upstream's base_url prefix once resolved, and no OpenAI
// endpoint has one, so it is refused.
bool hasDotSegment(std::string_view target) {
  std::string_view path = target.substr(0, target.find_first_of("?#"));
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    std::string_view segment =
        path.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    int dots = 0;
    bool only_dots = !segment.empty();
    for (std::size_t i = 0; i < segment.size() && only_dots;) {
      if (segment[i] == '.') {
        ++dots;
        ++i;
      } else if (segment.size() - i >= 3 && segment[i] == '%' && segment[i + 1] == '2' &&
                 (segment[i + 2] == 'e' || segment[i + 2] == 'E')) {
        ++dots;
        i += 3;
      } else {
        only_dots = false;
      }
    }
    if (only_dots && (dots == 1 || dots == 2)) return true;
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return false;
}
}  // namespace

RequestParser::RequestParser(const ParserLimits& limits) : limits_(limits) {
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
  http_parser_settings_init(&settings_);
  settings_.on_message_begin = &RequestParser::onMessageBegin;
  settings_.on_url = &RequestParser::onUrl;
  settings_.on_header_field = &RequestParser::onHeaderField;
  settings_.on_header_value = &RequestParser::onHeaderValue;
  settings_.on_headers_complete = &RequestParser::onHeadersComplete;
  settings_.on_body = &RequestParser::onBody;
  settings_.on_message_complete = &RequestParser::onMessageComplete;
}

ParseStatus RequestParser::feed(const char* data, std::size_t len, std::size_t* consumed) {
  *consumed = 0;
  if (failure_ != ParseStatus::kNeedMore) return failure_;
  if (parser_.upgrade) {
    // After an Upgrade/CONNECT request the byte stream is no longer HTTP.
    failure_ = ParseStatus::kBadRequest;
    error_detail_ = "data after an upgrade request";
    return failure_;
  }
  std::size_t n = http_parser_execute(&parser_, &settings_, data, len);
  enum http_errno err = HTTP_PARSER_ERRNO(&parser_);
  if (err == HPE_PAUSED) {
    http_parser_pause(&parser_, 0);
    err = HPE_OK;
  }
  *consumed = n;
  if (failure_ != ParseStatus::kNeedMore) return failure_;
  if (err != HPE_OK) {
    failure_ =
        err == HPE_HEADER_OVERFLOW ? ParseStatus::kHeadersTooLarge : ParseStatus::kBadRequest;
    error_detail_ = http_errno_description(err);
    return failure_;
  }
  if (stream_start_) {
    stream_start_ = false;
    return ParseStatus::kStreamStart;
  }
  if (body_end_) {
    body_end_ = false;
    return ParseStatus::kBodyEnd;
  }
  if (complete_) return ParseStatus::kComplete;
  return ParseStatus::kNeedMore;
}

ParseStatus RequestParser::finish() {
  if (failure_ != ParseStatus::kNeedMore) return failure_;
  if (!in_message_) return ParseStatus::kNeedMore;
  http_parser_execute(&parser_, &settings_, nullptr, 0);
  if (complete_) return ParseStatus::kComplete;
  failure_ = ParseStatus::kBadRequest;
  error_detail_ = "connection closed in the middle of a request";
  return failure_;
}

std::optional<std::uint64_t> RequestParser::contentLength() const {
  return content_length_;
}

HttpRequest RequestParser::takeRequest() {
  complete_ = false;
  return std::move(ready_);
}

bool RequestParser::countHeaderBytes(size_t len) {
  header_bytes_ += len;
  if (header_bytes_ > limits_.max_header_bytes) {
    failure_ = ParseStatus::kHeadersTooLarge;
    error_detail_ = "request head too large";
    return false;
  }
  return true;
}

int RequestParser::onMessageBegin(http_parser* p) {
  RequestParser* r = self(p);
  r->current_ = HttpRequest{};
  r->header_bytes_ = 0;
  r->last_was_value_ = false;
  r->in_message_ = true;
  r->head_complete_ = false;
  r->body_bytes_ = 0;
  return 0;
}

int RequestParser::onUrl(http_parser* p, const char* at, size_t len) {
  RequestParser* r = self(p);
  if (!r->countHeaderBytes(len)) return -1;
  r->current_.target.append(at, len);
  return 0;
}

int RequestParser::onHeaderField(http_parser* p, const char* at, size_t len) {
  RequestParser* r = self(p);
  if (!r->countHeaderBytes(len)) return -1;
  if (r->last_was_value_ || r->current_.headers.empty()) {
    if (r->current_.headers.size() >= r->limits_.max_headers) {
      r->failure_ = ParseStatus::kHeadersTooLarge;
      r->error_detail_ = "too many request headers";
      return -1;
    }
    // Room for a small client's headers at once, rather than growing three times (more than
    // eight grow as usual: a held request keeps its capacity, and streams are held for long).
    if (r->current_.headers.empty()) r->current_.headers.reserve(8);
    r->current_.headers.emplace_back();
  }
  r->current_.headers.back().name.append(at, len);
  r->last_was_value_ = false;
  return 0;
}

int RequestParser::onHeaderValue(http_parser* p, const char* at, size_t len) {
  RequestParser* r = self(p);
  if (!r->countHeaderBytes(len)) return -1;
  r->current_.headers.back().value.append(at, len);
  r->last_was_value_ = true;
  return 0;
}

int RequestParser::onHeadersComplete(http_parser* p) {
  RequestParser* r = self(p);
  return r->finishHead() ? 0 : -1;
}

bool RequestParser::finishHead() {
  HttpRequest& req = current_;
  req.method = http_method_str(static_cast<http_method>(parser_.method));
  req.http_major = parser_.http_major;
  req.http_minor = parser_.http_minor;
  req.keep_alive = http_should_keep_alive(&parser_) != 0;
  head_complete_ = true;

  if (parser_.method == HTTP_CONNECT) {
    req.path.clear();  // the connection layer refuses CONNECT
  } else if (!req.target.empty() && req.target.front() == '/') {
    req.path = req.target;
  } else {
    // Absolute form: only the path and query are kept; the host never chooses the upstream.
    http_parser_url url;
    http_parser_url_init(&url);
    if (http_parser_parse_url(req.target.data(), req.target.size(), 0, &url) != 0 ||
        !(url.field_set & (1 << UF_HOST))) {
      failure_ = ParseStatus::kBadRequest;
      error_detail_ = "unsupported request target";
      return false;
    }
    if (url.field_set & (1 << UF_PATH)) {
      req.path = req.target.substr(url.field_data[UF_PATH].off, url.field_data[UF_PATH].len);
    } else {
      req.path = "/";
    }
    if (url.field_set & (1 << UF_QUERY)) {
      req.path += '?';
      req.path += req.target.substr(url.field_data[UF_QUERY].off, url.field_data[UF_QUERY].len);
    }
  }

  for (const http::Header& h : req.headers) {
    if (!isToken(h.name)) {
      failure_ = ParseStatus::kBadRequest;
      error_detail_ = "invalid header name";
      return false;
    }
  }
  if (!req.path.empty() && hasDotSegment(req.path)) {
    failure_ = ParseStatus::kBadRequest;
    error_detail_ = "dot segments (. or ..) are not allowed in the path";
    return false;
  }

  // The body limit is checked before any body byte is read, so an oversized request is
  // refused at once (and nothing of it is ever sent upstream).
  if ((parser_.flags & F_CHUNKED) == 0 && parser_.content_length != ULLONG_MAX &&
      parser_.content_length > limits_.max_body) {
    failure_ = ParseStatus::kBodyTooLarge;
    error_detail_ = "request body too large";
    return false;
  }
  bool chunked = (parser_.flags & F_CHUNKED) != 0;
  content_length_.reset();
  if (!chunked && parser_.content_length != ULLONG_MAX) content_length_ = parser_.content_length;
  bool has_body = chunked || (parser_.content_length != ULLONG_MAX && parser_.content_length > 0);
  if (auto expect = http::findHeader(req.headers, "expect")) {
    req.expect_continue = has_body && http::equalsIgnoreCase(*expect, "100-continue") &&
                          req.http_minor >= 1;
  }
  // A body that will not be held whole, or one the client sends only once it is told to:
  // the request is handed over now and its body streamed.
  if (req.expect_continue || (has_body && !chunked && parser_.content_length > limits_.retry_body)) {
    startStreaming();
  }
  return true;
}

void RequestParser::startStreaming() {
  ready_ = std::move(current_);
  stream_start_ = true;
  http_parser_pause(&parser_, 1);
}

int RequestParser::onBody(http_parser* p, const char* at, size_t len) {
  RequestParser* r = self(p);
  r->body_bytes_ += len;
  if (r->body_bytes_ > r->limits_.max_body) {
    r->failure_ = ParseStatus::kBodyTooLarge;
    r->error_detail_ = "request body too large";
    return -1;
  }
  if (r->stream_to_ != nullptr) {
    r->stream_to_->append(at, len);
    return 0;
  }
  if (r->current_.body.empty() && r->parser_.content_length != ULLONG_MAX &&
      (r->parser_.flags & F_CHUNKED) == 0) {
    // Content-Length is known (and within the retry limit): one allocation for the body.
    r->current_.body.reserve(len + r->parser_.content_length);
  }
  r->current_.body.append(at, len);
  if (r->current_.body.size() > r->limits_.retry_body) {
    r->startStreaming();  // a chunked body that grew past the retry limit
  }
  return 0;
}

int RequestParser::onMessageComplete(http_parser* p) {
  RequestParser* r = self(p);
  r->in_message_ = false;
  if (r->stream_to_ != nullptr) {
    r->stream_to_ = nullptr;
    r->body_end_ = true;
  } else {
    r->ready_ = std::move(r->current_);
    r->complete_ = true;
    if (p->upgrade) r->ready_.keep_alive = false;
  }
  http_parser_pause(p, 1);  // one request at a time: the rest waits in the input buffer
  return 0;
}

}  // namespace bulwark::server
