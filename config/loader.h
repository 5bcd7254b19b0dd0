// Loading proxy.yaml into a typed Config: ${ENV} expansion, strict keys, every error at once.
// Stateless free functions; safe to call from any thread.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"

namespace bulwark::config {

// One problem in a config file, located by its key path ("retry.max_attempts",
// "upstreams[1].base_url") and its 1-based line and column (0 when unknown).
struct ConfigError {
  std::string path;
  int line = 0;
  int column = 0;
  std::string message;
  // "line 12, column 3: retry.max_atempts: unknown key"
  std::string toString() const;
};

struct LoadResult {
  std::optional<Config> config;  // set exactly when errors is empty
  std::vector<ConfigError> errors;
  bool ok() const { return errors.empty(); }
};

// Looks a variable up in the environment; nullopt when it is not set.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup processEnv();

[[nodiscard]] LoadResult loadConfigString(std::string_view yaml, const EnvLookup& env);
[[nodiscard]] LoadResult loadConfigFile(const std::string& path, const EnvLookup& env);

}  // namespace bulwark::config
