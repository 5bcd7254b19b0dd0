// Parsers for the value syntaxes proxy.yaml uses: durations, sizes, listen addresses, plain
// numbers and ${VAR} / ${VAR:-default} expansion. Pure functions, no I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "config/config.h"
#include "config/loader.h"

namespace bulwark::config {

// "250ms", "2s", "1m", "1h", "1.5s", "0s"; a bare number is rejected (a unit is required), and
// so is a value finer than a millisecond ("0.5ms").
[[nodiscard]] std::optional<Duration> parseDuration(std::string_view text);

// The shortest exact spelling parseDuration() accepts: 1500ms -> "1500ms", 120000ms -> "2m".
[[nodiscard]] std::string formatDuration(Duration duration);

// "1024", "512KiB", "32MiB", "1GiB" (also KB/MB/GB as powers of 1000, and a "B" suffix).
[[nodiscard]] std::optional<std::uint64_t> parseSize(std::string_view text);

// "127.0.0.1:8080", "0.0.0.0:0", "[::1]:8080", "localhost:8080".
[[nodiscard]] std::optional<ListenAddress> parseListenAddress(std::string_view text);

// YAML scalars as typed values: "-3" -> -3, "0.5" / "2" / "1e-3" -> a finite double,
// "true" / "false" (also "True", "TRUE", "False", "FALSE") -> bool.
[[nodiscard]] std::optional<int> parseInteger(std::string_view text);
[[nodiscard]] std::optional<double> parseNumber(std::string_view text);
[[nodiscard]] std::optional<bool> parseBool(std::string_view text);

// Expands ${VAR} and ${VAR:-default} (the default also replaces an empty value, as in the
// shell); "$$" is a literal "$", and a "$" not followed by "{" or "$" is kept as it is. The
// default is taken literally up to the first "}". A value read from the environment is never
// expanded again. On a missing ${VAR} without a default, returns nullopt and sets *missing to the
// variable's name; on a malformed reference ("${" without "}", or an invalid variable name),
// returns nullopt and sets *missing to the empty string.
[[nodiscard]] std::optional<std::string> expandEnv(std::string_view text, const EnvLookup& env,
                                                   std::string* missing);

}  // namespace bulwark::config
