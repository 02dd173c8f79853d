// libkvs's watches (kvs_watch_*): a cursor into a table's change log
// (format/layout.hpp, "change log"), with a filter, that sleeps on the
// segment's futex word while nothing new is there.
//
// A watch maps segments itself (only their header and log are read, so it
// needs no reader slot): it drains the log of a segment kvsd replaced before
// it moves to the new one, and keeps its place there when the new log
// continues the old one's positions (a growth). Everything read from the log
// is checked against the entry's seqlock word and the ring's bounds: an
// entry overwritten meanwhile, or one that makes no sense, is a lost change
// to report, never a crash or a silent gap.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>

#include "format/index.hpp"
#include "format/layout.hpp"
#include "kvs/kvs.h"
#include "src/futex.hpp"
#include "src/reader_internal.hpp"
#include "src/shm.hpp"

using namespace kvs;
using namespace kvs::format;

namespace {

// As kvs_wait (reader/waits.cpp): poll while kvsd has not counted this process,
// look again now and then (detail::counted_sleep) when it has.
constexpr auto kUncountedSleep = std::chrono::milliseconds(1);
// While the table's new segment cannot be mapped yet.
constexpr auto kFollowRetry = std::chrono::milliseconds(1);

int fail(Errc code, std::string message) {
  return detail::set_last_error(static_cast<int>(code), std::move(message));
}

// A valid first entry's length and kind (read() reports anything else lost).
bool sane_first_entry(uint64_t key_len, uint64_t partition_kind, uint64_t entries) {
  const auto kind = static_cast<uint32_t>(partition_kind >> 32);
  return key_len <= uint64_t{1} << 30 && change_entries(key_len) <= entries &&
         (kind == static_cast<uint32_t>(ChangeKind::kPut) ||
          kind == static_cast<uint32_t>(ChangeKind::kErase));
}

}  // namespace

struct kvs_watch {
  // Its own, so that a watch does not depend on its kvs_table's lifetime.
  detail::SegmentSource source;    // to follow the table to its next segment
  std::shared_ptr<WaitLink> link;  // entered while the watch is open
  int filter = KVS_WATCH_ALL;
  std::string key;  // the key or prefix
  uint64_t key_hash = 0;
  // The prefix's first 16 bytes as the inline key words hold them, and
  // which bytes count: the first entry's test without a call to memcmp.
  uint64_t prefix_words[2] = {0, 0};
  uint64_t prefix_masks[2] = {0, 0};
  std::unique_ptr<shm::Mapping> seg;
  const TableHeader* header = nullptr;
  const ChangeEntry* log = nullptr;
  uint64_t entries = 0;
  uint64_t cursor = 0;       // the next position to read
  bool lost = false;         // a KVS_CHANGE_LOST to report first
  std::string key_buf;       // the last change's key
  kvs_change change{};       // the last change read
  uint64_t change_hash = 0;  // its key's hash, as the log says

  ~kvs_watch() {
    if (link) link->leave(/*watch=*/true);
  }

  // Maps the log of `m`, or none (entries 0) if it does not fit in it:
  // map_segment checked the header, but its owner could rewrite it since,
  // so the log's place is read once here and checked against the mapping.
  void use(std::unique_ptr<shm::Mapping> m) {
    seg = std::move(m);
    header = reinterpret_cast<const TableHeader*>(seg->data());
    const uint64_t n = *static_cast<const volatile uint64_t*>(&header->log_entries);
    const uint64_t off = *static_cast<const volatile uint64_t*>(&header->log_offset);
    const bool fits = n <= kMaxLogEntries && off >= sizeof(TableHeader) &&
                      off % alignof(ChangeEntry) == 0 && off <= seg->size() &&
                      n * sizeof(ChangeEntry) <= seg->size() - off;
    entries = fits ? n : 0;
    log = reinterpret_cast<const ChangeEntry*>(seg->data() + (fits ? off : 0));
  }
  uint64_t head() const { return header->log_head.load(std::memory_order_acquire); }

