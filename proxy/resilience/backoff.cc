#include "proxy/resilience/backoff.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <limits>

namespace bulwark::resilience {
namespace {

// Waits beyond this (about 31 years) saturate: far above any sensible max_retry_after, and
// far below where milliseconds would overflow.
constexpr std::uint64_t kMaxWaitMs = 1'000'000'000'000;

using http::trimWhitespace;

bool isDigit(char c) {
  return c >= '0' && c <= '9';
}

bool allDigits(std::string_view s) {
  return std::all_of(s.begin(), s.end(), isDigit);
}

// A non-negative decimal without sign or exponent ("12", "1.5", ".250") in milliseconds,
// where the text counts units of 10^unit_exponent ms (0: ms, 3: seconds). Exact integer
// arithmetic, rounded up so that a wait is never shorter than asked for ("1.1" seconds is
// 1100 ms, not 1101 as binary floating point would have it), saturating at kMaxWaitMs.
std::optional<Millis> parseDecimalMillis(std::string_view text, std::size_t unit_exponent) {
  text = trimWhitespace(text);
  const std::size_t dot = text.find('.');
  const std::string_view whole = text.substr(0, dot);
  const std::string_view fraction =
      dot == std::string_view::npos ? std::string_view() : text.substr(dot + 1);
  if ((whole.empty() && fraction.empty()) || !allDigits(whole) || !allDigits(fraction)) {
    return std::nullopt;
  }
  std::uint64_t ms = 0;
  auto push = [&ms](char digit) {
    ms = std::min(ms * 10 + static_cast<std::uint64_t>(digit - '0'), kMaxWaitMs);
  };
  for (char c : whole) push(c);
  for (std::size_t i = 0; i < unit_exponent; ++i) push(i < fraction.size() ? fraction[i] : '0');
  const std::string_view below_ms = fraction.substr(std::min(unit_exponent, fraction.size()));
  if (below_ms.find_first_not_of('0') != std::string_view::npos) ms = std::min(ms + 1, kMaxWaitMs);
  return Millis(static_cast<Millis::rep>(ms));
}

// Go's unit suffixes in nanoseconds; "µs" appears as MICRO SIGN and as GREEK SMALL MU.
struct GoUnit {
  std::string_view name;
  std::uint64_t nanos;
};
constexpr std::array<GoUnit, 8> kGoUnits = {{
    {"ns", 1},
    {"us", 1'000},
    {"\xC2\xB5s", 1'000},
    {"\xCE\xBCs", 1'000},
    {"ms", 1'000'000},
    {"s", 1'000'000'000},
    {"m", 60'000'000'000},
    {"h", 3'600'000'000'000},
}};

constexpr std::array<std::string_view, 12> kMonths = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
constexpr std::array<std::string_view, 7> kShortDays = {"Mon", "Tue", "Wed", "Thu",
                                                        "Fri", "Sat", "Sun"};
constexpr std::array<std::string_view, 7> kLongDays = {
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"};

template <std::size_t N>
bool isOneOf(const std::array<std::string_view, N>& names, std::string_view word) {
  return std::find(names.begin(), names.end(), word) != names.end();
}

// Reads an HTTP date left to right; every step fails softly.
class DateCursor {
 public:
  explicit DateCursor(std::string_view text) : text_(text) {}

  bool literal(std::string_view expected) {
    if (text_.substr(0, expected.size()) != expected) return false;
    text_.remove_prefix(expected.size());
    return true;
  }
  bool peek(char c) const { return !text_.empty() && text_.front() == c; }
  bool atEnd() const { return text_.empty(); }

  std::string_view word() {
    std::size_t n = 0;
    while (n < text_.size() &&
           ((text_[n] >= 'A' && text_[n] <= 'Z') || (text_[n] >= 'a' && text_[n] <= 'z'))) {
      ++n;
    }
    std::string_view w = text_.substr(0, n);
    text_.remove_prefix(n);
    return w;
  }

  std::optional<int> number(std::size_t min_digits, std::size_t max_digits) {
    std::size_t n = 0;
    int value = 0;
    while (n < max_digits && n < text_.size() && isDigit(text_[n])) {
      value = value * 10 + (text_[n] - '0');
      ++n;
    }
    if (n < min_digits) return std::nullopt;
    text_.remove_prefix(n);
    return value;
  }

  std::optional<int> month() {
    auto it = std::find(kMonths.begin(), kMonths.end(), word());
    if (it == kMonths.end()) return std::nullopt;
    return static_cast<int>(it - kMonths.begin());
  }

  // "08:49:37"
  bool timeOfDay(std::tm& tm) {
    auto hour = number(2, 2);
    if (!hour || !literal(":")) return false;
    auto minute = number(2, 2);
    if (!minute || !literal(":")) return false;
    auto second = number(2, 2);
    if (!second) return false;
    tm.tm_hour = *hour;
    tm.tm_min = *minute;
    tm.tm_sec = *second;
    return true;
  }

 private:
  std::string_view text_;
};

bool isLeapYear(int year) {
  return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
}

std::optional<WallTime> toWallTime(std::tm& tm) {
  constexpr std::array<int, 12> kDaysInMonth = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int days = kDaysInMonth[static_cast<std::size_t>(tm.tm_mon)];
  if (tm.tm_mon == 1 && isLeapYear(tm.tm_year + 1900)) ++days;
  if (tm.tm_mday < 1 || tm.tm_mday > days || tm.tm_hour > 23 || tm.tm_min > 59 ||
      tm.tm_sec > 60) {  // 60: a leap second
    return std::nullopt;
  }
  // With a four-digit year timegm cannot fail (its -1 is the legitimate 1969-12-31T23:59:59),
  // but system_clock may count nanoseconds in 64 bits, which reach only the years 1677 to 2262.
  // Dates beyond saturate, keeping their meaning: long past is "retry now", far off is "too
  // long to wait".
  constexpr auto kEarliest =
      std::chrono::ceil<std::chrono::seconds>(WallTime::min().time_since_epoch()).count();
  constexpr auto kLatest =
      std::chrono::floor<std::chrono::seconds>(WallTime::max().time_since_epoch()).count();
  const std::time_t seconds = timegm(&tm);
  if (seconds < kEarliest) return WallTime::min();
  if (seconds > kLatest) return WallTime::max();
  return std::chrono::system_clock::from_time_t(seconds);
}

// After "Sun,": IMF-fixdate " 06 Nov 1994 08:49:37 GMT" or RFC 850 " 06-Nov-94 08:49:37 GMT".
// The day name is not checked against the date, nor its form against the format
// (RFC 9110 §5.6.7 lets recipients ignore it).
std::optional<WallTime> parseDateAfterComma(DateCursor& in) {
  std::tm tm{};
  if (!in.literal(" ")) return std::nullopt;
  auto day = in.number(2, 2);
  if (!day) return std::nullopt;
  tm.tm_mday = *day;
  const bool rfc850 = in.peek('-');
  const char* separator = rfc850 ? "-" : " ";
  if (!in.literal(separator)) return std::nullopt;
  auto month = in.month();
  if (!month || !in.literal(separator)) return std::nullopt;
  tm.tm_mon = *month;
  if (rfc850) {
    // RFC 9110 reads two-digit years as within 50 years of now; with no clock here a fixed
    // pivot serves, as only antique servers send this form.
    auto year = in.number(2, 2);
    if (!year) return std::nullopt;
    tm.tm_year = *year < 70 ? *year + 100 : *year;
  } else {
    auto year = in.number(4, 4);
    if (!year) return std::nullopt;
    tm.tm_year = *year - 1900;
  }
  if (!in.literal(" ") || !in.timeOfDay(tm) || !in.literal(" GMT") || !in.atEnd()) {
    return std::nullopt;
  }
  return toWallTime(tm);
}

// After "Sun": asctime " Nov  6 08:49:37 1994" (the day padded with a space, or two digits).
std::optional<WallTime> parseAsctimeRest(DateCursor& in) {
  std::tm tm{};
  if (!in.literal(" ")) return std::nullopt;
  auto month = in.month();
  if (!month || !in.literal(" ")) return std::nullopt;
  tm.tm_mon = *month;
  std::optional<int> day = in.literal(" ") ? in.number(1, 1) : in.number(1, 2);
  if (!day || !in.literal(" ") || !in.timeOfDay(tm) || !in.literal(" ")) return std::nullopt;
  tm.tm_mday = *day;
  auto year = in.number(4, 4);
  if (!year || !in.atEnd()) return std::nullopt;
  tm.tm_year = *year - 1900;
  return toWallTime(tm);
}

Millis clampToMaxDelay(double ms, const config::RetryConfig& retry) {
  const double max_ms = static_cast<double>(std::max<Millis::rep>(retry.max_delay.count(), 0));
  return Millis(std::llround(std::clamp(ms, 0.0, max_ms)));
}

}  // namespace

Backoff::Backoff(const config::RetryConfig& retry, Random& random)
    : retry_(retry), random_(random), previous_(retry.base_delay) {}

Millis Backoff::next(int retry) {
  const double base = static_cast<double>(retry_.base_delay.count());
  const double max = static_cast<double>(retry_.max_delay.count());
  const double u = std::clamp(random_.uniform01(), 0.0, 1.0);
  if (retry_.jitter == config::Jitter::kDecorrelated) {
    const double high = std::max(base, 3.0 * static_cast<double>(previous_.count()));
    previous_ = clampToMaxDelay(base + u * (high - base), retry_);
    return previous_;
  }
  // pow() may reach infinity for large retry numbers; min() with max_delay tames it.
  double d = base * std::pow(retry_.exponential_base, std::max(retry, 1) - 1);
  if (!(d <= max)) d = max;  // also catches NaN
  switch (retry_.jitter) {
    case config::Jitter::kFull:
      return clampToMaxDelay(u * d, retry_);
    case config::Jitter::kEqual:
      return clampToMaxDelay(d / 2 + u * d / 2, retry_);
    case config::Jitter::kDecorrelated:
    case config::Jitter::kNone:
      break;
  }
  return clampToMaxDelay(d, retry_);
}

std::optional<Millis> parseGoDuration(std::string_view text) {
  // Go's time.ParseDuration, minus negative values: [+](number unit)+ or "0", computed in
  // integer nanoseconds with its overflow limit.
  constexpr std::uint64_t kMaxNanos =
      static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  if (text == "0") return Millis(0);
  if (text.empty()) return std::nullopt;

  std::uint64_t total = 0;
  while (!text.empty()) {
    std::uint64_t whole = 0;
    std::size_t i = 0;
    for (; i < text.size() && isDigit(text[i]); ++i) {
      if (whole > (kMaxNanos - 9) / 10) return std::nullopt;
      whole = whole * 10 + static_cast<std::uint64_t>(text[i] - '0');
    }
    const bool has_whole = i > 0;
    std::uint64_t fraction = 0;
    double scale = 1;
    bool has_fraction = false;
    if (i < text.size() && text[i] == '.') {
      for (++i; i < text.size() && isDigit(text[i]); ++i) {
        has_fraction = true;
        // Digits beyond what 64 bits hold are below a nanosecond for any unit: ignore them.
        if (fraction > (kMaxNanos - 9) / 10) continue;
        fraction = fraction * 10 + static_cast<std::uint64_t>(text[i] - '0');
        scale *= 10;
      }
    }
    if (!has_whole && !has_fraction) return std::nullopt;
    text.remove_prefix(i);

    std::size_t unit_length = 0;
    while (unit_length < text.size() && !isDigit(text[unit_length]) && text[unit_length] != '.') {
      ++unit_length;
    }
    const std::string_view unit_name = text.substr(0, unit_length);
    text.remove_prefix(unit_length);
    auto unit = std::find_if(kGoUnits.begin(), kGoUnits.end(),
                             [unit_name](const GoUnit& u) { return u.name == unit_name; });
    if (unit == kGoUnits.end()) return std::nullopt;

    if (whole > kMaxNanos / unit->nanos) return std::nullopt;
    std::uint64_t nanos = whole * unit->nanos;
    nanos += static_cast<std::uint64_t>(static_cast<double>(fraction) *
                                        (static_cast<double>(unit->nanos) / scale));
    if (nanos > kMaxNanos || total > kMaxNanos - nanos) return std::nullopt;
    total += nanos;
  }
  return Millis(static_cast<Millis::rep>((total + 999'999) / 1'000'000));
}

std::optional<WallTime> parseHttpDate(std::string_view text) {
  DateCursor in(trimWhitespace(text));
  const std::string_view day_name = in.word();
  if (!isOneOf(kShortDays, day_name) && !isOneOf(kLongDays, day_name)) return std::nullopt;
  return in.literal(",") ? parseDateAfterComma(in) : parseAsctimeRest(in);
}

std::optional<Millis> serverRetryHint(const http::Headers& headers, int status, WallTime now) {
  // Azure OpenAI sends x-ms-retry-after-ms as well as retry-after-ms.
  for (std::string_view name : {"retry-after-ms", "x-ms-retry-after-ms"}) {
    if (auto value = http::findHeader(headers, name)) {
      if (auto wait = parseDecimalMillis(*value, 0)) return wait;
    }
  }
  if (auto value = http::findHeader(headers, "retry-after")) {
    if (auto wait = parseDecimalMillis(*value, 3)) return wait;
    if (auto date = parseHttpDate(*value)) {
      if (*date <= now) return Millis(0);
      return std::chrono::ceil<Millis>(*date - now);
    }
  }
  if (status != 429) return std::nullopt;
  std::optional<Millis> longest;
  for (std::string_view name : {"x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"}) {
    auto value = http::findHeader(headers, name);
    if (!value) continue;
    auto wait = parseGoDuration(trimWhitespace(*value));
    if (wait && (!longest || *wait > *longest)) longest = wait;
  }
  return longest;
}

RetryDelay planRetryDelay(const config::RetryConfig& retry, std::optional<Millis> server_hint,
                          Millis backoff, SteadyTime now, SteadyTime deadline) {
  RetryDelay plan;
  if (server_hint && retry.honor_retry_after) {
    if (*server_hint > retry.max_retry_after) {
      plan.why_not = "retry_after_too_long";
      return plan;
    }
    plan.delay = *server_hint;
    plan.source = RetryDelay::Source::kServer;
  } else {
    plan.delay = std::max(backoff, Millis(0));
    plan.source = RetryDelay::Source::kBackoff;
  }
  if (now + plan.delay >= deadline) {
    plan.why_not = "deadline";
    return plan;
  }
  plan.retry = true;
  return plan;
}

SteadyTime requestDeadline(const config::TimeoutsConfig& timeouts, const http::Headers& request,
                           SteadyTime start) {
  Millis total = timeouts.total;
  if (auto value = http::findHeader(request, "x-stainless-timeout")) {
    if (auto limit = parseDecimalMillis(*value, 3); limit && *limit > Millis(0)) {
      total = std::min(total, *limit);
    }
  }
  return start + total;
}

int attemptsAllowed(const config::RetryConfig& retry, const http::Headers& request) {
  if (auto value = http::findHeader(request, "x-stainless-retry-count")) {
    const std::string_view count = trimWhitespace(*value);
    // Any non-zero digit means above 0, however long the number.
    if (!count.empty() && allDigits(count) &&
        count.find_first_not_of('0') != std::string_view::npos)
      return 1;
  }
  return std::max(retry.max_attempts, 1);
}

}  // namespace bulwark::resilience
