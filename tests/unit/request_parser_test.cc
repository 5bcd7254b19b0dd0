#include "proxy/server/request_parser.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace bulwark::server {
namespace {

struct Fed {
  ParseStatus status;
  std::size_t consumed;
};

Fed feedAll(RequestParser& parser, const std::string& bytes) {
  std::size_t consumed = 0;
  ParseStatus status = parser.feed(bytes.data(), bytes.size(), &consumed);
  return {status, consumed};
}

TEST(RequestParserTest, ParsesAPostWithBody) {
  RequestParser parser{ParserLimits{}};
  std::string raw =
      "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
      "Authorization: Bearer sk-1\r\n\r\nhello";
  Fed fed = feedAll(parser, raw);
  ASSERT_EQ(fed.status, ParseStatus::kComplete);
  EXPECT_EQ(fed.consumed, raw.size());
  HttpRequest req = parser.takeRequest();
  EXPECT_EQ(req.method, "POST");
  EXPECT_EQ(req.path, "/v1/chat/completions?x=1");
  EXPECT_EQ(req.body, "hello");
  EXPECT_TRUE(req.keep_alive);
  ASSERT_EQ(req.headers.size(), 3u);
  EXPECT_EQ(req.headers[2].name, "Authorization");
  EXPECT_EQ(req.headers[2].value, "Bearer sk-1");
}

TEST(RequestParserTest, StopsAfterEachPipelinedRequest) {
  RequestParser parser{ParserLimits{}};
  std::string first = "GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n";
  std::string second = "GET /v1/models/gpt HTTP/1.1\r\nHost: a\r\n\r\n";
  std::string both = first + second;
  Fed fed = feedAll(parser, both);
  ASSERT_EQ(fed.status, ParseStatus::kComplete);
  EXPECT_EQ(fed.consumed, first.size());
  EXPECT_EQ(parser.takeRequest().path, "/v1/models");
  fed = feedAll(parser, both.substr(fed.consumed));
  ASSERT_EQ(fed.status, ParseStatus::kComplete);
  EXPECT_EQ(parser.takeRequest().path, "/v1/models/gpt");
}

TEST(RequestParserTest, DecodesChunkedBodies) {
  RequestParser parser{ParserLimits{}};
  Fed fed = feedAll(parser,
                    "POST /v1/embeddings HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
  ASSERT_EQ(fed.status, ParseStatus::kComplete);
  EXPECT_EQ(parser.takeRequest().body, "abcde");
}

TEST(RequestParserTest, AbsoluteFormKeepsOnlyPathAndQuery) {
  RequestParser parser{ParserLimits{}};
  Fed fed = feedAll(parser, "GET http://evil.example:9/v1/models?a=b HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_EQ(fed.status, ParseStatus::kComplete);
  EXPECT_EQ(parser.takeRequest().path, "/v1/models?a=b");
}

TEST(RequestParserTest, RejectsOversizedContentLengthBeforeTheBody) {
  ParserLimits limits;
  limits.max_body = 10;
  RequestParser parser{limits};
  Fed fed = feedAll(parser, "POST /v1/x HTTP/1.1\r\nContent-Length: 11\r\n\r\n");
  EXPECT_EQ(fed.status, ParseStatus::kBodyTooLarge);
}

TEST(RequestParserTest, RejectsOversizedChunkedBody) {
  ParserLimits limits;
  limits.max_body = 4;
  RequestParser parser{limits};
  Fed fed = feedAll(
      parser, "POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n");
  EXPECT_EQ(fed.status, ParseStatus::kBodyTooLarge);
}

TEST(RequestParserTest, RejectsHugeHeads) {
  ParserLimits limits;
  limits.max_header_bytes = 100;
  RequestParser parser{limits};
  Fed fed = feedAll(parser, "GET / HTTP/1.1\r\nX-Big: " + std::string(200, 'a') + "\r\n\r\n");
  EXPECT_EQ(fed.status, ParseStatus::kHeadersTooLarge);
}

TEST(RequestParserTest, RejectsTooManyHeaders) {
  ParserLimits limits;
  limits.max_headers = 3;
  RequestParser parser{limits};
  std::string raw = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < 5; ++i) raw += "X-" + std::to_string(i) + ": v\r\n";
  Fed fed = feedAll(parser, raw + "\r\n");
  EXPECT_EQ(fed.status, ParseStatus::kHeadersTooLarge);
}

TEST(RequestParserTest, RejectsSmugglingShapes) {
  for (const char* raw : {
           "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
           "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
           "GARBAGE\r\n\r\n",
           "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
           "POST / HTTP/1.1\r\nContent-Length : 2\r\n\r\nab",
       }) {
    RequestParser parser{ParserLimits{}};
    EXPECT_EQ(feedAll(parser, raw).status, ParseStatus::kBadRequest) << raw;
  }
}

TEST(RequestParserTest, RefusesDotSegments) {
  for (const char* target : {"/../admin", "/v1/../../keys", "/v1/%2e%2e/x", "/v1/%2E./x", "/v1/.",
                             "/./v1/models", "/v1/..?x=1"}) {
    RequestParser parser{ParserLimits{}};
    std::string raw = std::string("GET ") + target + " HTTP/1.1\r\nHost: a\r\n\r\n";
    EXPECT_EQ(feedAll(parser, raw).status, ParseStatus::kBadRequest) << target;
  }
  for (const char* target : {"/v1/files/file-a..b", "/v1/...", "/v1/models?x=../y", "/v1/.well"}) {
    RequestParser parser{ParserLimits{}};
    std::string raw = std::string("GET ") + target + " HTTP/1.1\r\nHost: a\r\n\r\n";
    EXPECT_EQ(feedAll(parser, raw).status, ParseStatus::kComplete) << target;
  }
}

TEST(RequestParserTest, Http10DefaultsToClose) {
  RequestParser parser{ParserLimits{}};
  ASSERT_EQ(feedAll(parser, "GET /v1/models HTTP/1.0\r\n\r\n").status, ParseStatus::kComplete);
  HttpRequest req = parser.takeRequest();
  EXPECT_FALSE(req.keep_alive);
  EXPECT_EQ(req.http_minor, 0);
}

// Feeds `raw` from `from` on, the way the connection does: each status is handled before
// the rest is fed. Returns the statuses seen, in order.
std::vector<ParseStatus> feedStreaming(RequestParser& parser, const std::string& raw,
                                       RequestBody& body, HttpRequest* head,
                                       std::size_t step = SIZE_MAX) {
  std::vector<ParseStatus> seen;
  std::size_t at = 0;
  while (at < raw.size()) {
    std::size_t consumed = 0;
    std::size_t len = std::min(step, raw.size() - at);
    ParseStatus status = parser.feed(raw.data() + at, len, &consumed);
    at += consumed;
    if (status != ParseStatus::kNeedMore) seen.push_back(status);
    if (status == ParseStatus::kStreamStart) {
      *head = parser.takeRequest();
      body.append(head->body.data(), head->body.size());
      parser.streamBodyTo(&body);
    } else if (status == ParseStatus::kComplete) {
      parser.takeRequest();
    } else if (status != ParseStatus::kNeedMore && status != ParseStatus::kBodyEnd) {
      break;
    } else if (consumed == 0 && status == ParseStatus::kNeedMore) {
      break;
    }
  }
  return seen;
}

std::string drain(RequestBody& body) {
  std::string out(body.buffered(), '\0');
  out.resize(body.read(out.data(), out.size()));
  return out;
}

TEST(RequestParserTest, ExpectContinueHandsTheHeadOverBeforeTheBody) {
  RequestParser parser{ParserLimits{}};
  RequestBody body(1024, std::nullopt, true);
  HttpRequest head;
  std::string raw = "POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n";
  EXPECT_EQ(feedStreaming(parser, raw, body, &head),
            (std::vector{ParseStatus::kStreamStart}));
  EXPECT_TRUE(head.expect_continue);
  EXPECT_TRUE(head.body.empty());
  EXPECT_EQ(parser.contentLength(), 2u);
  EXPECT_EQ(body.buffered(), 0u);
  EXPECT_EQ(feedStreaming(parser, "hiGET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n", body, &head),
            (std::vector{ParseStatus::kBodyEnd, ParseStatus::kComplete}));
  EXPECT_EQ(drain(body), "hi");
}

TEST(RequestParserTest, ExpectWithoutABodyIsAnOrdinaryRequest) {
  RequestParser parser{ParserLimits{}};
  ASSERT_EQ(feedAll(parser, "POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n")
                .status,
            ParseStatus::kComplete);
  EXPECT_FALSE(parser.takeRequest().expect_continue);
}

TEST(RequestParserTest, BodyOverTheRetryLimitStreamsFromTheHead) {
  ParserLimits limits;
  limits.retry_body = 4;
  for (std::size_t step : {std::size_t{1}, std::size_t{3}, SIZE_MAX}) {
    RequestParser parser{limits};
    RequestBody body(1024, std::nullopt, false);
    HttpRequest head;
    std::string raw = "POST /v1/files HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
    EXPECT_EQ(feedStreaming(parser, raw, body, &head, step),
              (std::vector{ParseStatus::kStreamStart, ParseStatus::kBodyEnd}))
        << step;
    EXPECT_EQ(head.path, "/v1/files");
    EXPECT_FALSE(head.expect_continue);
    EXPECT_TRUE(head.body.empty());
    EXPECT_EQ(drain(body), "0123456789");
  }
}

TEST(RequestParserTest, ChunkedBodyStreamsOnceItGrowsPastTheRetryLimit) {
  ParserLimits limits;
  limits.retry_body = 4;
  RequestParser parser{limits};
  RequestBody body(1024, std::nullopt, false);
  HttpRequest head;
  std::string raw =
      "POST /v1/files HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n3\r\ndef\r\n2\r\ngh\r\n0\r\n\r\n";
  EXPECT_EQ(feedStreaming(parser, raw, body, &head),
            (std::vector{ParseStatus::kStreamStart, ParseStatus::kBodyEnd}));
  EXPECT_EQ(parser.contentLength(), std::nullopt);
  EXPECT_EQ(drain(body), "abcdefgh");  // the held start, then the rest

  // Within the limit, a chunked body is still read whole.
  RequestParser small{limits};
  ASSERT_EQ(feedAll(small, "POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "3\r\nabc\r\n0\r\n\r\n")
                .status,
            ParseStatus::kComplete);
  EXPECT_EQ(small.takeRequest().body, "abc");
}

TEST(RequestParserTest, StreamedChunkedBodyStillHasTheSizeLimit) {
  ParserLimits limits;
  limits.retry_body = 2;
  limits.max_body = 5;
  RequestParser parser{limits};
  RequestBody body(1024, std::nullopt, false);
  HttpRequest head;
  std::string raw =
      "POST /v1/files HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n";
  EXPECT_EQ(feedStreaming(parser, raw, body, &head),
            (std::vector{ParseStatus::kStreamStart, ParseStatus::kBodyTooLarge}));
}

TEST(RequestParserTest, ByteAtATimeGivesTheSameRequest) {
  RequestParser parser{ParserLimits{}};
  std::string raw = "PUT /v1/files/f HTTP/1.1\r\nA: 1\r\nContent-Length: 3\r\n\r\nxyz";
  ParseStatus status = ParseStatus::kNeedMore;
  for (char c : raw) {
    std::size_t consumed = 0;
    status = parser.feed(&c, 1, &consumed);
    ASSERT_EQ(consumed, 1u);
  }
  ASSERT_EQ(status, ParseStatus::kComplete);
  HttpRequest req = parser.takeRequest();
  EXPECT_EQ(req.method, "PUT");
  EXPECT_EQ(req.body, "xyz");
}

}  // namespace
}  // namespace bulwark::server
