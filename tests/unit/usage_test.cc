#include "proxy/observe/usage.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include <rapidjson/document.h>

namespace bulwark::observe {
namespace {

TEST(UsageTest, ReadsChatCompletionUsage) {
  auto usage = usageFromJson(
      R"({"id":"x","model":"gpt-4o-mini","usage":{"prompt_tokens":12,"completion_tokens":5}})");
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->model, "gpt-4o-mini");
  EXPECT_EQ(usage->prompt, 12);
  EXPECT_EQ(usage->completion, 5);
}

TEST(UsageTest, ReadsResponsesApiUsage) {
  auto usage = usageFromJson(
      R"({"type":"response.completed","response":{"model":"gpt-4.1","usage":{"input_tokens":7,"output_tokens":3}}})");
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->model, "gpt-4.1");
  EXPECT_EQ(usage->prompt, 7);
  EXPECT_EQ(usage->completion, 3);
}

TEST(UsageTest, IgnoresGarbageAndNullUsage) {
  EXPECT_FALSE(usageFromJson("not json"));
  EXPECT_FALSE(usageFromJson(R"({"usage":null})"));
  EXPECT_FALSE(usageFromJson("[1,2]"));
  EXPECT_FALSE(usageFromJson(std::string(100000, '{')));
}

TEST(UsageTest, ReadsOnlyTheTopLevelUsageWhereverItIsInTheBody) {
  // Nested objects named usage or model (in messages, tool calls) are not the answer's;
  // the model may come after the usage.
  auto usage = usageFromJson(
      R"({"choices":[{"message":{"content":"x","usage":{"prompt_tokens":999}},"model":"no"}],)"
      R"("usage":{"completion_tokens":5,"details":{"prompt_tokens":998},"prompt_tokens":12},)"
      R"("model":"gpt-4o-mini"})");
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->model, "gpt-4o-mini");
  EXPECT_EQ(usage->prompt, 12);
  EXPECT_EQ(usage->completion, 5);
}

TEST(UsageTest, TheFirstOfDuplicateKeysCountsAndNamesFallBack) {
  auto usage = usageFromJson(
      R"({"model":"first","usage":{"prompt_tokens":1,"prompt_tokens":2,"output_tokens":4},)"
      R"("model":"second","usage":{"prompt_tokens":3}})");
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->model, "first");
  EXPECT_EQ(usage->prompt, 1);
  EXPECT_EQ(usage->completion, 4);  // no completion_tokens: the Responses API's name
  // A count that is not an integer is not a count.
  usage = usageFromJson(R"({"usage":{"prompt_tokens":"12","input_tokens":1.5}})");
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->prompt, 0);
  EXPECT_EQ(usage->completion, 0);
  usage = usageFromJson(R"({"usage":{"prompt_tokens":18446744073709551615}})");
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->prompt, 0);
}

TEST(UsageTest, AResponseIsReadOnlyWithoutATopLevelUsageAndAWholeDocumentIsNeeded) {
  EXPECT_FALSE(usageFromJson(R"({"usage":{"prompt_tokens":1})"));  // cut short
  EXPECT_FALSE(usageFromJson(R"({"usage":{"prompt_tokens":1}} trailing)"));
  EXPECT_FALSE(usageFromJson(std::string(R"({"usage":{"prompt_tokens":1}})") + '\0' + "x"));
  auto escaped = usageFromJson(R"({"model":"a\"b\u00e9","usage":{"prompt_tokens":2}})");
  ASSERT_TRUE(escaped);
  EXPECT_EQ(escaped->model, "a\"b\xc3\xa9");
  EXPECT_FALSE(usageFromJson(R"({"response":{"model":"m"}})"));
  EXPECT_FALSE(usageFromJson(R"({"response":[{"usage":{"input_tokens":1}}]})"));
  auto usage = usageFromJson(
      R"({"usage":null,"response":{"usage":{"input_tokens":7},"model":"gpt-4.1"}})");
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->model, "gpt-4.1");
  EXPECT_EQ(usage->prompt, 7);
}

TEST(UsageTest, StringsWithBracesQuotesAndKeyNamesDoNotMisleadTheSkim) {
  auto usage = usageFromJson(
      "{ \"choices\" : [ {\"message\":{\"content\":\"} \\\"usage\\\": {\\\"prompt_tokens\\\":9} {\"}}],\n"
      "  \"note\":\"\\\\\", \"usage\" :\t{ \"prompt_tokens\" : 4 , \"x\":[{},\"}\"],"
      " \"completion_tokens\":6 } , \"model\" : \"m\" }\n");
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->prompt, 4);
  EXPECT_EQ(usage->completion, 6);
  EXPECT_EQ(usage->model, "m");
  // A value that only looks like a key at the top: "usage" inside an array of objects.
  EXPECT_FALSE(usageFromJson(R"({"data":[{"usage":{"prompt_tokens":1}}]})"));
  // Unbalanced or unterminated: no answer.
  EXPECT_FALSE(usageFromJson(R"({"usage":{"prompt_tokens":1}]})"));
  EXPECT_FALSE(usageFromJson(R"({"model":"unterminated,"usage":{"prompt_tokens":1}})"));
}

