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

// --- The commit point of a whole stream: the first event, or past the Responses preamble ---

using Decision = CommitPointScanner::Decision;

constexpr std::size_t kMaxHeld = 64 * 1024;

// Responses API events, as OpenAI sends them: `event:` and a `data:` JSON with the same type.
std::string responsesEvent(std::string_view type, std::string_view rest = "",
                           std::string_view eol = "\n") {
  std::string event = "event: " + std::string(type) + std::string(eol) + "data: {\"type\":\"" +
                      std::string(type) + "\"" + std::string(rest) + "}" + std::string(eol) +
                      std::string(eol);
  return event;
}

std::string preamble(std::string_view eol = "\n") {
  return responsesEvent(
             "response.created",
             R"(,"sequence_number":0,"response":{"id":"resp_1","status":"in_progress","error":null})",
             eol) +
         responsesEvent(
             "response.in_progress",
             R"(,"sequence_number":1,"response":{"id":"resp_1","status":"in_progress","error":null})",
             eol);
}

const std::string kFailed = responsesEvent(
    "response.failed",
    R"(,"sequence_number":2,"response":{"id":"resp_1","status":"failed","error":{"code":"server_error","message":"The model failed"}})");
const std::string kErrorEvent =
    "event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"overloaded\","
    "\"sequence_number\":2}\n\n";
const std::string kOutputAdded = responsesEvent(
    "response.output_item.added",
    R"(,"sequence_number":2,"output_index":0,"item":{"type":"message","content":[]})");
const std::string kDelta =
    responsesEvent("response.output_text.delta", R"(,"sequence_number":4,"delta":"Hel")");

Decision scanOnce(StreamKind kind, std::string_view held) {
  CommitPointScanner scanner(kind, kMaxHeld);
  return scanner.scan(held);
}

TEST(CommitPointScannerTest, FirstEventStreamsDecideOnTheirFirstEvent) {
  EXPECT_EQ(scanOnce(StreamKind::kFirstEvent, ""), Decision::kNeedMore);
  EXPECT_EQ(scanOnce(StreamKind::kFirstEvent, kChunk), Decision::kNeedMore);
  EXPECT_EQ(scanOnce(StreamKind::kFirstEvent, std::string(kChunk) + "\n\n"), Decision::kCommit);
  EXPECT_EQ(scanOnce(StreamKind::kFirstEvent, std::string(kErrorData) + "\n\n"), Decision::kError);
  EXPECT_EQ(scanOnce(StreamKind::kFirstEvent, "event: error\ndata: {}\n\n"), Decision::kError);
  // The preamble means nothing outside the Responses API: its first event commits.
  EXPECT_EQ(scanOnce(StreamKind::kFirstEvent, preamble() + kFailed), Decision::kCommit);
  EXPECT_EQ(scanOnce(StreamKind::kFirstEvent, ": ping\n\n" + std::string(kChunk) + "\n\n"),
            Decision::kCommit);
}

TEST(CommitPointScannerTest, PreambleIsHeld) {
  CommitPointScanner scanner(StreamKind::kResponses, kMaxHeld);
  EXPECT_EQ(scanner.scan(preamble()), Decision::kNeedMore);
  EXPECT_EQ(scanner.preambleEvents(), 2);
  const std::string queued = responsesEvent("response.queued", R"(,"sequence_number":0)");
  EXPECT_EQ(scanOnce(StreamKind::kResponses, queued + preamble()), Decision::kNeedMore);
}

TEST(CommitPointScannerTest, FirstOutputEventCommits) {
  EXPECT_EQ(scanOnce(StreamKind::kResponses, preamble() + kOutputAdded), Decision::kCommit);
  EXPECT_EQ(scanOnce(StreamKind::kResponses, preamble() + kDelta), Decision::kCommit);
  // An event type Bulwark does not know is output too: it is never held back.
  EXPECT_EQ(scanOnce(StreamKind::kResponses,
                     preamble() + responsesEvent("response.reasoning_summary_part.added")),
            Decision::kCommit);
  // A stream without a preamble commits at its first event.
  EXPECT_EQ(scanOnce(StreamKind::kResponses, kDelta), Decision::kCommit);
  EXPECT_EQ(scanOnce(StreamKind::kResponses, "data: [DONE]\n\n"), Decision::kCommit);
}

