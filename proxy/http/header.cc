#include "proxy/http/header.h"

namespace bulwark::http {

std::optional<std::string_view> findHeader(const Headers& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (equalsIgnoreCase(h.name, name)) return std::string_view(h.value);
  }
  return std::nullopt;
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
