// Choosing a request's route: the first entry of `routes:` whose match takes the request's
// path and model, else the default route (the top-level settings). Pure.
#pragma once

#include <string_view>

#include "config/config.h"

namespace bulwark::config {

// fnmatch(3) glob: * and ? match any characters ('/' included), [...] a class.
bool globMatches(std::string_view pattern, std::string_view text);
// A route's path pattern: a glob if it has *, ? or [, else a prefix of whole segments
// ("/v1/embeddings" takes "/v1/embeddings" and "/v1/embeddings/x", not "/v1/embeddingsx").
bool pathMatches(std::string_view pattern, std::string_view path);
// `path` without its query; `model` is "" when the body names none (or was not read).
const RouteConfig& routeFor(const Config& config, std::string_view path, std::string_view model);

}  // namespace bulwark::config
