// The live configuration, swapped whole on reload. Readers take a snapshot (shared_ptr)
// per request; thread-safe.
#pragma once

#include <atomic>
#include <memory>

#include "config/config.h"

namespace bulwark {

class ConfigStore {
 public:
  explicit ConfigStore(config::Config initial)
      : current_(std::make_shared<const config::Config>(std::move(initial))) {}

  std::shared_ptr<const config::Config> current() const { return current_.load(); }
  void replace(config::Config next) {
    current_.store(std::make_shared<const config::Config>(std::move(next)));
  }

 private:
  std::atomic<std::shared_ptr<const config::Config>> current_;
};

}  // namespace bulwark
