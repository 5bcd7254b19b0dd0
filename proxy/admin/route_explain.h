// GET /config/routes?path=...&model=...: which route a request would take, and the settings
// it would get (the top level merged with the route's overrides). A debugging aid on the
// admin listener: it shows names and numbers, never keys or headers.
#pragma once

#include <string>
#include <string_view>

#include "config/config.h"

namespace bulwark::admin {

std::string routeExplanationJson(const config::Config& config, std::string_view path,
                                 std::string_view model);

}  // namespace bulwark::admin
