// The server's wait hints: retry-after-ms, retry-after (seconds or HTTP date), and for 429 the
// x-ratelimit-reset-* Go durations; and the parsers behind them.
#include <gtest/gtest.h>

#include "proxy/resilience/backoff.h"
#include "tests/unit/fakes.h"

namespace bulwark::resilience {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

struct GoDurationCase {
  const char* text;
  milliseconds expected;
};

class GoDurationTest : public testing::TestWithParam<GoDurationCase> {};

TEST_P(GoDurationTest, Parses) {
  std::optional<Millis> parsed = parseGoDuration(GetParam().text);
  ASSERT_TRUE(parsed.has_value()) << GetParam().text;
  EXPECT_EQ(*parsed, GetParam().expected) << GetParam().text;
}

INSTANTIATE_TEST_SUITE_P(
    Valid, GoDurationTest,
    testing::Values(
        GoDurationCase{"0", milliseconds(0)}, GoDurationCase{"0s", milliseconds(0)},
        GoDurationCase{"+0", milliseconds(0)}, GoDurationCase{"20ms", milliseconds(20)},
        GoDurationCase{"1.5s", milliseconds(1500)}, GoDurationCase{"6m0s", minutes(6)},
        GoDurationCase{"1h2m3.5s", hours(1) + minutes(2) + milliseconds(3500)},
        GoDurationCase{"2h", hours(2)}, GoDurationCase{"0.5m", seconds(30)},
        GoDurationCase{".5s", milliseconds(500)}, GoDurationCase{"1.s", seconds(1)},
        GoDurationCase{"20.1ms", milliseconds(21)}, GoDurationCase{"1ns", milliseconds(1)},
        GoDurationCase{"250us", milliseconds(1)}, GoDurationCase{"1500us", milliseconds(2)},
        GoDurationCase{"2000\xC2\xB5s", milliseconds(2)},
        GoDurationCase{"3000\xCE\xBCs", milliseconds(3)},
        GoDurationCase{"999999ns", milliseconds(1)}, GoDurationCase{"1000000ns", milliseconds(1)},
        GoDurationCase{"1000001ns", milliseconds(2)},
        GoDurationCase{"1m30s500ms", milliseconds(90500)}, GoDurationCase{"1s1s", seconds(2)},
        GoDurationCase{"0.000000001s", milliseconds(1)},
        GoDurationCase{"1.000000000000000000000001s", seconds(1)},
        GoDurationCase{"2562047h", hours(2562047)}));

class GoDurationRejectTest : public testing::TestWithParam<const char*> {};

TEST_P(GoDurationRejectTest, Rejects) {
  EXPECT_EQ(parseGoDuration(GetParam()), std::nullopt) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Invalid, GoDurationRejectTest,
                         testing::Values("", "-1s", "-0", "+", "1", "00", "s", ".s", ".", "1.5",
                                         "1x", "1sm", "1 s", " 1s", "1s ", "1.5.5s", "1S", "1d",
                                         "1e3s", "abc", "1s-2s", "1s.", "2562048h",
                                         "9223372036854775808ns", "99999999999999999999s",
                                         "2562047h48m"));

TEST(ParseHttpDateTest, ReadsAllThreeForms) {
  const WallTime expected = std::chrono::sys_days(std::chrono::year(1994) / 11 / 6) + hours(8) +
                            minutes(49) + seconds(37);
  EXPECT_EQ(parseHttpDate("Sun, 06 Nov 1994 08:49:37 GMT"), expected);
  EXPECT_EQ(parseHttpDate("Sunday, 06-Nov-94 08:49:37 GMT"), expected);
  EXPECT_EQ(parseHttpDate("Sun Nov  6 08:49:37 1994"), expected);
  EXPECT_EQ(parseHttpDate("Sun Nov 16 08:49:37 1994"), expected + hours(240));
}

TEST(ParseHttpDateTest, HandlesCalendarEdges) {
  using std::chrono::sys_days;
  using std::chrono::year;
  EXPECT_EQ(parseHttpDate("Thu, 01 Jan 1970 00:00:00 GMT"), WallTime());
  EXPECT_EQ(parseHttpDate("Thu, 29 Feb 2024 23:59:59 GMT"),
            sys_days(year(2024) / 3 / 1) - seconds(1));
  EXPECT_EQ(parseHttpDate("Wed, 21 Oct 2015 07:28:00 GMT"),
            sys_days(year(2015) / 10 / 21) + hours(7) + minutes(28));
  EXPECT_EQ(parseHttpDate("Tuesday, 01-Jan-30 00:00:00 GMT"), sys_days(year(2030) / 1 / 1));
  EXPECT_EQ(parseHttpDate("Wed, 31 Dec 2098 12:00:00 GMT"),
            sys_days(year(2098) / 12 / 31) + hours(12));
}

TEST(ParseHttpDateTest, DatesBeyondTheClockSaturate) {
  // system_clock's nanoseconds reach 1677 to 2262; converting year 1007 overflowed.
  EXPECT_EQ(parseHttpDate("Wed, 21 Oct 1007 07:28:04 GMT"), WallTime::min());
  EXPECT_EQ(parseHttpDate("Sun Jan  1 00:00:00 0000"), WallTime::min());
  EXPECT_EQ(parseHttpDate("Fri, 31 Dec 9999 23:59:59 GMT"), WallTime::max());
}

TEST(ParseHttpDateTest, RejectsGarbage) {
  for (const char* text : {
           "",
           "120",
           "Sun, 06 Nov 1994 08:49:37",
           "Sun, 06 Nov 1994 08:49:37 UTC",
           "Sun, 06 Nov 1994 08:49:37 GMT extra",
           "Sun, 06 Foo 1994 08:49:37 GMT",
           "Xyz, 06 Nov 1994 08:49:37 GMT",
           "Sun, 32 Oct 1994 08:49:37 GMT",
           "Sun, 29 Feb 2023 08:49:37 GMT",
           "Sun, 31 Nov 1994 08:49:37 GMT",
           "Sun, 00 Nov 1994 08:49:37 GMT",
           "Sun, 06 Nov 1994 24:00:00 GMT",
           "Sun, 06 Nov 1994 08:60:00 GMT",
           "Sun, 06 Nov 94 08:49:37 GMT",
           "Sun, 06-Nov-1994 08:49:37 GMT",
           "Sun, 6 Nov 1994 8:49:37 GMT",
           "Sun Nov  6 08:49:37 1994 GMT",
           "Sun Nov 6",
           "2015-10-21T07:28:00Z",
           "sun, 06 nov 1994 08:49:37 gmt",
       }) {
    EXPECT_EQ(parseHttpDate(text), std::nullopt) << text;
  }
}

class ServerRetryHintTest : public testing::Test {
 protected:
  std::optional<Millis> hint(const http::Headers& headers, int status = 429) {
    return serverRetryHint(headers, status, clock_.wallNow());
  }
  fakes::FakeClock clock_;
};

TEST_F(ServerRetryHintTest, NoHeadersNoHint) {
  EXPECT_EQ(hint({}), std::nullopt);
  EXPECT_EQ(hint({{"x-request-id", "req_1"}}), std::nullopt);
}

TEST_F(ServerRetryHintTest, RetryAfterMs) {
  EXPECT_EQ(hint({{"retry-after-ms", "700"}}), milliseconds(700));
  EXPECT_EQ(hint({{"Retry-After-Ms", "0"}}), milliseconds(0));
  EXPECT_EQ(hint({{"retry-after-ms", "20.1"}}), milliseconds(21));
  EXPECT_EQ(hint({{"retry-after-ms", " 15 "}}), milliseconds(15));
  EXPECT_EQ(hint({{"retry-after-ms", "700"}}, 503), milliseconds(700));
}

TEST_F(ServerRetryHintTest, RetryAfterMsWinsOverRetryAfter) {
  EXPECT_EQ(hint({{"retry-after", "5"}, {"retry-after-ms", "250"}}), milliseconds(250));
}

TEST_F(ServerRetryHintTest, RetryAfterSeconds) {
  EXPECT_EQ(hint({{"retry-after", "1"}}), seconds(1));
  EXPECT_EQ(hint({{"RETRY-AFTER", "120"}}, 503), seconds(120));
  EXPECT_EQ(hint({{"retry-after", "0"}}), milliseconds(0));
  EXPECT_EQ(hint({{"retry-after", "1.1"}}), milliseconds(1100));
  EXPECT_EQ(hint({{"retry-after", "0.0005"}}), milliseconds(1));
}

TEST_F(ServerRetryHintTest, AbsurdlyLongHintsSaturateInsteadOfOverflowing) {
  std::optional<Millis> huge = hint({{"retry-after", "99999999999999999999999999"}});
  ASSERT_TRUE(huge.has_value());
  EXPECT_GT(*huge, hours(24 * 365));
}

TEST_F(ServerRetryHintTest, RetryAfterDate) {
  const WallTime now = clock_.wallNow();  // 2026-11-28T14:00:00Z
  EXPECT_EQ(hint({{"retry-after", "Sat, 28 Nov 2026 14:00:30 GMT"}}), seconds(30));
  EXPECT_EQ(hint({{"retry-after", "Sat, 28 Nov 2026 14:00:00 GMT"}}), milliseconds(0));
  clock_.setWall(now + milliseconds(200));
  EXPECT_EQ(hint({{"retry-after", "Sat, 28 Nov 2026 14:00:30 GMT"}}), milliseconds(29800));
}

TEST_F(ServerRetryHintTest, RetryAfterDateInThePastIsZero) {
  EXPECT_EQ(hint({{"retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"}}), milliseconds(0));
  EXPECT_EQ(hint({{"retry-after", "Sat, 28 Nov 2026 13:59:59 GMT"}}), milliseconds(0));
}

TEST_F(ServerRetryHintTest, RetryAfterDateBeyondTheClockSaturates) {
  EXPECT_EQ(hint({{"retry-after", "Wed, 21 Oct 1007 07:28:04 GMT"}}), milliseconds(0));
  std::optional<Millis> far = hint({{"retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"}});
  ASSERT_TRUE(far.has_value());
  EXPECT_GT(*far, hours(24 * 365 * 200));
}

TEST_F(ServerRetryHintTest, RateLimitResetOnlyFor429) {
  http::Headers reset = {{"x-ratelimit-reset-requests", "1.5s"}};
  EXPECT_EQ(hint(reset, 429), milliseconds(1500));
  EXPECT_EQ(hint(reset, 503), std::nullopt);
  EXPECT_EQ(hint(reset, 500), std::nullopt);
}

TEST_F(ServerRetryHintTest, RateLimitResetTakesTheLargerOfBoth) {
  EXPECT_EQ(hint({{"x-ratelimit-reset-requests", "20ms"}, {"x-ratelimit-reset-tokens", "6m0s"}}),
            minutes(6));
  EXPECT_EQ(hint({{"x-ratelimit-reset-requests", "1m"}, {"x-ratelimit-reset-tokens", "1.5s"}}),
            minutes(1));
  EXPECT_EQ(hint({{"X-RateLimit-Reset-Tokens", "17ms"}}), milliseconds(17));
}

TEST_F(ServerRetryHintTest, RetryAfterBeatsRateLimitReset) {
  EXPECT_EQ(hint({{"x-ratelimit-reset-tokens", "6m0s"}, {"retry-after", "2"}}), seconds(2));
}

TEST_F(ServerRetryHintTest, MalformedValuesFallThroughToTheNextForm) {
  EXPECT_EQ(hint({{"retry-after-ms", "soon"}, {"retry-after", "3"}}), seconds(3));
  EXPECT_EQ(hint({{"retry-after-ms", "-5"}, {"retry-after", "3"}}), seconds(3));
  EXPECT_EQ(hint({{"retry-after-ms", "1e3"}, {"retry-after", "3"}}), seconds(3));
  EXPECT_EQ(hint({{"retry-after-ms", ""}, {"retry-after", "3"}}), seconds(3));
  EXPECT_EQ(hint({{"retry-after", "-1"}, {"x-ratelimit-reset-requests", "2s"}}), seconds(2));
  EXPECT_EQ(hint({{"retry-after", "tomorrow"}, {"x-ratelimit-reset-requests", "2s"}}), seconds(2));
  EXPECT_EQ(hint({{"retry-after", "Sun, 31 Feb 2026 00:00:00 GMT"},
                  {"x-ratelimit-reset-tokens", "250ms"}}),
            milliseconds(250));
  EXPECT_EQ(hint({{"x-ratelimit-reset-requests", "forever"}, {"x-ratelimit-reset-tokens", "3s"}}),
            seconds(3));
  EXPECT_EQ(hint({{"x-ratelimit-reset-requests", "-3s"}}), std::nullopt);
  EXPECT_EQ(hint({{"retry-after-ms", "NaN"}, {"retry-after", "inf"}}), std::nullopt);
}

}  // namespace
}  // namespace bulwark::resilience
