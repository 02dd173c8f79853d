// Named points in the writer where a test stops it as a crash would (a
// forked child calls _exit there) or runs a reader inside the window that
// the point opens. A no-op unless a test sets the hook: one relaxed load
// and a predictable branch per point. Internal: only kvsd and tests link
// the writer.
#pragma once

#include <atomic>

namespace kvs::fault {

enum class Point {
  kPutStored,           // a put's slot word is stored
  kEraseCleared,        // an erase's slot word is cleared
  kReplacementFlagged,  // the old segment is flagged replaced, the new one not named yet
  kDigestBracketed,     // a slot store is bracketed for the digest, the slot not stored yet
  kSlotStored,          // the slot is stored, the digest not moved yet
};

using Hook = void (*)(Point);
inline std::atomic<Hook> g_hook{nullptr};

inline void at(Point p) {
  if (Hook h = g_hook.load(std::memory_order_relaxed)) [[unlikely]]
    h(p);
}

}  // namespace kvs::fault
