#include "config/mapping_reader.h"

#include "config/units.h"

namespace bulwark::config {
namespace {

constexpr std::size_t kMaxQuotedLength = 60;

// yaml-cpp counts from 0 and uses -1 for "unknown"; ConfigError counts from 1 and uses 0.
int oneBased(int position) {
  return position < 0 ? 0 : position + 1;
}

}  // namespace

void LoadContext::addError(std::string path, const YAML::Mark& mark, std::string message) {
  for (const std::string& secret : from_environment_) {
    if (secret.size() < 3) continue;  // too short to be a secret, too common to redact
    static constexpr std::string_view kRedacted = "<value from the environment>";
    for (std::size_t at = message.find(secret); at != std::string::npos;
         at = message.find(secret, at + kRedacted.size())) {
      message.replace(at, secret.size(), kRedacted);
    }
  }
  errors_.push_back(
      ConfigError{std::move(path), oneBased(mark.line), oneBased(mark.column), std::move(message)});
}

std::optional<std::string> LoadContext::expandedScalar(const YAML::Node& value,
                                                       const YAML::Mark& mark,
                                                       const std::string& path,
                                                       std::string_view expected) {
  if (!value.IsScalar()) {
    addError(path, mark, "expected " + std::string(expected) + ", got " + describeNode(value));
    return std::nullopt;
  }
  std::string missing;
  std::optional<std::string> expanded = expandEnv(value.Scalar(), env_, &missing);
  if (expanded) {
    if (*expanded != value.Scalar()) from_environment_.push_back(*expanded);
    return expanded;
  }
  if (missing.empty()) {
    addError(path, mark, "malformed ${...} reference (write $$ for a literal $)");
  } else {
    addError(path, mark,
             "environment variable " + missing + " is not set (write ${" + missing +
                 ":-default} to give it a default)");
  }
  return std::nullopt;
}

std::string describeNode(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Scalar:
      return "a scalar";
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return "an empty value";
}

std::string quoteValue(std::string_view text) {
  std::string out = "\"";
  for (char c : text.substr(0, kMaxQuotedLength)) {
    out += static_cast<unsigned char>(c) < 0x20 ? '?' : c;
  }
  if (text.size() > kMaxQuotedLength) out += "...";
  return out + "\"";
}

MappingReader::MappingReader(LoadContext& context, const YAML::Node* node, const YAML::Mark& mark,
                             std::string path)
    : context_(context), path_(std::move(path)), mark_(mark) {
  if (node == nullptr || node->IsNull()) return;
  if (!node->IsMap()) {
    not_a_mapping_ = true;
    context_.addError(path_, mark_, "expected a mapping, got " + describeNode(*node));
    return;
  }
  for (const auto& item : *node) {
    const YAML::Node& key = item.first;
    if (!key.IsScalar()) {
      context_.addError(path_, key.Mark(), "keys must be plain strings, got " + describeNode(key));
      continue;
    }
    if (!index_.emplace(key.Scalar(), entries_.size()).second) {
      context_.addError(pathOf(key.Scalar()), key.Mark(), "duplicate key");
      continue;
    }
    entries_.push_back(Entry{key.Scalar(), key.Mark(), item.second});
  }
}

std::string MappingReader::pathOf(std::string_view key) const {
  return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
}

std::vector<std::string> MappingReader::keys() const {
  std::vector<std::string> keys;
  keys.reserve(entries_.size());
  for (const Entry& entry : entries_) keys.push_back(entry.key);
  return keys;
}

const YAML::Node* MappingReader::find(std::string_view key) {
  Entry* entry = findEntry(key);
  if (entry == nullptr) return nullptr;
  entry->known = true;
  return &entry->value;
}

YAML::Mark MappingReader::markOf(std::string_view key) const {
  const Entry* entry = findEntry(key);
  if (entry == nullptr) return mark_;
  // An empty value has no position of its own (yaml-cpp points at the next token).
  return entry->value.IsNull() ? entry->key_mark : entry->value.Mark();
}

bool MappingReader::require(std::string_view key) {
  if (has(key)) return true;
  if (not_a_mapping_) return false;
  context_.addError(pathOf(key), mark_, "missing required key");
  return false;
}

void MappingReader::readString(std::string_view key, std::string& out) {
  read(
      key, out, [](std::string_view text) { return std::optional<std::string>(text); }, "a string");
}

MappingReader MappingReader::section(std::string_view key) {
  const YAML::Node* node = find(key);
  if (node != nullptr && !node->IsNull() && !node->IsMap()) findEntry(key)->failed = true;
  return MappingReader(context_, node, markOf(key), pathOf(key));
}

void MappingReader::check(std::string_view key, bool ok, std::string_view message) {
  if (ok) return;
  const Entry* entry = findEntry(key);
  if (entry != nullptr && entry->failed) return;
  fail(key, std::string(message));
}

void MappingReader::checkPair(std::string_view key, std::string_view other, bool ok,
                              std::string_view message) {
  if (ok) return;
  for (std::string_view name : {key, other}) {
    const Entry* entry = findEntry(name);
    if (entry != nullptr && entry->failed) return;
  }
  fail(has(key) || !has(other) ? key : other, std::string(message));
}

void MappingReader::fail(std::string_view key, std::string message) {
  if (Entry* entry = findEntry(key)) entry->failed = true;
  context_.addError(pathOf(key), markOf(key), std::move(message));
}

void MappingReader::finish() {
  for (const Entry& entry : entries_) {
    if (!entry.known) context_.addError(pathOf(entry.key), entry.key_mark, "unknown key");
  }
}

// An index rather than a scan: a mapping with many keys (a file may hold 100k) stays linear.
const MappingReader::Entry* MappingReader::findEntry(std::string_view key) const {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

MappingReader::Entry* MappingReader::findEntry(std::string_view key) {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

}  // namespace bulwark::config