TEST(CommitPointScannerTest, FinishedResponsesCommit) {
  // completed and incomplete are answers (incomplete: max_output_tokens or a content filter):
  // the client gets them as they are.
  EXPECT_EQ(scanOnce(StreamKind::kResponses,
                     preamble() + responsesEvent("response.completed", R"(,"sequence_number":2)")),
            Decision::kCommit);
  EXPECT_EQ(
      scanOnce(
          StreamKind::kResponses,
          preamble() + responsesEvent(
                           "response.incomplete",
                           R"(,"response":{"incomplete_details":{"reason":"max_output_tokens"}})")),
      Decision::kCommit);
}

TEST(CommitPointScannerTest, FailureBeforeOutputIsAnError) {
  EXPECT_EQ(scanOnce(StreamKind::kResponses, preamble() + kFailed), Decision::kError);
  EXPECT_EQ(scanOnce(StreamKind::kResponses, preamble() + kErrorEvent), Decision::kError);
  EXPECT_EQ(scanOnce(StreamKind::kResponses, kFailed), Decision::kError);
  EXPECT_EQ(scanOnce(StreamKind::kResponses, kErrorEvent), Decision::kError);
}

TEST(CommitPointScannerTest, EveryFormOfErrorEvent) {
  for (const std::string& error : {
           std::string("event: error\ndata: {\"code\":\"server_error\"}\n\n"),  // the event name
           std::string("event: error\n\n"),
           std::string("data: {\"type\":\"error\",\"message\":\"boom\"}\n\n"),  // the data type
           std::string("data: {\"type\":\"response.failed\",\"response\":{}}\n\n"),
           std::string("event: response.failed\ndata: {}\n\n"),
           std::string(kErrorData) + "\n\n",  // a top-level "error" object, as chat sends it
           std::string("event: response.in_progress\ndata: {\"type\":\"error\"}\n\n"),
       }) {
    EXPECT_EQ(scanOnce(StreamKind::kResponses, preamble() + error), Decision::kError) << error;
  }
  // A nested error, or a null one, is not an error event.
  EXPECT_EQ(scanOnce(StreamKind::kResponses, preamble()), Decision::kNeedMore);
  EXPECT_EQ(scanOnce(StreamKind::kResponses,
                     preamble() + responsesEvent("response.output_item.added",
                                                 R"(,"error":null,"item":{"error":{}})")),
            Decision::kCommit);
}

TEST(CommitPointScannerTest, DataOnlyEventsAreTypedByTheirJson) {
  const std::string data_only =
      "data: {\"type\":\"response.created\",\"response\":{}}\n\n"
      "data: {\"type\":\"response.in_progress\",\"response\":{}}\n\n";
  CommitPointScanner scanner(StreamKind::kResponses, kMaxHeld);
  EXPECT_EQ(scanner.scan(data_only), Decision::kNeedMore);
  EXPECT_EQ(scanner.preambleEvents(), 2);
  EXPECT_EQ(scanOnce(StreamKind::kResponses,
                     data_only + "data: {\"type\":\"response.output_text.delta\"}\n\n"),
            Decision::kCommit);
  // No event name and no type: an ordinary "message" event, which is output.
  EXPECT_EQ(scanOnce(StreamKind::kResponses, data_only + "data: {\"x\":1}\n\n"), Decision::kCommit);
}

TEST(CommitPointScannerTest, EveryLineEnding) {
  for (const char* eol : {"\n", "\r\n", "\r"}) {
    const std::string held = preamble(eol);
    EXPECT_EQ(scanOnce(StreamKind::kResponses, held), Decision::kNeedMore) << eol;
    EXPECT_EQ(scanOnce(StreamKind::kResponses,
                       held + responsesEvent("response.failed", R"(,"response":{})", eol)),
              Decision::kError)
        << testing::PrintToString(eol);
    EXPECT_EQ(scanOnce(StreamKind::kResponses,
                       held + responsesEvent("response.output_text.delta", "", eol)),
              Decision::kCommit)
        << testing::PrintToString(eol);
  }
}