TEST(UsageTest, TheDirectReadAndTheParserAgreeOnUnusualUsageObjects) {
  // Read without the parser: numbers in every JSON form (only integers count), literals,
  // nested details, whitespace everywhere.
  auto usage = usageFromJson(
      R"({"usage":{ "x":true,"y":false ,"z":null,"prompt_tokens":-0,"input_tokens":3,)"
      R"("completion_tokens":1e2,"output_tokens":7,"d":{"a":[1,{"b":"}"}]},"f":-1.5E-3 },)"
      R"("model":"m"})");
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->prompt, 0);      // -0 is an integer: prompt_tokens wins over input_tokens
  EXPECT_EQ(usage->completion, 7);  // 1e2 is not an integer
  EXPECT_EQ(usage->model, "m");
  // An escaped key or model goes to the parser, which decodes it.
  usage = usageFromJson(R"({"usage":{"prompt\u005ftokens":3},"model":"a\tb"})");
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->prompt, 3);
  EXPECT_EQ(usage->model, "a\tb");
  // Malformed members are no answer, as the parser says.
  for (const char* bad : {R"({"usage":{"prompt_tokens":01}})",
                          R"({"usage":{"prompt_tokens":nul}})", R"({"usage":{"prompt_tokens":1,}})", R"({"usage":{"prompt_tokens" 1}})",
                          R"({"usage":{"prompt_tokens":1 "completion_tokens":2}})",
                          R"({"usage":{"prompt_tokens":-}})", R"({"usage":{"a":1.}})",
                          R"({"usage":{"a":1e}})", "{\"usage\":{\"a\":\"x\ty\"}}",
                          R"({"usage":{1:2}})"}) {
    EXPECT_FALSE(usageFromJson(bad)) << bad;
  }
}

TEST(UsageTest, StreamTapFindsTheFinalUsageChunkAcrossSplits) {
  std::string stream =
      "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n"
      "data: {\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,"
      "\"completion_tokens\":2}}\n\n"
      "data: [DONE]\n\n";
  for (std::size_t split = 1; split < stream.size(); split += 7) {
    UsageTap tap(true);
    tap.feed(stream.data(), split);
    tap.feed(stream.data() + split, stream.size() - split);
    auto usage = tap.finish();
    ASSERT_TRUE(usage) << split;
    EXPECT_EQ(usage->prompt, 9);
    EXPECT_EQ(usage->completion, 2);
  }
}

TEST(UsageTest, JsonTapGivesUpOnHugeBodies) {
  UsageTap tap(false);
  std::string chunk(512 * 1024, ' ');
  tap.feed(chunk.data(), chunk.size());
  tap.feed(chunk.data(), chunk.size());
  tap.feed("{}", 2);
  EXPECT_FALSE(tap.finish());
}

// The fast read (a skim for the two top-level values, then a direct read of them) must give
// the parser's answer for every well-formed document. Answers and mangled copies of them
// (bytes replaced, inserted or removed where they matter to a skim: quotes, backslashes,
// brackets, separators) are checked both ways; on a malformed document the fast read may
// still answer, since it does not validate the parts it skips.
TEST(UsageTest, TheFastReadGivesTheParsersAnswerOnEveryWellFormedDocument) {
  const std::vector<std::string> answers = {
      R"({"id":"chatcmpl-1","object":"chat.completion","created":1700000000,)"
      R"("model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1","choices":[{"index":0,)"
      R"("message":{"role":"assistant","content":"Hello! \"usage\": {} How can I help?",)"
      R"("refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,)"
      R"("completion_tokens":9,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":0},)"
      R"("completion_tokens_details":{"reasoning_tokens":0}}})",
      R"({"type":"response.completed","response":{"id":"r","model":"gpt-4.1",)"
      R"("usage":{"input_tokens":7,"output_tokens":3,"x":[1,2,{"y":"\\"}]}}})",
      "{ \"usage\" : { \"prompt_tokens\" : 12 ,\n \"completion_tokens\":-3 } ,"
      " \"model\":\"a\\u00e9\\\\b\" , \"z\":[[],{},\"\\\"\"] }",
  };
  const std::string interesting = "\"\\{}[]:, 0-1.eE\tnul";
  std::mt19937 random(20261203);
  int well_formed = 0;
  auto check = [&](const std::string& doc) {
    rapidjson::Document parsed;
    parsed.Parse(doc.data(), doc.size());
    if (parsed.HasParseError()) return;
    ++well_formed;
    auto fast = usageFromJson(doc);
    auto reference = usageFromJsonByParser(doc);
    ASSERT_EQ(fast.has_value(), reference.has_value()) << doc;
    if (!fast) return;
    EXPECT_EQ(fast->model, reference->model) << doc;
    EXPECT_EQ(fast->prompt, reference->prompt) << doc;
    EXPECT_EQ(fast->completion, reference->completion) << doc;
  };
  for (const std::string& answer : answers) {
    check(answer);
    for (int round = 0; round < 4000; ++round) {
      std::string doc = answer;
      const int edits = 1 + static_cast<int>(random() % 3);
      for (int e = 0; e < edits; ++e) {
        const std::size_t at = random() % doc.size();
        const char c = interesting[random() % interesting.size()];
        switch (random() % 3) {
          case 0: doc[at] = c; break;
          case 1: doc.insert(doc.begin() + static_cast<std::ptrdiff_t>(at), c); break;
          default: doc.erase(at, 1); break;
        }
      }
      check(doc);
    }
  }
  // The mangling must leave enough documents well formed for the check to mean something.
  EXPECT_GT(well_formed, 500);
}

}  // namespace
}  // namespace bulwark::observe
