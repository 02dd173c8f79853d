// The tombstones a table with several partitions remembers. A key whose
// records sit in two partitions (partitions were added to the topic, or a
// producer chose partitions itself) keeps the record that wins by
// format::replaces, whatever order the partitions are applied in; when that
// record is a tombstone the table holds nothing to compare a later-arriving
// record with, so the tombstone's origin is kept here. Bounded: the oldest
// are forgotten first (docs/format.md, "Keys in two partitions", says what
// that means). kvsd's memory only: a restart starts with none. Keys are
// told apart by a 128-bit hash: with a 64-bit one, a producer could find two
// colliding keys (about 2^32 work) and make hosts diverge.
#pragma once

#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string_view>
#include <unordered_map>

#include "format/layout.hpp"

namespace kvs::daemon {

// A key, as Tombstones tells keys apart: XXH3-128 of its bytes.
struct KeyId {
  uint64_t lo = 0, hi = 0;
  bool operator==(const KeyId&) const = default;
};
inline KeyId key_id(std::string_view key) {
  const XXH128_hash_t h = XXH3_128bits(key.data(), key.size());
  return KeyId{h.low64, h.high64};
}
struct KeyIdHash {
  size_t operator()(const KeyId& k) const { return static_cast<size_t>(k.lo ^ (k.hi * 31)); }
};

class Tombstones {
 public:
  explicit Tombstones(size_t limit = kDefaultLimit) : limit_(limit) {}

  // At most this many per table (about 100 bytes each).
  static constexpr size_t kDefaultLimit = size_t{1} << 18;

  // The key's latest record is a tombstone from `o` (kept if it wins over
  // the one remembered).
  void remember(KeyId key, format::Origin o) {
    auto [it, added] = map_.try_emplace(key, Entry{o, seq_});
    if (!added) {
      if (!format::replaces(o, it->second.origin)) return;
      it->second = Entry{o, seq_};
    }
    order_.push_back({key, seq_++});
    while (map_.size() > limit_ || order_.size() > 2 * limit_) evict_oldest();
  }
  // True if a remembered tombstone of the key wins over a record from `o`.
  bool wins_over(KeyId key, format::Origin o) const {
    if (map_.empty()) return false;
    auto it = map_.find(key);
    return it != map_.end() && !format::replaces(o, it->second.origin);
  }
  // A record of the key replaced the tombstone.
  void forget(KeyId key) {
    if (!map_.empty()) map_.erase(key);
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
    const auto [key, seq] = order_.front();
    order_.pop_front();
    auto it = map_.find(key);
    // Older queue entries of a key remembered again are stale.
    if (it != map_.end() && it->second.seq == seq) {
      map_.erase(it);
      ++forgotten_;
    }
  }

  size_t limit_;
  uint64_t seq_ = 0;
  uint64_t forgotten_ = 0;
  std::unordered_map<KeyId, Entry, KeyIdHash> map_;
  std::deque<std::pair<KeyId, uint64_t>> order_;  // (key, seq), oldest first
};

}  // namespace kvs::daemon
