// The reader registry: one cache-line slot per reading thread, in which the
// thread announces the epoch it reads in (DESIGN.md invariant 4).
#pragma once

#include <cstdint>

#include "format/layout.hpp"
#include "kvs/result.hpp"
#include "src/shm.hpp"

namespace kvs {

class RegistryView {
 public:
  // Validates a mapped registry. Errors: kLayoutMismatch, kCorrupt.
  static Result<RegistryView> attach(const shm::Mapping& m);

  uint32_t slot_count() const { return count_; }
  format::ReaderSlot& slot(uint32_t i) const { return slots_[i]; }

  // Claims a free slot for `owner` (format::make_owner). nullptr if all are
  // taken. `hint` spreads concurrent claimers over the array.
  format::ReaderSlot* claim(uint64_t owner, uint32_t hint) const;
  static void release(format::ReaderSlot* s);

 private:
  format::ReaderSlot* slots_ = nullptr;
  uint32_t count_ = 0;
};

uint64_t registry_bytes(uint32_t slot_count);
void init_registry(uint8_t* base, uint32_t slot_count);

}  // namespace kvs
