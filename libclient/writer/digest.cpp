// TableWriter, the table's digest (format/layout.hpp, line 6 of the header;
// docs/format.md, "The digest"): the sum of entry_digest over the live
// entries, moved with every slot store, so that nothing ever scans the
// table to know it.
//
// Invariants enforced here:
// - `digest` equals the sum over the slots as they are, except inside the
//   bracket of one slot store (`digest_slot` != 0), whose outcome the slot
//   itself tells: it holds `digest_word` only once the store was made.
// - Every store of the bracket is a release store, so none of them moves
//   across another, whichever instruction the writer dies at.
#include "writer/fault_points.hpp"
#include "writer/table_writer.hpp"

namespace kvs {
using namespace format;

void TableWriter::store_slot(uint64_t group, int slot, uint64_t word, uint64_t digest_delta) {
  TableHeader& h = *header_;
  // A record's first store: odd until its offset is published.
  const uint32_t seq = h.digest_seq.load(std::memory_order_relaxed);
  if (applying_ && (seq & 1) == 0) h.digest_seq.store(seq + 1, std::memory_order_release);
  const uint64_t next = h.digest.load(std::memory_order_relaxed) + digest_delta;
  h.digest_next.store(next, std::memory_order_release);
  h.digest_word.store(word, std::memory_order_release);
  h.digest_slot.store(group * kSlotsPerGroup + static_cast<uint64_t>(slot) + 1,
                      std::memory_order_release);
  fault::at(fault::Point::kDigestBracketed);
  // release: the entry is complete before a reader can load its slot.
  groups_[group].slots[slot].store(word, std::memory_order_release);
  fault::at(fault::Point::kSlotStored);
  h.digest.store(next, std::memory_order_release);
  h.digest_slot.store(0, std::memory_order_release);
}

uint64_t TableWriter::block_digest(uint64_t offset) const {
  BlockHeader b;
  std::memcpy(&b, base_ + offset, sizeof b);
  return entry_digest(base_ + offset + sizeof b, b.key_len, b.value_len);
}

// The bracket's slot holds `digest_word` if the store was made (the word
// names a block carved for it, or is 0 for an erase of a live slot, so the
// slot held something else before). A bracket out of the index's range is
// not ours to trust: the digest is counted again from the slots.
void TableWriter::recover_digest() {
  TableHeader& h = *header_;
  const uint64_t at = h.digest_slot.load(std::memory_order_acquire);
  if (at != 0) {
    const uint64_t i = at - 1;
    if (i / kSlotsPerGroup < h.group_count) {
      const uint64_t now =
          groups_[i / kSlotsPerGroup].slots[i % kSlotsPerGroup].load(std::memory_order_relaxed);
      if (now == h.digest_word.load(std::memory_order_relaxed))
        h.digest.store(h.digest_next.load(std::memory_order_relaxed), std::memory_order_release);
    } else {
      uint64_t sum = 0;
      for (uint64_t g = 0; g < h.group_count; ++g) {
        for (int s = 0; s < kSlotsPerGroup; ++s) {
          const uint64_t w = groups_[g].slots[s].load(std::memory_order_relaxed);
          EntryRef e;
          if (w != 0 && view_.entry_at(slot_offset(w), &e))
            sum += entry_digest(e.key, e.key_len, e.value_len);
        }
      }
      h.digest.store(sum, std::memory_order_release);
    }
    h.digest_slot.store(0, std::memory_order_release);
  }
  // An odd digest_seq stays odd: the dead writer stored a record whose
  // offset it did not publish. The record is applied again, and its
  // offset's publication makes the sequence even (until then readers are
  // told the digest is not paired with offsets yet).
}

}  // namespace kvs
