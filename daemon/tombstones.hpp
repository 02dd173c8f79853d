// The tombstones a table with several partitions remembers. A key whose
// records sit in two partitions (partitions were added to the topic, or a
// producer chose partitions itself) keeps the record that wins by
// format::replaces, whatever order the partitions are applied in; when that
// record is a tombstone the table holds nothing to compare a later-arriving
// record with, so the tombstone's origin is kept here. Bounded: the oldest
// are forgotten first (docs/format.md, "Keys in two partitions", says what
// that means). kvsd's memory only: a restart starts with none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <unordered_map>

#include "format/layout.hpp"

namespace kvs::daemon {

class Tombstones {
 public:
  explicit Tombstones(size_t limit = kDefaultLimit) : limit_(limit) {}

  // At most this many per table (about 80 bytes each).
  static constexpr size_t kDefaultLimit = size_t{1} << 18;

  // The key's latest record is a tombstone from `o` (kept if it wins over
  // the one remembered).
  void remember(uint64_t key_hash, format::Origin o) {
    auto [it, added] = map_.try_emplace(key_hash, Entry{o, seq_});
    if (!added) {
      if (!format::replaces(o, it->second.origin)) return;
      it->second = Entry{o, seq_};
    }
    order_.push_back({key_hash, seq_++});
    while (map_.size() > limit_ || order_.size() > 2 * limit_) evict_oldest();
  }
  // True if a remembered tombstone of the key wins over a record from `o`.
  bool wins_over(uint64_t key_hash, format::Origin o) const {
    if (map_.empty()) return false;
    auto it = map_.find(key_hash);
    return it != map_.end() && !format::replaces(o, it->second.origin);
  }
  // A record of the key replaced the tombstone.
  void forget(uint64_t key_hash) {
    if (!map_.empty()) map_.erase(key_hash);
  }
  void clear() {
    map_.clear();
    order_.clear();
  }
  size_t size() const { return map_.size(); }
  uint64_t forgotten() const { return forgotten_; }  // evicted for the limit

 private:
  struct Entry {
    format::Origin origin;
    uint64_t seq;
  };
  void evict_oldest() {
    const auto [hash, seq] = order_.front();
    order_.pop_front();
    auto it = map_.find(hash);
    // Older queue entries of a key remembered again are stale.
    if (it != map_.end() && it->second.seq == seq) {
      map_.erase(it);
      ++forgotten_;
    }
  }

  size_t limit_;
  uint64_t seq_ = 0;
  uint64_t forgotten_ = 0;
  std::unordered_map<uint64_t, Entry> map_;
  std::deque<std::pair<uint64_t, uint64_t>> order_;  // (hash, seq), oldest first
};

}  // namespace kvs::daemon
