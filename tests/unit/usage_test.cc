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
