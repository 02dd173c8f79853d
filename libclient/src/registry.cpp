#include "src/registry.hpp"

#include <string>

namespace kvs {
using namespace format;

uint64_t registry_bytes(uint32_t slot_count) {
  return sizeof(RegistryHeader) + uint64_t{slot_count} * sizeof(ReaderSlot);
}

void init_registry(uint8_t* base, uint32_t slot_count) {
  auto* h = reinterpret_cast<RegistryHeader*>(base);
  h->magic = kRegistryMagic;
  h->layout_version = kLayoutVersion;
  h->slot_count = slot_count;
  h->fingerprint = layout_fingerprint();
}

Result<RegistryView> RegistryView::attach(const shm::Mapping& m) {
  const std::string path = shm::path_of(m.name);
  if (m.size() < sizeof(RegistryHeader)) {
    return make_error(Errc::kCorrupt, path + " is too small to be a reader registry");
  }
  const auto* h = reinterpret_cast<const RegistryHeader*>(m.data());
  if (h->magic != kRegistryMagic) {
    return make_error(Errc::kCorrupt, path + " is not a kvs reader registry (bad magic)");
  }
  if (h->layout_version != kLayoutVersion || h->fingerprint != layout_fingerprint()) {
    return make_error(Errc::kLayoutMismatch,
                      path + " has layout " + std::to_string(h->layout_version) +
                          ", this libkvs reads " + std::to_string(kLayoutVersion) +
                          "; upgrade libkvs or kvsd so they match");
  }
  if (h->slot_count == 0 || registry_bytes(h->slot_count) > m.size()) {
    return make_error(Errc::kCorrupt, path + " claims " + std::to_string(h->slot_count) +
                                          " slots but holds " + std::to_string(m.size()) +
                                          " bytes");
  }
  RegistryView v;
  v.slots_ = reinterpret_cast<ReaderSlot*>(m.data() + sizeof(RegistryHeader));
  v.count_ = h->slot_count;
  return v;
}

ReaderSlot* RegistryView::claim(uint64_t owner, uint32_t hint) const {
  for (uint32_t n = 0; n < count_; ++n) {
    ReaderSlot& s = slots_[(hint + n) % count_];
    uint64_t expected = 0;
    if (s.owner.load(std::memory_order_relaxed) == 0 &&
        s.owner.compare_exchange_strong(expected, owner, std::memory_order_acq_rel)) {
      s.epoch.store(0, std::memory_order_release);
      return &s;
    }
  }
  return nullptr;
}

void RegistryView::release(ReaderSlot* s) {
  s->epoch.store(0, std::memory_order_release);
  s->owner.store(0, std::memory_order_release);
}

}  // namespace kvs
