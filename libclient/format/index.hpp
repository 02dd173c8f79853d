// Lookups in a mapped table, shared by the reader and the writer.
//
// Every load of a slot word is seq_cst: on x86 that is a plain load, and it
// makes the reader's side of the epoch handshake (announce, then load slots)
// a formal Dekker pair with the writer's (unpublish, fence, scan readers).
// A probe never reads outside [arena_begin, arena_end) and visits each group
// at most once, so a corrupt or foreign segment yields kCorrupt, not a crash
// or an endless loop (DESIGN.md invariant 5).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "format/layout.hpp"
#include "format/sanitizers.hpp"

namespace kvs::format {

struct EntryRef {
  const uint8_t* key;
  const uint8_t* value;
  uint32_t key_len;
  uint32_t value_len;
};

struct SlotRef {
  uint64_t group;  // index of the group holding the slot
  int slot;        // 0..kSlotsPerGroup-1
  uint64_t word;   // the slot word that was read
};

enum class Lookup { kFound, kAbsent, kCorrupt };

// Bit i set: slot i of the group may hold `tag` (a hint: the caller loads
// the slot word and checks it, as an empty slot has tag 0 and a slot may
// change meanwhile). Without branches, so a batch of probes pays no
// misprediction for where in its group each key sits. With SSE2 the 7 tags
// are compared in 16-bit lanes; these vector loads of the slot words are
// only a filter (x86 loads each aligned word whole), and every word that is
// used is loaded again as an atomic. ThreadSanitizer builds take the scalar
// loop of atomic loads, which needs no such argument.
inline uint32_t tag_candidates(const Group& grp, uint16_t tag) {
#if defined(__SSE2__) && !defined(KVS_TSAN)
  const auto* p = reinterpret_cast<const __m128i*>(&grp);
  const __m128i t = _mm_set1_epi16(static_cast<short>(tag));
  const __m128i a = _mm_packs_epi16(_mm_cmpeq_epi16(_mm_load_si128(p), t),
                                    _mm_cmpeq_epi16(_mm_load_si128(p + 1), t));
  const __m128i b = _mm_packs_epi16(_mm_cmpeq_epi16(_mm_load_si128(p + 2), t),
                                    _mm_cmpeq_epi16(_mm_load_si128(p + 3), t));
  // A word's tag is its 16-bit lane 3, so after the packs the slots' results
  // are bytes 3, 7, 11, 15 of a (slots 0-3) and of b (slots 4-6, then the
  // control word). Gather bits 3, 7, ..., 27 into bits 0..6.
  const uint32_t bytes = static_cast<uint32_t>(_mm_movemask_epi8(a)) |
                         (static_cast<uint32_t>(_mm_movemask_epi8(b)) << 16);
  uint32_t m = (bytes >> 3) & 0x1111111u;  // slot i at bit 4i
  m |= m >> 3;                             // slots in pairs: bits 0-1, 8-9, ...
  m |= m >> 6;                             // in fours: bits 0-3, 16-19
  return (m & 0xFu) | ((m >> 12) & 0x70u);
#else
  uint32_t m = 0;
  for (int i = 0; i < kSlotsPerGroup; ++i) {
    m |= static_cast<uint32_t>(slot_tag(grp.slots[i].load(std::memory_order_seq_cst)) == tag) << i;
  }
  return m;
#endif
}

class TableView {
 public:
  TableView() = default;
  TableView(const uint8_t* base, const TableHeader& h)
      : base_(base),
        groups_(reinterpret_cast<const Group*>(base + h.groups_offset)),
        group_count_(h.group_count),
        arena_begin_(h.arena_offset),
        arena_end_(h.arena_offset + h.arena_bytes) {}

  uint64_t group_count() const { return group_count_; }
  const Group& group(uint64_t g) const { return groups_[g]; }
  uint64_t arena_begin() const { return arena_begin_; }
  uint64_t arena_end() const { return arena_end_; }
  const uint8_t* base() const { return base_; }

  // Decodes the block at `offset`; false if it does not lie inside the arena.
  bool entry_at(uint64_t offset, EntryRef* out) const {
    if (offset < arena_begin_ || offset > arena_end_ - sizeof(BlockHeader)) return false;
    BlockHeader h;
    std::memcpy(&h, base_ + offset, sizeof h);
    if (uint64_t{h.key_len} + h.value_len > arena_end_ - offset - sizeof(BlockHeader)) {
      return false;
    }
    out->key = base_ + offset + sizeof(BlockHeader);
    out->key_len = h.key_len;
    out->value = out->key + h.key_len;
    out->value_len = h.value_len;
    return true;
  }

  // The origin recorded with the entry at `offset` (one entry_at accepted).
  Origin origin_at(uint64_t offset) const {
    BlockHeader h;
    std::memcpy(&h, base_ + offset, sizeof h);
    return Origin{h.timestamp_ms, h.partition};
  }

