// What a thread has looked up by name in a shared table whose entries are never removed
// while their owner lives: (owner, key) -> value, kept per thread, so the table and its lock
// are consulted once per key and thread. Owners are told apart by a process-unique id
// (newMemoOwner()) rather than their address, which a later owner may reuse. A thread keeps
// at most `Capacity` entries per memo; past that it forgets them all and starts again.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bulwark::support {

inline std::uint64_t newMemoOwner() {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

// `Tag` keeps memos of the same value type apart.
template <typename Tag, typename Value, std::size_t Capacity = 64>
class ThreadMemo {
 public:
  // The remembered value, or nullptr. The pointer is good until this thread's next remember().
  static const Value* find(std::uint64_t owner, std::string_view key) {
    for (const Entry& e : entries()) {
      if (e.owner == owner && e.key == key) return &e.value;
    }
    return nullptr;
  }

  static void remember(std::uint64_t owner, std::string_view key, Value value) {
    std::vector<Entry>& list = entries();
    if (list.size() >= Capacity) list.clear();
    list.push_back({owner, std::string(key), value});
  }

 private:
  struct Entry {
    std::uint64_t owner;
    std::string key;
    Value value;
  };
  static std::vector<Entry>& entries() {
    thread_local std::vector<Entry> list;
    return list;
  }
};

}  // namespace bulwark::support
