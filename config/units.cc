#include "config/units.h"

#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <system_error>

namespace bulwark::config {
namespace {

struct Unit {
  std::string_view suffix;
  std::int64_t scale;
};

// Milliseconds per unit.
constexpr std::array<Unit, 4> kDurationUnits{{
    {"ms", 1},
    {"s", 1000},
    {"m", 60'000},
    {"h", 3'600'000},
}};

// Bytes per unit; "" is a bare byte count.
constexpr std::array<Unit, 8> kSizeUnits{{
    {"", 1},
    {"B", 1},
    {"KiB", std::int64_t{kKiB}},
    {"MiB", std::int64_t{kMiB}},
    {"GiB", std::int64_t{kGiB}},
    {"KB", 1'000},
    {"MB", 1'000'000},
    {"GB", 1'000'000'000},
}};

// Keeps the fraction times a unit (at most ~1.1e9) well inside int64.
constexpr std::size_t kMaxFractionDigits = 9;

bool isDigit(char c) {
  return c >= '0' && c <= '9';
}

bool allDigits(std::string_view text) {
  for (char c : text) {
    if (!isDigit(c)) return false;
  }
  return true;
}

std::optional<std::int64_t> parseDigits(std::string_view digits) {
  std::int64_t value = 0;
  auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (error != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return value;
}

// "12" or "1.5" times `scale`, exactly: nullopt when the product has a fraction left over
// ("1.5" bytes) or does not fit in int64.
std::optional<std::int64_t> scaleDecimal(std::string_view number, std::int64_t scale) {
  const std::size_t dot = number.find('.');
  std::string_view whole = number.substr(0, dot);
  std::string_view fraction = dot == std::string_view::npos ? "" : number.substr(dot + 1);
  if (whole.empty() || !allDigits(whole) || !allDigits(fraction)) return std::nullopt;
  if (dot != std::string_view::npos && fraction.empty()) return std::nullopt;

  std::optional<std::int64_t> whole_value = parseDigits(whole);
  std::int64_t result = 0;
  if (!whole_value || __builtin_mul_overflow(*whole_value, scale, &result)) return std::nullopt;

  while (!fraction.empty() && fraction.back() == '0') fraction.remove_suffix(1);
  if (fraction.empty()) return result;
  if (fraction.size() > kMaxFractionDigits) return std::nullopt;
  std::int64_t denominator = 1;
  for (std::size_t i = 0; i < fraction.size(); ++i) denominator *= 10;
  const std::int64_t numerator = *parseDigits(fraction) * scale;
  if (numerator % denominator != 0) return std::nullopt;
  if (__builtin_add_overflow(result, numerator / denominator, &result)) return std::nullopt;
  return result;
}

// Splits "1.5MiB" into a number and a unit from `units`, then scales it.
template <std::size_t N>
std::optional<std::int64_t> parseWithUnit(std::string_view text, const std::array<Unit, N>& units) {
  std::size_t split = 0;
  while (split < text.size() && (isDigit(text[split]) || text[split] == '.')) ++split;
  const std::string_view suffix = text.substr(split);
  for (const Unit& unit : units) {
    if (unit.suffix == suffix) return scaleDecimal(text.substr(0, split), unit.scale);
  }
  return std::nullopt;
}

bool isHostnameChar(char c) {
  return isDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' || c == '-' ||
         c == '_';
}

bool isIpv6Char(char c) {
  return isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' || c == '.';
}

std::optional<std::uint16_t> parsePort(std::string_view text) {
  if (text.empty() || text.size() > 5 || !allDigits(text)) return std::nullopt;
  const std::int64_t port = *parseDigits(text);
  if (port > std::numeric_limits<std::uint16_t>::max()) return std::nullopt;
  return static_cast<std::uint16_t>(port);
}

bool isEnvNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

bool isEnvName(std::string_view name) {
  if (name.empty() || !isEnvNameStart(name.front())) return false;
  for (char c : name) {
    if (!isEnvNameStart(c) && !isDigit(c)) return false;
  }
  return true;
}

}  // namespace

std::optional<Duration> parseDuration(std::string_view text) {
  std::optional<std::int64_t> millis = parseWithUnit(text, kDurationUnits);
  if (!millis) return std::nullopt;
  return Duration(*millis);
}

std::string formatDuration(Duration duration) {
  const std::int64_t millis = duration.count();
  if (millis == 0) return "0s";
  for (auto unit = kDurationUnits.rbegin(); unit != kDurationUnits.rend(); ++unit) {
    if (millis % unit->scale == 0) {
      return std::to_string(millis / unit->scale) + std::string(unit->suffix);
    }
  }
  return std::to_string(millis) + "ms";
}

std::optional<std::uint64_t> parseSize(std::string_view text) {
  std::optional<std::int64_t> bytes = parseWithUnit(text, kSizeUnits);
  if (!bytes) return std::nullopt;
  return static_cast<std::uint64_t>(*bytes);
}

std::optional<ListenAddress> parseListenAddress(std::string_view text) {
  std::string_view host;
  std::string_view port;
  if (text.starts_with('[')) {
    const std::size_t close = text.find(']');
    if (close == std::string_view::npos || text.substr(close + 1, 1) != ":") return std::nullopt;
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    if (host.find(':') == std::string_view::npos) return std::nullopt;
    for (char c : host) {
      if (!isIpv6Char(c)) return std::nullopt;
    }
  } else {
    const std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    for (char c : host) {
      if (!isHostnameChar(c)) return std::nullopt;
    }
  }
  std::optional<std::uint16_t> port_number = parsePort(port);
  if (host.empty() || !port_number) return std::nullopt;
  return ListenAddress{std::string(host), *port_number};
}

std::string ListenAddress::toString() const {
  const bool ipv6 = host.find(':') != std::string::npos;
  return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::optional<int> parseInteger(std::string_view text) {
  int value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::optional<double> parseNumber(std::string_view text) {
  double value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  if (!std::isfinite(value)) return std::nullopt;
  return value;
}

std::optional<bool> parseBool(std::string_view text) {
  if (text == "true" || text == "True" || text == "TRUE") return true;
  if (text == "false" || text == "False" || text == "FALSE") return false;
  return std::nullopt;
}

std::optional<std::string> expandEnv(std::string_view text, const EnvLookup& env,
                                     std::string* missing) {
  auto fail = [missing](std::string_view name) -> std::optional<std::string> {
    if (missing != nullptr) *missing = std::string(name);
    return std::nullopt;
  };
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const std::string_view rest = text.substr(i);
    if (rest.starts_with("$$")) {
      out += '$';
      i += 2;
      continue;
    }
    if (!rest.starts_with("${")) {
      out += text[i];
      ++i;
      continue;
    }
    const std::size_t close = rest.find('}');
    if (close == std::string_view::npos) return fail("");
    const std::string_view reference = rest.substr(2, close - 2);
    const std::size_t separator = reference.find(":-");
    const std::string_view name = reference.substr(0, separator);
    if (!isEnvName(name)) return fail("");

    std::optional<std::string> value = env ? env(std::string(name)) : std::nullopt;
    if (separator != std::string_view::npos && (!value || value->empty())) {
      value = std::string(reference.substr(separator + 2));
    }
    if (!value) return fail(name);
    out += *value;
    i += close + 1;
  }
  return out;
}

}  // namespace bulwark::config
