// The client's table of requests without an answer, by request id (see
// docs/protocol.md: ids are the client's, unique per connection, never 0).
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace kvs::protocol {

// Requests without an answer, by id. Ids are handed out in sequence and most
// answers come soon, so a request lives in the ring slot `id & mask`: no
// hashing, no allocation, and the requests in flight sit side by side. An
// older request still waiting when its slot comes round again (a slow write
// among fast ones) moves to a map, so the ring grows with the number of
// requests in flight, not with the spread of their ids.
template <class T>
class RequestTable {
 public:
  static constexpr size_t kInitialSlots = 64;
  static constexpr size_t kMaxSlots = 1 << 16;

  // `id` must not be in the table.
  void insert(uint64_t id, const T& v) {
    if (ring_.empty()) ring_.resize(kInitialSlots);
    Slot* s = &slot(id);
    if (s->id != 0 && in_ring_ >= ring_.size() / 2 && ring_.size() < kMaxSlots) {
      grow();
      s = &slot(id);
    }
    if (s->id != 0) {
      old_.emplace(s->id, s->v);
      --in_ring_;
    }
    *s = Slot{id, v};
    ++in_ring_;
  }
  // Removes the request `id` into *out; false if there is none.
  bool take(uint64_t id, T* out) {
    if (id == 0 || ring_.empty()) return false;  // 0: never a request's id
    Slot& s = slot(id);
    if (s.id == id) {
      *out = s.v;
      s.id = 0;
      --in_ring_;
      return true;
    }
    auto it = old_.find(id);
    if (it == old_.end()) return false;
    *out = it->second;
    old_.erase(it);
    return true;
  }
  void erase(uint64_t id) {
    T ignored;
    take(id, &ignored);
  }
  // Removes every request, in no particular order.
  std::vector<T> take_all() {
    std::vector<T> all;
    for (Slot& s : ring_) {
      if (s.id != 0) all.push_back(s.v);
      s.id = 0;
    }
    for (auto& [id, v] : old_) all.push_back(v);
    old_.clear();
    in_ring_ = 0;
    return all;
  }
  size_t size() const { return in_ring_ + old_.size(); }
  size_t slots() const { return ring_.size(); }  // the ring's, not the map's

 private:
  struct Slot {
    uint64_t id = 0;  // 0: free
    T v;
  };

  Slot& slot(uint64_t id) { return ring_[id & (ring_.size() - 1)]; }
  // Doubles the ring. Two requests that did not share a slot before cannot
  // share one after: equal modulo 2n implies equal modulo n.
  void grow() {
    std::vector<Slot> bigger(ring_.size() * 2);
    for (const Slot& s : ring_) {
      if (s.id != 0) bigger[s.id & (bigger.size() - 1)] = s;
    }
    ring_.swap(bigger);
  }

  std::vector<Slot> ring_;  // a power of two slots
  size_t in_ring_ = 0;
  std::unordered_map<uint64_t, T> old_;
};

}  // namespace kvs::protocol
