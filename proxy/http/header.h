// An HTTP header field as received or to be sent, and case-insensitive lookup helpers.
// Plain values; no I/O.
#pragma once

#include <cstdint>
#include <cstring>
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

// Eight bytes at once: each of 'A'..'Z' lowered, every other byte (non-ASCII included) kept.
// A byte's low seven bits plus 0x25 carry into its top bit when above 'Z', plus 0x3F when at
// least 'A' (never into the next byte); letters are where exactly one of the two carried.
inline std::uint64_t asciiLower8(std::uint64_t w) {
  constexpr std::uint64_t kEach = 0x0101010101010101ULL;
  std::uint64_t low7 = w & (0x7F * kEach);
  std::uint64_t above_z = low7 + 0x25 * kEach;
  std::uint64_t from_a = low7 + 0x3F * kEach;
  std::uint64_t upper = (from_a ^ above_z) & ~w & (0x80 * kEach);
  return w | (upper >> 2);
}

inline std::uint64_t load8(const char* p) {
  std::uint64_t w;
  std::memcpy(&w, p, sizeof w);
  return w;
}

// Eight bytes at a time (the last eight may overlap those before): header names such as
// x-ratelimit-remaining-requests are compared several times per response.
inline bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  const std::size_t n = a.size();
  if (n != b.size()) return false;
  if (n < 8) {
    for (std::size_t i = 0; i < n; ++i) {
      if (asciiLower(a[i]) != asciiLower(b[i])) return false;
    }
    return true;
  }
  for (std::size_t i = 0; i + 8 < n; i += 8) {
    if (asciiLower8(load8(a.data() + i)) != asciiLower8(load8(b.data() + i))) return false;
  }
  return asciiLower8(load8(a.data() + n - 8)) == asciiLower8(load8(b.data() + n - 8));
}

// Whether `s` holds a CR or an LF, eight bytes at a time (a zero byte of the word XORed with
// CR or LF is one of them): short header names and values cost no library call.
inline bool hasLineBreak(std::string_view s) {
  constexpr std::uint64_t kEach = 0x0101010101010101ULL;
  auto holds = [](std::uint64_t w, char c) {
    std::uint64_t v = w ^ (static_cast<std::uint64_t>(c) * kEach);
    return ((v - kEach) & ~v & (0x80 * kEach)) != 0;
  };
  const std::size_t n = s.size();
  if (n < 8) {
    for (char c : s) {
      if (c == '\r' || c == '\n') return true;
    }
    return false;
  }
  auto breaks = [&](std::size_t at) {
    std::uint64_t w = load8(s.data() + at);
    return holds(w, '\r') || holds(w, '\n');
  };
  for (std::size_t i = 0; i + 8 < n; i += 8) {
    if (breaks(i)) return true;
  }
  return breaks(n - 8);  // the last eight, overlapping those before
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
