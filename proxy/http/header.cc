#include "proxy/http/header.h"

namespace bulwark::http {

std::optional<std::string_view> findHeader(const Headers& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (equalsIgnoreCase(h.name, name)) return std::string_view(h.value);
  }
  return std::nullopt;
}

std::string_view trimWhitespace(std::string_view s, bool and_line_ends) {
  auto space = [&](char c) {
    return c == ' ' || c == '\t' || (and_line_ends && (c == '\r' || c == '\n'));
  };
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

void appendHeaderTokens(std::string_view value, std::vector<std::string_view>& out) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view item = trimWhitespace(value.substr(0, comma));
    if (!item.empty()) out.push_back(item);
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
}

}  // namespace bulwark::http