TEST(CommitPointScannerTest, KeepAliveCommentsAreNotEvents) {
  const std::string held = ": ping\n\n" + responsesEvent("response.created") + ": ping\n\n" +
                           ":\n\n" + responsesEvent("response.in_progress") + ": ping\n\n";
  CommitPointScanner scanner(StreamKind::kResponses, kMaxHeld);
  EXPECT_EQ(scanner.scan(held), Decision::kNeedMore);
  EXPECT_EQ(scanner.preambleEvents(), 2);
  EXPECT_EQ(scanner.scan(held + ": ping\n\n" + kFailed), Decision::kError);
  // A comment inside an event does not end it.
  EXPECT_EQ(scanOnce(StreamKind::kResponses, held + ": ping\nevent: error\n: x\ndata: {}\n\n"),
            Decision::kError);
}

TEST(CommitPointScannerTest, PreambleSplitAcrossReadsEveryWay) {
  // The same decision whatever the read boundaries: fed byte by byte, then in two pieces cut
  // at every offset.
  for (const std::string& rest : {kFailed, kErrorEvent, kOutputAdded}) {
    const std::string stream = preamble("\r\n") + ": ping\r\n\r\n" + rest;
    const Decision expected = rest == kOutputAdded ? Decision::kCommit : Decision::kError;
    CommitPointScanner bytewise(StreamKind::kResponses, kMaxHeld);
    for (std::size_t i = 1; i <= stream.size(); ++i) {
      Decision decision = bytewise.scan(std::string_view(stream).substr(0, i));
      if (i < stream.size()) {
        ASSERT_EQ(decision, Decision::kNeedMore) << "after " << i << " bytes";
      } else {
        EXPECT_EQ(decision, expected);
      }
    }
    for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
      CommitPointScanner scanner(StreamKind::kResponses, kMaxHeld);
      Decision first = scanner.scan(std::string_view(stream).substr(0, cut));
      if (first != Decision::kNeedMore) {
        EXPECT_EQ(cut, stream.size());
        EXPECT_EQ(first, expected);
        continue;
      }
      EXPECT_EQ(scanner.scan(stream), expected) << "cut at " << cut;
    }
  }
}

TEST(CommitPointScannerTest, ErrorAfterOutputIsPastTheCommitPoint) {
  EXPECT_EQ(scanOnce(StreamKind::kResponses, preamble() + kDelta + kFailed), Decision::kCommit);
  EXPECT_EQ(scanOnce(StreamKind::kResponses, preamble() + kOutputAdded + kErrorEvent),
            Decision::kCommit);
}

TEST(CommitPointScannerTest, ByteOrderMarkIsIgnored) {
  const std::string bom = "\xEF\xBB\xBF";
  CommitPointScanner scanner(StreamKind::kResponses, kMaxHeld);
  EXPECT_EQ(scanner.scan(bom.substr(0, 2)), Decision::kNeedMore);
  EXPECT_EQ(scanner.scan(bom + preamble()), Decision::kNeedMore);
  EXPECT_EQ(scanner.preambleEvents(), 2);
  EXPECT_EQ(scanner.scan(bom + preamble() + kFailed), Decision::kError);
}

TEST(CommitPointScannerTest, HoldsNoMoreThanTheBound) {
  // A preamble that never ends (or endless keep-alives) is committed past the bound.
  std::string held = preamble();
  CommitPointScanner scanner(StreamKind::kResponses, kMaxHeld);
  while (held.size() <= kMaxHeld) {
    ASSERT_EQ(scanner.scan(held), Decision::kNeedMore) << held.size();
    held += ": ping\n\n";
  }
  EXPECT_EQ(scanner.scan(held), Decision::kCommit);
  // So is one event that never ends.
  std::string endless = preamble() + "event: response.output_text.delta\ndata: \"";
  endless.append(kMaxHeld, 'x');
  EXPECT_EQ(scanOnce(StreamKind::kResponses, endless), Decision::kCommit);
  EXPECT_EQ(scanOnce(StreamKind::kFirstEvent, "data: " + std::string(kMaxHeld, 'x')),
            Decision::kCommit);
  // An error found in what is held still wins over the bound, as it did for a first event.
  std::string big_error =
      preamble() + "event: error\ndata: \"" + std::string(kMaxHeld, 'x') + "\"\n\n";
  EXPECT_EQ(scanOnce(StreamKind::kResponses, big_error), Decision::kError);
}

}  // namespace
}  // namespace bulwark::resilience