  // Reads the change at `cursor` into `change` and moves the cursor past
  // it: kLost if it was overwritten (or makes no sense), kFiltered if it
  // does not pass the filter (told by its first entry where possible, so
  // that most changes a narrow watch skips cost one entry and no copy).
  enum class Read { kLost, kFiltered, kChange };
  Read read();
  bool read_entry(uint64_t pos, uint64_t (&w)[8]) const;
  // Moves the cursor past the changes before `head` that their first entry
  // rules out, reading only the words that decide it (a narrow watch spends
  // most of its time here). Stops at anything else, a change that may pass
  // or an entry overwritten or that makes no sense, for read() to look at.
  void skip_ruled_out(uint64_t head);
  void set_prefix_words();
  // From the first entry alone (its hash and inline key words): false if
  // the change cannot pass the filter.
  bool may_pass(uint64_t key_len, uint64_t hash, uint64_t key0, uint64_t key1) const;
  bool passes() const;
  // The table's segment was replaced and this one's log is drained: maps
  // the new one. False while it cannot be mapped yet.
  bool follow();
  // About once a second: whether this segment lost its name with no
  // replacement flagged (deleted by hand, or by systemd's RemoveIPC=).
  bool unlinked();
  std::chrono::steady_clock::time_point next_link_check{};
};

bool kvs_watch::read_entry(uint64_t pos, uint64_t (&w)[8]) const {
  const ChangeEntry& e = log[pos % entries];
  // acquire: pairs with the release store of word 0 (change_log.cpp).
  w[0] = e.w[0].load(std::memory_order_acquire);
  if (w[0] != pos + 1) return false;
  for (int i = 1; i < 8; ++i) w[i] = e.w[i].load(std::memory_order_relaxed);
  // acquire: if a word above came from a later write of this entry, word 0
  // reads as that write's 0 (or later) below.
  std::atomic_thread_fence(std::memory_order_acquire);
  return e.w[0].load(std::memory_order_relaxed) == pos + 1;
}

void kvs_watch::set_prefix_words() {
  const size_t n = std::min<size_t>(key.size(), kChangeInlineKeyBytes);
  std::memcpy(prefix_words, key.data(), n);
  std::memset(prefix_masks, 0xff, n);
}

bool kvs_watch::may_pass(uint64_t key_len, uint64_t hash, uint64_t key0, uint64_t key1) const {
  if (filter == KVS_WATCH_KEY) return key_len == key.size() && hash == key_hash;
  if (filter != KVS_WATCH_PREFIX) return true;
  return key_len >= key.size() && (key0 & prefix_masks[0]) == prefix_words[0] &&
         (key1 & prefix_masks[1]) == prefix_words[1];
}

void kvs_watch::skip_ruled_out(uint64_t head) {
  if (filter == KVS_WATCH_ALL) return;
  uint64_t pos = cursor;
  while (pos < head) {
    const ChangeEntry& e = log[pos % entries];
    // acquire, fence, re-read: the seqlock of read_entry, on 5 of the words.
    if (e.w[0].load(std::memory_order_acquire) != pos + 1) break;
    const uint64_t hash = e.w[1].load(std::memory_order_relaxed);
    const uint64_t partition_kind = e.w[4].load(std::memory_order_relaxed);
    const uint64_t key_len = e.w[5].load(std::memory_order_relaxed);
    const uint64_t key0 = e.w[6].load(std::memory_order_relaxed);
    const uint64_t key1 = e.w[7].load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (e.w[0].load(std::memory_order_relaxed) != pos + 1 ||
        !sane_first_entry(key_len, partition_kind, entries) || may_pass(key_len, hash, key0, key1))
      break;
    // A change ends at or before the head: past it, the log makes no sense
    // (read() says so), and the loop never runs past the head.
    const uint64_t n = change_entries(key_len);
    if (n > head - pos) break;
    pos += n;
  }
  cursor = pos;
}

