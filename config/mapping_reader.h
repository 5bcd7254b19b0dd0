// Reads one YAML mapping of proxy.yaml into typed fields, strictly: each read names a key the
// section knows, and finish() reports every key nobody asked for. Internal to config/.
// Errors are collected in a LoadContext, never thrown; one LoadContext per load, one thread.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "config/loader.h"

namespace bulwark::config {

// What one load shares: the environment for ${VAR} expansion and the errors found so far.
class LoadContext {
 public:
  explicit LoadContext(const EnvLookup& env) : env_(env) {}
  LoadContext(const LoadContext&) = delete;
  LoadContext& operator=(const LoadContext&) = delete;

  const EnvLookup& env() const { return env_; }

  void addError(std::string path, const YAML::Mark& mark, std::string message);

  // The text of a scalar value after ${VAR} expansion. Anything else (a list, a mapping, an
  // empty value) or a missing variable is recorded as an error at `path` and gives nullopt.
  // `expected` describes the wanted value ("a duration such as 2s") for that error.
  [[nodiscard]] std::optional<std::string> expandedScalar(const YAML::Node& value,
                                                          const YAML::Mark& mark,
                                                          const std::string& path,
                                                          std::string_view expected);

  bool hasErrors() const { return !errors_.empty(); }
  std::vector<ConfigError> takeErrors() { return std::move(errors_); }

 private:
  const EnvLookup& env_;
  std::vector<ConfigError> errors_;
  // Values that came out of ${VAR} expansion: the environment holds secrets, so error
  // messages never repeat them, whatever key they were (mis)placed under.
  std::vector<std::string> from_environment_;
};

// "a list" / "a mapping" / "an empty value" / "a scalar": how error messages name a node.
std::string describeNode(const YAML::Node& node);

// `text` in double quotes for an error message, shortened and with control characters
// replaced. Never used for values that may be secret (strings, api keys, header values).
std::string quoteValue(std::string_view text);

class MappingReader {
 public:
  // `node` is the mapping at `path` ("" for the document root), located at `mark`. An absent
  // (nullptr) or empty value reads as an empty mapping, so every key keeps its default;
  // anything else that is not a mapping is recorded as an error, and the reader is then empty
  // and quiet (require() adds no errors of its own).
  MappingReader(LoadContext& context, const YAML::Node* node, const YAML::Mark& mark,
                std::string path);

  const std::string& path() const { return path_; }
  LoadContext& context() { return context_; }

  // "retry" + "max_attempts" -> "retry.max_attempts"; at the root, just the key.
  std::string pathOf(std::string_view key) const;

  // Keys in document order, for mappings whose keys are data (headers, policies).
  std::vector<std::string> keys() const;

  bool has(std::string_view key) const { return findEntry(key) != nullptr; }

  // Marks `key` as known and returns its value, or nullptr when the file does not set it.
  const YAML::Node* find(std::string_view key);

  // The position errors about `key` point at: its value, else its key, else this mapping.
  YAML::Mark markOf(std::string_view key) const;

  // Records "missing required key" unless `key` is present (or this mapping is itself in
  // error); returns whether it is present.
  bool require(std::string_view key);

  // Converts the (expanded) scalar at `key` with `parse` (text -> std::optional<T>) into `out`;
  // leaves `out` alone when the key is absent, and records an error when it cannot be parsed.
  template <typename T, typename Parse>
  void read(std::string_view key, T& out, Parse parse, std::string_view expected);

  // Any scalar, as text. Its value never appears in an error message.
  void readString(std::string_view key, std::string& out);

  // The mapping nested at `key`; its path is this path + key.
  MappingReader section(std::string_view key);

  // Records `message` against `key` unless `ok`, or unless `key` already has an error.
  void check(std::string_view key, bool ok, std::string_view message);

  // For a rule between two keys: blamed on `key` when the file sets it, otherwise on `other`.
  void checkPair(std::string_view key, std::string_view other, bool ok, std::string_view message);

  // Records an error against `key` (see markOf for where it points).
  void fail(std::string_view key, std::string message);

  // Reports every key that no find/read asked for as "unknown key".
  void finish();

 private:
  struct Entry {
    std::string key;
    YAML::Mark key_mark;
    YAML::Node value;
    bool known = false;
    bool failed = false;
  };

  const Entry* findEntry(std::string_view key) const;
  Entry* findEntry(std::string_view key);

  LoadContext& context_;
  std::string path_;
  YAML::Mark mark_;
  bool not_a_mapping_ = false;
  std::vector<Entry> entries_;                             // in document order
  std::map<std::string, std::size_t, std::less<>> index_;  // key -> entries_ position
};

template <typename T, typename Parse>
void MappingReader::read(std::string_view key, T& out, Parse parse, std::string_view expected) {
  if (find(key) == nullptr) return;
  Entry& entry = *findEntry(key);
  const std::string path = pathOf(key);
  std::optional<std::string> text =
      context_.expandedScalar(entry.value, markOf(key), path, expected);
  if (!text) {
    entry.failed = true;
    return;
  }
  auto value = parse(*text);
  if (!value) {
    entry.failed = true;
    context_.addError(path, markOf(key),
                      "expected " + std::string(expected) + ", got " + quoteValue(*text));
    return;
  }
  out = *std::move(value);
}

}  // namespace bulwark::config
