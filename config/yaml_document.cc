#include "config/yaml_document.h"

#include <cctype>
#include <exception>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

#include <yaml-cpp/eventhandler.h>

namespace bulwark::config {
namespace {

// Thrown from the event handler to stop the parser at the first thing proxy.yaml refuses.
struct Refusal {
  YAML::Mark mark;
  std::string message;
};

// Watches the parser's events for what proxy.yaml refuses, and notes where each document and
// its first node start.
class StructureCheck final : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override {
    start_ = mark;
    content_.reset();
    depth_ = 0;
  }
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                const std::string&) override {
    node(mark);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    open(mark);
  }
  void OnSequenceEnd() override { --depth_; }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    open(mark);
  }
  void OnMapEnd() override { --depth_; }

  void OnAnchor(const YAML::Mark& mark, const std::string&) override { refuseAnchors(mark); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { refuseAnchors(mark); }

  const YAML::Mark& documentStart() const { return start_; }
  // Where the current document's first node is; where the document starts if it has none.
  YAML::Mark contentStart() const { return content_.value_or(start_); }

 private:
  void node(const YAML::Mark& mark) {
    if (!content_) content_ = mark;
  }

  // Throwing here, at the opening of a collection, keeps yaml-cpp's own recursion (one level
  // per collection) from going any deeper.
  void open(const YAML::Mark& mark) {
    node(mark);
    if (++depth_ > kMaxYamlDepth) {
      throw Refusal{mark, "nested deeper than " + std::to_string(kMaxYamlDepth) + " levels"};
    }
  }

  [[noreturn]] static void refuseAnchors(const YAML::Mark& mark) {
    throw Refusal{mark,
                  "YAML anchors (&name) and aliases (*name) are not supported; "
                  "write the value out in full"};
  }

  int depth_ = 0;
  YAML::Mark start_;
  std::optional<YAML::Mark> content_;
};

ConfigError errorAt(const YAML::Mark& mark, std::string message) {
  // yaml-cpp counts from 0 and uses -1 for "unknown"; ConfigError counts from 1 and uses 0.
  auto oneBased = [](int position) { return position < 0 ? 0 : position + 1; };
  return ConfigError{"", oneBased(mark.line), oneBased(mark.column), std::move(message)};
}

// yaml-cpp gives a token it cannot place (a "," at the top level) an empty document without
// consuming it; the message names the character when it can.
std::string strayToken(std::string_view text, const YAML::Mark& mark) {
  const auto pos = static_cast<std::size_t>(mark.pos);
  if (mark.pos >= 0 && pos < text.size() && std::ispunct(static_cast<unsigned char>(text[pos]))) {
    return "invalid YAML: unexpected \"" + std::string(1, text[pos]) + "\"";
  }
  return "invalid YAML: unexpected content";
}

// Parses without building nodes, stopping at the first thing refused; the third document is
// as far as it needs to look (see the loop).
std::optional<ConfigError> checkStructure(std::string_view text) {
  std::istringstream in{std::string(text)};
  YAML::Parser parser(in);
  StructureCheck check;
  int documents = 0;
  YAML::Mark previous_start;
  YAML::Mark second_content;
  while (documents < 3 && parser.HandleNextDocument(check)) {
    ++documents;
    // A document that consumed nothing is followed by another starting at the same place,
    // forever (YAML::LoadAll then never returns).
    if (documents > 1 && check.documentStart().pos == previous_start.pos) {
      return errorAt(previous_start, strayToken(text, previous_start));
    }
    if (documents == 2) second_content = check.contentStart();
    previous_start = check.documentStart();
  }
  if (documents > 1) {
    return errorAt(second_content, "expected one YAML document; a second one starts here");
  }
  return std::nullopt;
}

}  // namespace

YamlDocument parseYamlDocument(std::string_view text) {
  YamlDocument out;
  try {
    out.problem = checkStructure(text);
    if (!out.problem) out.root = YAML::Load(std::string(text));
  } catch (const Refusal& refusal) {
    out.problem = errorAt(refusal.mark, refusal.message);
  } catch (const YAML::Exception& error) {
    out.problem = errorAt(error.mark, "invalid YAML: " + error.msg);
  } catch (const std::exception& error) {
    out.problem = ConfigError{"", 0, 0, std::string("invalid YAML: ") + error.what()};
  }
  return out;
}

}  // namespace bulwark::config