kvs_watch::Read kvs_watch::read() {
  const uint64_t pos = cursor;
  uint64_t w[8];
  if (!read_entry(pos, w)) return Read::kLost;
  const uint64_t key_len = w[5];
  const auto kind = static_cast<uint32_t>(w[4] >> 32);
  if (!sane_first_entry(key_len, w[4], entries)) return Read::kLost;
  const uint64_t n = change_entries(key_len);
  if (!may_pass(key_len, w[1], w[6], w[7])) {
    cursor = pos + n;
    return Read::kFiltered;
  }
  key_buf.resize(key_len);
  std::memcpy(key_buf.data(), &w[6], std::min<uint64_t>(key_len, kChangeInlineKeyBytes));
  for (uint64_t i = 1; i < n; ++i) {
    uint64_t c[8];
    if (!read_entry(pos + i, c)) return Read::kLost;
    const uint64_t from = kChangeInlineKeyBytes + (i - 1) * kChangeMoreKeyBytes;
    std::memcpy(key_buf.data() + from, &c[1], std::min(key_len - from, kChangeMoreKeyBytes));
  }
  cursor = pos + n;
  change = kvs_change{};
  change.kind = kind == static_cast<uint32_t>(ChangeKind::kPut) ? KVS_CHANGE_PUT : KVS_CHANGE_ERASE;
  change.partition = static_cast<uint32_t>(w[4]);
  change.offset = static_cast<int64_t>(w[2]);
  change.timestamp_ms = static_cast<int64_t>(w[3]);
  change.key = key_buf.data();
  change.key_len = key_len;
  change.position = pos;
  change_hash = w[1];
  return Read::kChange;
}

bool kvs_watch::passes() const {
  switch (filter) {
    case KVS_WATCH_KEY:
      return change_hash == key_hash && key_buf == key;
    case KVS_WATCH_PREFIX:
      return key_buf.compare(0, key.size(), key) == 0;
    default:
      return true;
  }
}

bool kvs_watch::unlinked() {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_link_check) return false;
  next_link_check = now + std::chrono::seconds(1);
  struct stat st {};
  return ::fstat(seg->fd(), &st) == 0 && st.st_nlink == 0;
}

bool kvs_watch::follow() {
  auto m = detail::map_segment(source);
  if (!m) return false;
  const auto* h = reinterpret_cast<const TableHeader*>((*m)->data());
  if (h->incarnation == header->incarnation) return false;  // not renamed yet
  // The new log continues this one's positions (a growth, or several) and
  // still holds the cursor: the watch keeps its place. Otherwise (a
  // rebuild, or more changes since than the new ring holds) the changes in
  // between are lost.
  const uint64_t new_head = h->log_head.load(std::memory_order_acquire);
  const bool keeps_place = h->log_entries > 0 && h->log_lineage == header->log_lineage &&
                           h->log_start <= cursor && cursor <= new_head &&
                           new_head - cursor <= h->log_entries;
  if (!keeps_place) {
    lost = true;
    cursor = new_head;
  }
  use(std::move(*m));
  return true;
}

namespace {

using clock = std::chrono::steady_clock;

// Reads what the log holds from the cursor; true with w->change set once a
// change passes the filter (or changes were lost). Stops at the head.
bool next_from_log(kvs_watch* w) {
  for (;;) {
    if (w->lost) {
      w->lost = false;
      w->key_buf.clear();
      w->change = kvs_change{};
      w->change.kind = KVS_CHANGE_LOST;
      w->change.key = w->key_buf.data();
      w->change.position = w->cursor;
      return true;
    }
    const uint64_t head = w->head();
    if (w->cursor == head) return false;
    if (w->cursor < head && head - w->cursor <= w->entries) {
      w->skip_ruled_out(head);
      if (w->cursor == head) continue;  // the head may have moved meanwhile
    }
    // Behind the ring, overwritten while read, or past the head (a log
    // that makes no sense): lost, and on from the head.
    const auto r =
        w->cursor > head || head - w->cursor > w->entries ? kvs_watch::Read::kLost : w->read();
    if (r == kvs_watch::Read::kLost) {
      w->cursor = w->head();
      w->lost = true;
      continue;
    }
    if (r == kvs_watch::Read::kChange && w->passes()) return true;
  }
}

}  // namespace