  Lookup find(const void* key, size_t key_len, uint64_t hash, EntryRef* out,
              SlotRef* where = nullptr) const {
    const uint16_t tag = hash_tag(hash);
    uint64_t g = home_group(hash, group_count_);
    for (uint64_t probes = 0; probes < group_count_; ++probes) {
      const Group& grp = groups_[g];
      for (int i = 0; i < kSlotsPerGroup; ++i) {
        const uint64_t w = grp.slots[i].load(std::memory_order_seq_cst);
        if (w == 0 || slot_tag(w) != tag) continue;
        if (!entry_at(slot_offset(w), out)) return Lookup::kCorrupt;
        if (out->key_len == key_len && std::memcmp(out->key, key, key_len) == 0) {
          if (where) *where = SlotRef{g, i, w};
          return Lookup::kFound;
        }
      }
      if (grp.overflow.load(std::memory_order_seq_cst) == 0) return Lookup::kAbsent;
      g = (g + 1 == group_count_) ? 0 : g + 1;
    }
    return Lookup::kCorrupt;  // every group claims overflow: not a table we wrote
  }

  // Batched lookups in passes, so that the misses of all keys overlap: every
  // key's home group is prefetched, then its candidate entry (or, when the
  // group overflowed without a match, the next group, up to a limit), then
  // the keys are compared. A key that none of this settles (a tag
  // collision, a long overflow chain) goes through find().
  uint64_t home(uint64_t hash) const { return home_group(hash, group_count_); }
  uint64_t next_group(uint64_t g) const { return g + 1 == group_count_ ? 0 : g + 1; }
  void prefetch_group_at(uint64_t g) const { __builtin_prefetch(&groups_[g]); }
  void prefetch_group(uint64_t hash) const { prefetch_group_at(home(hash)); }
  bool overflowed(uint64_t g) const {
    return groups_[g].overflow.load(std::memory_order_seq_cst) != 0;
  }

  // The first slot word of group g whose tag is the hash's, or 0 if there is
  // none. Prefetches that entry's first two lines (header, key and the
  // start of the value).
  uint64_t match_in(uint64_t g, uint64_t hash) const {
    const Group& grp = groups_[g];
    const uint16_t tag = hash_tag(hash);
    for (uint32_t m = tag_candidates(grp, tag); m != 0; m &= m - 1) {
      const uint64_t w = grp.slots[__builtin_ctz(m)].load(std::memory_order_seq_cst);
      if (w != 0 && slot_tag(w) == tag) {
        const uint64_t off = slot_offset(w);
        if (off >= arena_begin_ && off < arena_end_ - kCacheLine) {
          __builtin_prefetch(base_ + off);
          __builtin_prefetch(base_ + off + kCacheLine);
        }
        return w;
      }
    }
    return 0;
  }
  uint64_t first_match(uint64_t hash) const { return match_in(home(hash), hash); }

  // Finishes a lookup whose candidate slot word is `candidate`: found if its
  // entry holds the key, else the whole probe of find().
  Lookup resolve_candidate(const void* key, size_t key_len, uint64_t hash, uint64_t candidate,
                           EntryRef* out) const {
    if (!entry_at(slot_offset(candidate), out)) return Lookup::kCorrupt;
    if (out->key_len == key_len && std::memcmp(out->key, key, key_len) == 0) {
      return Lookup::kFound;
    }
    return find(key, key_len, hash, out);
  }

 private:
  const uint8_t* base_ = nullptr;
  const Group* groups_ = nullptr;
  uint64_t group_count_ = 0;
  uint64_t arena_begin_ = 0;
  uint64_t arena_end_ = 0;
};

// Checks an attached header against the size of its mapping. Returns an empty
// string when the header is ours and self-consistent, else what is wrong.
// `what` names the segment in messages.
enum class HeaderCheck { kOk, kNotOurs, kLayout, kCorrupt };

struct HeaderVerdict {
  HeaderCheck check;
  uint32_t found_version;
};

inline HeaderVerdict check_header(const uint8_t* base, uint64_t mapped_bytes) {
  if (mapped_bytes < sizeof(TableHeader)) return {HeaderCheck::kCorrupt, 0};
  const auto& h = *reinterpret_cast<const TableHeader*>(base);
  if (h.magic != kTableMagic) return {HeaderCheck::kNotOurs, 0};
  if (h.layout_version != kLayoutVersion) return {HeaderCheck::kLayout, h.layout_version};
  if (h.fingerprint != layout_fingerprint() || h.header_bytes != sizeof(TableHeader)) {
    return {HeaderCheck::kLayout, h.layout_version};
  }
  // Geometry must be within the writer's bounds (so that computing it cannot
  // overflow) and describe exactly this mapping.
  if (!geometry_in_bounds(h.capacity, h.partition_capacity, h.arena_bytes, h.log_entries)) {
    return {HeaderCheck::kCorrupt, h.layout_version};
  }
  const Geometry g = geometry(h.capacity, h.partition_capacity, h.arena_bytes, h.log_entries);
  if (h.segment_bytes != mapped_bytes || g.segment_bytes != h.segment_bytes ||
      g.groups_offset != h.groups_offset || g.group_count != h.group_count ||
      g.arena_offset != h.arena_offset || g.partitions_offset != h.partitions_offset ||
      g.log_offset != h.log_offset || h.group_count < 2) {
    return {HeaderCheck::kCorrupt, h.layout_version};
  }
  return {HeaderCheck::kOk, h.layout_version};
}

}  // namespace kvs::format
