// Value syntaxes of proxy.yaml: durations, sizes, listen addresses, numbers, ${ENV} expansion.
#include "config/units.h"

#include <map>
#include <optional>
#include <string>

#include <gtest/gtest.h>

namespace bulwark::config {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

struct DurationCase {
  const char* text;
  milliseconds expected;
};

class ValidDurationTest : public testing::TestWithParam<DurationCase> {};

TEST_P(ValidDurationTest, Parses) {
  std::optional<Duration> parsed = parseDuration(GetParam().text);
  ASSERT_TRUE(parsed.has_value()) << GetParam().text;
  EXPECT_EQ(*parsed, GetParam().expected) << GetParam().text;
}

INSTANTIATE_TEST_SUITE_P(
    Durations, ValidDurationTest,
    testing::Values(DurationCase{"250ms", milliseconds(250)}, DurationCase{"2s", seconds(2)},
                    DurationCase{"1m", minutes(1)}, DurationCase{"1h", hours(1)},
                    DurationCase{"1.5s", milliseconds(1500)}, DurationCase{"0.25m", seconds(15)},
                    DurationCase{"1.0ms", milliseconds(1)},
                    DurationCase{"0.100s", milliseconds(100)}, DurationCase{"0s", milliseconds(0)},
                    DurationCase{"0ms", milliseconds(0)}, DurationCase{"600s", seconds(600)},
                    DurationCase{"5m", minutes(5)}, DurationCase{"007s", seconds(7)}));

class InvalidDurationTest : public testing::TestWithParam<const char*> {};

TEST_P(InvalidDurationTest, IsRejected) {
  EXPECT_FALSE(parseDuration(GetParam()).has_value()) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Durations, InvalidDurationTest,
                         testing::Values("", "10", "0", "5 seconds", "5 s", " 5s", "5s ", "-1s",
                                         "+1s", "s", "ms", ".5s", "5.s", "1..5s", "1.2.3s", "5S",
                                         "5sec", "1d", "1m30s", "0.5ms", "1.0001s",
                                         "99999999999999999999s", "9223372036854775807h", "1e3ms",
                                         "0x10s", "1,5s"));

TEST(FormatDurationTest, UsesTheLargestExactUnit) {
  EXPECT_EQ(formatDuration(milliseconds(0)), "0s");
  EXPECT_EQ(formatDuration(milliseconds(250)), "250ms");
  EXPECT_EQ(formatDuration(milliseconds(1500)), "1500ms");
  EXPECT_EQ(formatDuration(seconds(90)), "90s");
  EXPECT_EQ(formatDuration(minutes(2)), "2m");
  EXPECT_EQ(formatDuration(minutes(5)), "5m");
  EXPECT_EQ(formatDuration(hours(3)), "3h");
}

TEST(FormatDurationTest, RoundTripsThroughParse) {
  for (milliseconds value : {milliseconds(1), milliseconds(999), milliseconds(61000),
                             milliseconds(3600000), milliseconds(5400000)}) {
    EXPECT_EQ(parseDuration(formatDuration(value)), value) << value.count();
  }
}

struct SizeCase {
  const char* text;
  std::uint64_t expected;
};

class ValidSizeTest : public testing::TestWithParam<SizeCase> {};

TEST_P(ValidSizeTest, Parses) {
  std::optional<std::uint64_t> parsed = parseSize(GetParam().text);
  ASSERT_TRUE(parsed.has_value()) << GetParam().text;
  EXPECT_EQ(*parsed, GetParam().expected) << GetParam().text;
}

INSTANTIATE_TEST_SUITE_P(Sizes, ValidSizeTest,
                         testing::Values(SizeCase{"0", 0}, SizeCase{"1024", 1024},
                                         SizeCase{"100B", 100}, SizeCase{"512KiB", 512 * kKiB},
                                         SizeCase{"32MiB", 32 * kMiB}, SizeCase{"1GiB", kGiB},
                                         SizeCase{"4GiB", 4 * kGiB},
                                         SizeCase{"1.5MiB", 3 * kMiB / 2}, SizeCase{"1KB", 1000},
                                         SizeCase{"2MB", 2000000}, SizeCase{"3GB", 3000000000ULL},
                                         SizeCase{"0.5KiB", 512}));

class InvalidSizeTest : public testing::TestWithParam<const char*> {};

TEST_P(InvalidSizeTest, IsRejected) {
  EXPECT_FALSE(parseSize(GetParam()).has_value()) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Sizes, InvalidSizeTest,
                         testing::Values("", "MiB", "-1", "-1MiB", "32 MiB", "32mib", "32M", "32Mi",
                                         "1TiB", "1.5B", "0.1KiB", "1.5", "32MiBs",
                                         "99999999999999999999", "99999999999GiB"));

struct ListenCase {
  const char* text;
  const char* host;
  std::uint16_t port;
  const char* formatted;
};

class ValidListenAddressTest : public testing::TestWithParam<ListenCase> {};

TEST_P(ValidListenAddressTest, ParsesAndFormats) {
  std::optional<ListenAddress> parsed = parseListenAddress(GetParam().text);
  ASSERT_TRUE(parsed.has_value()) << GetParam().text;
  EXPECT_EQ(parsed->host, GetParam().host);
  EXPECT_EQ(parsed->port, GetParam().port);
  EXPECT_EQ(parsed->toString(), GetParam().formatted);
}

INSTANTIATE_TEST_SUITE_P(
    ListenAddresses, ValidListenAddressTest,
    testing::Values(ListenCase{"127.0.0.1:8080", "127.0.0.1", 8080, "127.0.0.1:8080"},
                    ListenCase{"0.0.0.0:0", "0.0.0.0", 0, "0.0.0.0:0"},
                    ListenCase{"localhost:65535", "localhost", 65535, "localhost:65535"},
                    ListenCase{"my-host.internal:9090", "my-host.internal", 9090,
                               "my-host.internal:9090"},
                    ListenCase{"[::1]:8080", "::1", 8080, "[::1]:8080"},
                    ListenCase{"[::]:0", "::", 0, "[::]:0"},
                    ListenCase{"[fe80::1:2]:443", "fe80::1:2", 443, "[fe80::1:2]:443"}));

class InvalidListenAddressTest : public testing::TestWithParam<const char*> {};

TEST_P(InvalidListenAddressTest, IsRejected) {
  EXPECT_FALSE(parseListenAddress(GetParam()).has_value()) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(ListenAddresses, InvalidListenAddressTest,
                         testing::Values("", "8080", ":8080", "127.0.0.1",
                                         "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
                                         "127.0.0.1:80a", "127.0.0.1:123456", "::1:8080", "[::1]",
                                         "[::1]8080", "[]:8080", "[not-v6]:80", "[::1:8080",
                                         "http://localhost:80", "host name:80", "*:8080"));

TEST(ParseIntegerTest, AcceptsWholeNumbersOnly) {
  EXPECT_EQ(parseInteger("0"), 0);
  EXPECT_EQ(parseInteger("42"), 42);
  EXPECT_EQ(parseInteger("-1"), -1);
  for (const char* text : {"", "1.5", "1e3", "+1", " 1", "1 ", "0x10", "abc", "99999999999"}) {
    EXPECT_FALSE(parseInteger(text).has_value()) << text;
  }
}

TEST(ParseNumberTest, AcceptsFiniteNumbers) {
  EXPECT_EQ(parseNumber("2"), 2.0);
  EXPECT_EQ(parseNumber("0.5"), 0.5);
  EXPECT_EQ(parseNumber("-0.5"), -0.5);
  EXPECT_EQ(parseNumber("1e-3"), 0.001);
  for (const char* text : {"", "nan", "inf", "-inf", "1e999", "0.5x", "half", " 1"}) {
    EXPECT_FALSE(parseNumber(text).has_value()) << text;
  }
}

TEST(ParseBoolTest, AcceptsTrueAndFalseOnly) {
  for (const char* text : {"true", "True", "TRUE"}) EXPECT_EQ(parseBool(text), true) << text;
  for (const char* text : {"false", "False", "FALSE"}) EXPECT_EQ(parseBool(text), false) << text;
  for (const char* text : {"", "yes", "no", "on", "off", "1", "0", "tRUE"}) {
    EXPECT_FALSE(parseBool(text).has_value()) << text;
  }
}

EnvLookup fakeEnv(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

struct ExpandCase {
  const char* text;
  const char* expected;
};

class ExpandEnvTest : public testing::TestWithParam<ExpandCase> {};

TEST_P(ExpandEnvTest, Expands) {
  const EnvLookup env = fakeEnv(
      {{"KEY", "sk-123"}, {"EMPTY", ""}, {"PORT", "8080"}, {"NESTED", "${KEY}"}, {"_X1", "x"}});
  std::string missing = "untouched";
  std::optional<std::string> expanded = expandEnv(GetParam().text, env, &missing);
  ASSERT_TRUE(expanded.has_value()) << GetParam().text;
  EXPECT_EQ(*expanded, GetParam().expected) << GetParam().text;
  EXPECT_EQ(missing, "untouched");
}

INSTANTIATE_TEST_SUITE_P(
    Env, ExpandEnvTest,
    testing::Values(ExpandCase{"plain", "plain"}, ExpandCase{"", ""},
                    ExpandCase{"${KEY}", "sk-123"}, ExpandCase{"Bearer ${KEY}!", "Bearer sk-123!"},
                    ExpandCase{"${KEY}${KEY}", "sk-123sk-123"},
                    ExpandCase{"127.0.0.1:${PORT}", "127.0.0.1:8080"}, ExpandCase{"${EMPTY}", ""},
                    ExpandCase{"${_X1}", "x"}, ExpandCase{"${UNSET:-fallback}", "fallback"},
                    ExpandCase{"${UNSET:-}", ""}, ExpandCase{"${EMPTY:-fallback}", "fallback"},
                    ExpandCase{"${KEY:-fallback}", "sk-123"},
                    ExpandCase{"${UNSET:-a:-b $x}", "a:-b $x"}, ExpandCase{"$$", "$"},
                    ExpandCase{"$${KEY}", "${KEY}"}, ExpandCase{"a$$$$b", "a$$b"},
                    ExpandCase{"$$$${KEY}", "$${KEY}"}, ExpandCase{"$KEY", "$KEY"},
                    ExpandCase{"cost: 5$", "cost: 5$"},
                    // A value from the environment is never expanded again.
                    ExpandCase{"${NESTED}", "${KEY}"}));

TEST(ExpandEnvTest, MissingVariableIsNamed) {
  std::string missing;
  EXPECT_FALSE(expandEnv("key=${OPENAI_API_KEY}", fakeEnv({}), &missing).has_value());
  EXPECT_EQ(missing, "OPENAI_API_KEY");
}

TEST(ExpandEnvTest, MalformedReferencesLeaveTheNameEmpty) {
  for (const char* text : {"${", "${KEY", "${}", "${1ABC}", "${A-B}", "${ KEY}", "${:-x}"}) {
    std::string missing = "untouched";
    EXPECT_FALSE(expandEnv(text, fakeEnv({{"KEY", "v"}}), &missing).has_value()) << text;
    EXPECT_EQ(missing, "") << text;
  }
}

TEST(ExpandEnvTest, ToleratesANullMissingPointerAndAnEmptyLookup) {
  EXPECT_FALSE(expandEnv("${X}", fakeEnv({}), nullptr).has_value());
  EXPECT_EQ(expandEnv("${X:-d}", EnvLookup(), nullptr), "d");
}

}  // namespace
}  // namespace bulwark::config