extern "C" {

int kvs_watch_open(kvs_table* table, int filter, const void* key, size_t key_len, kvs_watch** out) {
  if (table == nullptr || out == nullptr || (key == nullptr && key_len > 0))
    return fail(Errc::kInvalidArgument, "kvs_watch_open: NULL argument");
  if (filter != KVS_WATCH_ALL && filter != KVS_WATCH_KEY && filter != KVS_WATCH_PREFIX)
    return fail(Errc::kInvalidArgument,
                "kvs_watch_open: filter " + std::to_string(filter) +
                    " is none of KVS_WATCH_ALL, KVS_WATCH_KEY, KVS_WATCH_PREFIX");
  *out = nullptr;
  try {
    auto m = detail::map_segment(detail::segment_source(table));
    if (!m) return fail(m.error().code, m.error().message);
    auto w = std::make_unique<kvs_watch>();
    w->use(std::move(*m));
    if (w->entries == 0) {
      return fail(Errc::kUnsupported,
                  shm::path_of(w->seg->name) +
                      " has no change log: set change_log_entries in the table's section of "
                      "kvsd.toml (it takes effect with the table's next segment)");
    }
    w->source = detail::segment_source(table);
    w->filter = filter;
    if (filter != KVS_WATCH_ALL) w->key.assign(static_cast<const char*>(key), key_len);
    w->key_hash = hash_key(w->key.data(), w->key.size());
    w->set_prefix_words();
    w->cursor = w->head();
    // kvsd wakes this process after each batch while the watch is open.
    w->link = detail::wait_link(table);
    w->link->enter(/*watch=*/true);
    *out = w.release();
    return KVS_OK;
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, "kvs_watch_open: out of memory");
  }
}

int kvs_watch_next(kvs_watch* w, kvs_change* change, int timeout_ms) {
  if (w == nullptr || change == nullptr)
    return fail(Errc::kInvalidArgument, "kvs_watch_next: NULL argument");
  // Set at the first sleep: a change already in the log costs no clock read.
  std::optional<clock::time_point> deadline;
  try {
    for (;;) {
      // seq_cst: read before the log is, as in kvs_wait (reader/waits.cpp).
      const uint32_t seen = w->header->changes.load(std::memory_order_seq_cst);
      if (next_from_log(w)) {
        *change = w->change;
        return KVS_OK;
      }
      bool moved = false;
      if (w->header->replaced.load(std::memory_order_acquire) != 0 || w->unlinked()) {
        moved = w->follow();
        if (moved && w->entries == 0) {
          return fail(Errc::kUnsupported,
                      "kvs_watch_next: kvsd replaced the table by a segment "
                      "without a change log (change_log_entries = 0)");
        }
        if (moved) continue;
      }
      const auto now = clock::now();
      if (!deadline) deadline = now + std::chrono::milliseconds(std::max(timeout_ms, 0));
      if (timeout_ms >= 0 && now >= *deadline) {
        return fail(Errc::kTimeout,
                    "kvs_watch_next: no change within " + std::to_string(timeout_ms) + " ms");
      }
      std::chrono::nanoseconds slice =
          w->link->counted() ? detail::counted_sleep() : std::chrono::nanoseconds(kUncountedSleep);
      // Named but not mapped yet: tried again soon. Pending (the rename
      // comes next, and wakes the sleepers) or left by a writer that died
      // before the rename: the usual sleep.
      if (w->header->replaced.load(std::memory_order_relaxed) == kReplacedNamed)
        slice = std::min<std::chrono::nanoseconds>(slice, kFollowRetry);
      if (timeout_ms >= 0) slice = std::min<std::chrono::nanoseconds>(slice, *deadline - now);
      futex::wait(&w->header->changes, seen, slice);
    }
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, "kvs_watch_next: out of memory");
  }
}

void kvs_watch_close(kvs_watch* w) { delete w; }

}  // extern "C"
