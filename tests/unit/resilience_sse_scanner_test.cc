// Finding the first Server-Sent Event before the commit point, and telling an error event
// from the start of a good stream.
#include "proxy/resilience/sse_scanner.h"

#include <string>

#include <gtest/gtest.h>

namespace bulwark::resilience {
namespace {

constexpr std::string_view kChunk = R"(data: {"id":"chatcmpl-1","object":"chat.completion.chunk",)"
                                    R"("choices":[{"delta":{"role":"assistant"}}]})";
constexpr std::string_view kErrorData =
    R"(data: {"error":{"message":"The server had an error","type":"server_error","code":null}})";

TEST(ScanFirstEventTest, EmptyBufferHasNoEvent) {
  FirstEvent event = scanFirstEvent("");
  EXPECT_FALSE(event.complete);
  EXPECT_FALSE(event.is_error);
}

TEST(ScanFirstEventTest, AnOrdinaryChunkIsAGoodEvent) {
  const std::string stream = std::string(kChunk) + "\n\n" + std::string(kChunk) + "\n\n";
  FirstEvent event = scanFirstEvent(stream);
  EXPECT_TRUE(event.complete);
  EXPECT_FALSE(event.is_error);
  EXPECT_EQ(event.end, kChunk.size() + 2);
}

TEST(ScanFirstEventTest, WaitsForTheBlankLineAcrossFeeds) {
  const std::string stream = std::string(kChunk) + "\n\n";
  std::string buffered;
  for (std::size_t i = 0; i < stream.size(); ++i) {
    buffered.push_back(stream[i]);
    FirstEvent event = scanFirstEvent(buffered);
    if (i + 1 < stream.size()) {
      ASSERT_FALSE(event.complete) << "after " << buffered.size() << " bytes";
    } else {
      EXPECT_TRUE(event.complete);
      EXPECT_FALSE(event.is_error);
      EXPECT_EQ(event.end, stream.size());
    }
  }
}

TEST(ScanFirstEventTest, ErrorSplitAcrossFeedsIsFoundOnceComplete) {
  const std::string stream = std::string(kErrorData) + "\n\n";
  const std::string first_feed = stream.substr(0, 20);
  EXPECT_FALSE(scanFirstEvent(first_feed).complete);
  const std::string without_blank_line = stream.substr(0, stream.size() - 1);
  EXPECT_FALSE(scanFirstEvent(without_blank_line).complete);
  FirstEvent event = scanFirstEvent(stream);
  EXPECT_TRUE(event.complete);
  EXPECT_TRUE(event.is_error);
  EXPECT_EQ(event.end, stream.size());
}

TEST(ScanFirstEventTest, AcceptsEveryLineEnding) {
  for (const char* eol : {"\n", "\r\n", "\r"}) {
    const std::string stream =
        std::string(kErrorData) + eol + eol + std::string(kChunk) + eol + eol;
    FirstEvent event = scanFirstEvent(stream);
    EXPECT_TRUE(event.complete) << "eol " << testing::PrintToString(eol);
    EXPECT_TRUE(event.is_error) << "eol " << testing::PrintToString(eol);
    EXPECT_EQ(event.end, kErrorData.size() + 2 * std::string_view(eol).size());
  }
  const std::string mixed = std::string(kChunk) + "\r\n\n";
  EXPECT_EQ(scanFirstEvent(mixed).end, mixed.size());
}

TEST(ScanFirstEventTest, CrlfSplitBetweenFeeds) {
  const std::string line = std::string(kChunk) + "\r\n";
  EXPECT_FALSE(scanFirstEvent(std::string(kChunk) + "\r").complete);
  EXPECT_FALSE(scanFirstEvent(line).complete);
  FirstEvent event = scanFirstEvent(line + "\r\n");
  EXPECT_TRUE(event.complete);
  EXPECT_EQ(event.end, line.size() + 2);
}

TEST(ScanFirstEventTest, CommentBlocksAreSkipped) {
  const std::string stream =
      ": keep-alive\n\n:another\n: and more\n\n" + std::string(kErrorData) + "\n\n";
  FirstEvent event = scanFirstEvent(stream);
  EXPECT_TRUE(event.complete);
  EXPECT_TRUE(event.is_error);
  EXPECT_EQ(event.end, stream.size());

  EXPECT_FALSE(scanFirstEvent(": keep-alive\n\n").complete);
  EXPECT_FALSE(scanFirstEvent(": keep-alive\n\n\n\n\r\n").complete);
  EXPECT_FALSE(scanFirstEvent(": keep-alive\n\ndata: {\"ok\":").complete);
}

TEST(ScanFirstEventTest, CommentsInsideAnEventDoNotEndIt) {
  const std::string stream = ": hello\n" + std::string(kErrorData) + "\n: bye\n\n";
  FirstEvent event = scanFirstEvent(stream);
  EXPECT_TRUE(event.complete);
  EXPECT_TRUE(event.is_error);
}

TEST(ScanFirstEventTest, EventErrorMarksAnError) {
  for (const char* stream :
       {"event: error\ndata: {\"message\":\"overloaded\"}\n\n", "event:error\ndata: oops\n\n",
        "event: error\n\n", "data: {\"type\":\"error\"}\nevent: error\n\n"}) {
    FirstEvent event = scanFirstEvent(stream);
    EXPECT_TRUE(event.complete) << stream;
    EXPECT_TRUE(event.is_error) << stream;
  }
}

TEST(ScanFirstEventTest, OtherEventTypesAreNotErrors) {
  for (const char* stream : {"event: response.created\ndata: {\"type\":\"response.created\"}\n\n",
                             "event: errors\ndata: {}\n\n", "event: Error\ndata: {}\n\n",
                             "event:  error\ndata: {}\n\n"}) {
    FirstEvent event = scanFirstEvent(stream);
    EXPECT_TRUE(event.complete) << stream;
    EXPECT_FALSE(event.is_error) << stream;
  }
}

TEST(ScanFirstEventTest, ErrorJsonOnlyCountsAtTheTopLevel) {
  EXPECT_TRUE(scanFirstEvent("data: {\"error\":\"boom\"}\n\n").is_error);
  EXPECT_TRUE(scanFirstEvent("data:{\"error\":{}}\n\n").is_error);
  EXPECT_FALSE(scanFirstEvent("data: {\"response\":{\"error\":{\"code\":\"x\"}}}\n\n").is_error);
  EXPECT_FALSE(scanFirstEvent("data: {\"error\":null,\"choices\":[]}\n\n").is_error);
  EXPECT_FALSE(scanFirstEvent("data: [{\"error\":{}}]\n\n").is_error);
  EXPECT_FALSE(scanFirstEvent("data: \"error\"\n\n").is_error);
  EXPECT_FALSE(scanFirstEvent("data: {\"error\": {\n\n").is_error);
  EXPECT_FALSE(scanFirstEvent("data: error\n\n").is_error);
}

TEST(ScanFirstEventTest, DataLinesAreJoinedBeforeParsing) {
  const std::string stream = "data: {\"error\":\ndata: {\"message\":\"split\"}}\n\n";
  FirstEvent event = scanFirstEvent(stream);
  EXPECT_TRUE(event.complete);
  EXPECT_TRUE(event.is_error);
  // Only the first event is judged: an error in the second one is past the commit point.
  const std::string later = std::string(kChunk) + "\n\n" + std::string(kErrorData) + "\n\n";
  EXPECT_FALSE(scanFirstEvent(later).is_error);
}

TEST(ScanFirstEventTest, DoneIsAnOrdinaryEvent) {
  FirstEvent event = scanFirstEvent("data: [DONE]\n\n");
  EXPECT_TRUE(event.complete);
  EXPECT_FALSE(event.is_error);
  EXPECT_EQ(event.end, 14u);
}

TEST(ScanFirstEventTest, FieldsWithoutDataStillMakeAnEvent) {
  FirstEvent event = scanFirstEvent("id: 1\nretry: 3000\n\n");
  EXPECT_TRUE(event.complete);
  EXPECT_FALSE(event.is_error);
}

TEST(ScanFirstEventTest, LeadingByteOrderMarkIsIgnored) {
  const std::string stream = "\xEF\xBB\xBF" + std::string(kErrorData) + "\n\n";
  FirstEvent event = scanFirstEvent(stream);
  EXPECT_TRUE(event.complete);
  EXPECT_TRUE(event.is_error);
  EXPECT_EQ(event.end, stream.size());
}

TEST(ScanFirstEventTest, SurvivesHostileData) {
  const std::string deep = "data: " + std::string(200000, '[') + "\n\n";
  EXPECT_FALSE(scanFirstEvent(deep).is_error);
  const std::string binary("data: \0\xff\xfe\n\n", 11);
  FirstEvent event = scanFirstEvent(binary);
  EXPECT_TRUE(event.complete);
  EXPECT_FALSE(event.is_error);
}

}  // namespace
}  // namespace bulwark::resilience
