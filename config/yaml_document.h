// Parses proxy.yaml text into its one yaml-cpp document, refusing first what a config never
// needs and yaml-cpp 0.7 handles badly. Internal to config/; stateless, safe from any thread.
#pragma once

#include <optional>
#include <string_view>

#include <yaml-cpp/yaml.h>

#include "config/loader.h"

namespace bulwark::config {

// Far deeper than proxy.yaml ever nests (retry.policies."429".retry is 4 levels).
inline constexpr int kMaxYamlDepth = 32;

struct YamlDocument {
  YAML::Node root;                     // a null node for an empty file
  std::optional<ConfigError> problem;  // set when the text is not one acceptable document
};

// Refused, each as one error with its line and column: invalid YAML; a second document; a
// stray token yaml-cpp would not consume (its LoadAll loops forever on a leading ","); anchors
// and aliases (a few aliases can multiply a file's size many times over); nesting deeper than
// kMaxYamlDepth (checked while parsing, before yaml-cpp recurses any deeper).
[[nodiscard]] YamlDocument parseYamlDocument(std::string_view text);

}  // namespace bulwark::config
