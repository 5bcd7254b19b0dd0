#include "proxy/observe/usage.h"

#include <gtest/gtest.h>

#include <string>

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

}  // namespace
}  // namespace bulwark::observe
