// Fuzz target: the value parsers of proxy.yaml (durations, sizes, listen addresses, ${ENV}).
#include <cstdint>
#include <string>
#include <string_view>

#include "config/units.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)bulwark::config::parseDuration(text);
  (void)bulwark::config::parseSize(text);
  (void)bulwark::config::parseListenAddress(text);
  std::string missing;
  auto env = [](const std::string& name) -> std::optional<std::string> {
    if (name.size() % 2 == 0) return name;
    return std::nullopt;
  };
  (void)bulwark::config::expandEnv(text, env, &missing);
  return 0;
}
