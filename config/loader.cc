#include "config/loader.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "config/config_reader.h"
#include "config/mapping_reader.h"
#include "config/yaml_document.h"

namespace bulwark::config {
namespace {

// Far above any real proxy.yaml; stops `--check-config /dev/zero` from eating memory.
constexpr std::size_t kMaxConfigBytes = std::size_t{1} << 20;

LoadResult failure(std::string message, int line = 0, int column = 0) {
  LoadResult result;
  result.errors.push_back(ConfigError{"", line, column, std::move(message)});
  return result;
}

// Reports errors in the order of the file; those without a position go last.
void sortByPosition(std::vector<ConfigError>& errors) {
  auto position = [](const ConfigError& error) {
    return std::pair(error.line == 0 ? INT_MAX : error.line, error.column);
  };
  std::stable_sort(errors.begin(), errors.end(), [&](const ConfigError& a, const ConfigError& b) {
    return position(a) < position(b);
  });
}

struct FileText {
  std::string text;
  std::string problem;  // non-empty when the file could not be read
};

FileText readFile(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) {
    return {"", "cannot read " + path + ": is a directory"};
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return {"", "cannot open " + path + ": " + std::generic_category().message(errno)};
  }
  FileText file;
  std::array<char, std::size_t{64} << 10> chunk{};
  while (in && file.text.size() <= kMaxConfigBytes) {
    in.read(chunk.data(), chunk.size());
    file.text.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
  }
  if (in.bad()) return {"", "cannot read " + path};
  if (file.text.size() > kMaxConfigBytes) {
    return {"",
            "cannot read " + path + ": larger than " + std::to_string(kMaxConfigBytes) + " bytes"};
  }
  return file;
}

}  // namespace

std::string ConfigError::toString() const {
  std::string out;
  if (line > 0) out = "line " + std::to_string(line) + ", column " + std::to_string(column) + ": ";
  if (!path.empty()) out += path + ": ";
  return out + message;
}

EnvLookup processEnv() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

LoadResult loadConfigString(std::string_view yaml, const EnvLookup& env) {
  YamlDocument document = parseYamlDocument(yaml);
  if (document.problem) {
    LoadResult result;
    result.errors.push_back(*std::move(document.problem));
    return result;
  }

  try {
    LoadContext context(env);
    Config config = readConfig(context, document.root);
    LoadResult result;
    result.errors = context.takeErrors();
    sortByPosition(result.errors);
    if (result.errors.empty()) result.config = std::move(config);
    return result;
  } catch (const std::exception& error) {
    // Reading is written not to throw; this keeps a surprise from reaching the caller.
    return failure(std::string("internal error while reading the config: ") + error.what());
  } catch (...) {
    return failure("internal error while reading the config");
  }
}

LoadResult loadConfigFile(const std::string& path, const EnvLookup& env) {
  FileText file;
  try {
    file = readFile(path);
  } catch (const std::exception& error) {
    return failure("cannot read " + path + ": " + error.what());
  }
  if (!file.problem.empty()) return failure(std::move(file.problem));
  return loadConfigString(file.text, env);
}

}  // namespace bulwark::config
