#include "config/routes.h"

#include <fnmatch.h>

#include <string>

namespace bulwark::config {

bool globMatches(std::string_view pattern, std::string_view text) {
  return fnmatch(std::string(pattern).c_str(), std::string(text).c_str(), 0) == 0;
}

bool pathMatches(std::string_view pattern, std::string_view path) {
  if (pattern.empty()) return true;
  if (pattern.find_first_of("*?[") != std::string_view::npos) return globMatches(pattern, path);
  if (!path.starts_with(pattern)) return false;
  return path.size() == pattern.size() || pattern.back() == '/' || path[pattern.size()] == '/';
}

const RouteConfig& routeFor(const Config& config, std::string_view path, std::string_view model) {
  path = path.substr(0, path.find('?'));
  for (const RouteConfig& route : config.routes) {
    if (!pathMatches(route.match.path, path)) continue;
    if (!route.match.model.empty() && !globMatches(route.match.model, model)) continue;
    return route;
  }
  return config.default_route;
}

}  // namespace bulwark::config
