#include "proxy/http/header.h"

namespace bulwark::http {

std::optional<std::string_view> findHeader(const Headers& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (equalsIgnoreCase(h.name, name)) return std::string_view(h.value);
  }
  return std::nullopt;
}

}  // namespace bulwark::http
