// The schema of proxy.yaml: every key, its type, its allowed range and the rules between keys.
// Internal to config/; loadConfigString() is the public way in.
#pragma once

#include <yaml-cpp/yaml.h>

#include "config/config.h"
#include "config/mapping_reader.h"

namespace bulwark::config {

// Reads a parsed document (a null node for an empty file) into a Config. Every problem found
// is recorded in `context`; the returned Config is only meaningful when there are none.
Config readConfig(LoadContext& context, const YAML::Node& document);

}  // namespace bulwark::config
