// An HTTP header field as received or to be sent, and case-insensitive lookup helpers.
// Plain values; no I/O.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bulwark::http {

struct Header {
  std::string name;
  std::string value;
};

using Headers = std::vector<Header>;

// Header names are ASCII tokens: no locale, no function call per byte. Inline: it runs for
// every header of every message, several times.
inline char asciiLower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

inline bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (asciiLower(a[i]) != asciiLower(b[i])) return false;
  }
  return true;
}

// The first header with this name, if any.
std::optional<std::string_view> findHeader(const Headers& headers, std::string_view name);

// `s` without leading and trailing spaces and tabs (optional whitespace around a header value;
// `and_line_ends` also drops trailing CR and LF, for a raw header line). Inline: several calls
// per header line of every response.
inline std::string_view trimWhitespace(std::string_view s, bool and_line_ends = false) {
  auto space = [&](char c) {
    return c == ' ' || c == '\t' || (and_line_ends && (c == '\r' || c == '\n'));
  };
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

// Calls `fn` with each item of a comma-separated header value (trimmed, empty ones
// skipped), e.g. "keep-alive" and "Upgrade" from Connection: keep-alive, Upgrade.
template <typename Fn>
void forEachHeaderToken(std::string_view value, Fn&& fn) {
  while (!value.empty()) {
    std::size_t comma = value.find(',');
    std::string_view item = trimWhitespace(value.substr(0, comma));
    if (!item.empty()) fn(item);
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
}

}  // namespace bulwark::http
