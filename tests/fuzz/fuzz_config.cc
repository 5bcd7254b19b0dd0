// Fuzz target: the proxy.yaml loader never crashes or throws; it returns a config or errors.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "config/loader.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view yaml(reinterpret_cast<const char*>(data), size);
  auto env = [](const std::string& name) -> std::optional<std::string> {
    if (name == "SET") return std::string("value");
    return std::nullopt;
  };
  bulwark::config::LoadResult result = bulwark::config::loadConfigString(yaml, env);
  if (result.config.has_value() == !result.errors.empty()) std::abort();
  return 0;
}
