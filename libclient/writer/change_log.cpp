// TableWriter, the change log and the futex word (format/layout.hpp,
// "change log"; docs/format.md, "Watching a table").
//
// Invariants enforced here:
// - An entry's word 0 is 0 while its other words change, and holds its
//   position + 1 only once they are whole (a seqlock per entry).
// - A change is logged before the store that makes it, and no entry past
//   log_head is overwritten before log_head passes it: whatever instruction
//   the writer dies at, every change it made is in the ring past the head
//   (or was published), whole or torn at the very end.
// - log_head is published (release) only after the entries below it are
//   whole, and the futex word moves only after what it announces is
//   published; the count of waiting processes is read after the futex word
//   moved (seq_cst both), so that a process counted before that read is
//   woken, and one counted after it sees the new value and does not sleep.
#include <cstring>

#include "src/futex.hpp"
#include "writer/table_writer.hpp"

namespace kvs {
using namespace format;

namespace {

// Bytes [from, from + 8 * words) of the key into entry words, zero-padded.
void store_key_words(ChangeEntry& e, int first_word, std::string_view key, uint64_t from) {
  for (int i = first_word; i < 8; ++i, from += 8) {
    uint64_t v = 0;
    if (from < key.size())
      std::memcpy(&v, key.data() + from, std::min<uint64_t>(8, key.size() - from));
    e.w[i].store(v, std::memory_order_relaxed);
  }
}

void begin_entry(ChangeEntry& e) {
  e.w[0].store(0, std::memory_order_relaxed);
  // release: a watcher that reads any word stored below also reads word 0
  // as 0 (or a later position) when it checks again.
  std::atomic_thread_fence(std::memory_order_release);
}

}  // namespace

void TableWriter::log_change(std::string_view key, uint64_t hash, ChangeKind kind, Origin origin,
                             int64_t offset) {
  const uint64_t n = header_->log_entries;
  const uint64_t p = log_pos_;
  const uint64_t entries = change_entries(key.size());
  // The head passes the changes logged so far (each one's store is done)
  // before this one could overwrite a change past it: a writer that dies
  // inside a batch of any size leaves every change it logged since the
  // head in the ring, for the next one to publish (recover_log). At half a
  // ring, so that watchers keep up with a long batch too.
  if (p + entries - header_->log_head.load(std::memory_order_relaxed) > n / 2)
    header_->log_head.store(p, std::memory_order_release);
  ChangeEntry& e = log_[p % n];
  begin_entry(e);
  e.w[1].store(hash, std::memory_order_relaxed);
  e.w[2].store(static_cast<uint64_t>(offset), std::memory_order_relaxed);
  e.w[3].store(static_cast<uint64_t>(origin.timestamp_ms), std::memory_order_relaxed);
  e.w[4].store(origin.partition | (uint64_t{static_cast<uint32_t>(kind)} << 32),
               std::memory_order_relaxed);
  e.w[5].store(key.size(), std::memory_order_relaxed);
  store_key_words(e, 6, key, 0);
  e.w[0].store(p + 1, std::memory_order_release);
  for (uint64_t i = 1; i < entries; ++i) {
    ChangeEntry& c = log_[(p + i) % n];
    begin_entry(c);
    store_key_words(c, 1, key, kChangeInlineKeyBytes + (i - 1) * kChangeMoreKeyBytes);
    c.w[0].store(p + i + 1, std::memory_order_release);
  }
  log_pos_ = p + entries;
  dirty_ = true;
}

uint64_t TableWriter::whole_changes_from(uint64_t pos) const {
  const uint64_t n = header_->log_entries;
  const uint64_t end = pos + n;
  while (pos < end) {
    const ChangeEntry& e = log_[pos % n];
    if (e.w[0].load(std::memory_order_acquire) != pos + 1) break;
    const uint64_t key_len = e.w[5].load(std::memory_order_relaxed);
    if (key_len > (uint64_t{1} << 30)) break;
    const uint64_t entries = change_entries(key_len);
    if (entries > end - pos) break;
    bool whole = true;
    for (uint64_t i = 1; i < entries && whole; ++i)
      whole = log_[(pos + i) % n].w[0].load(std::memory_order_acquire) == pos + i + 1;
    if (!whole) break;
    pos += entries;
  }
  return pos;
}

bool TableWriter::publish_batch() {
  const uint32_t counted = waiting_ ? waiting_->load(std::memory_order_relaxed) : 0;
  if (header_->waiters.load(std::memory_order_relaxed) != counted)
    header_->waiters.store(counted, std::memory_order_relaxed);
  if (!dirty_) return false;
  dirty_ = false;
  if (log_ != nullptr) header_->log_head.store(log_pos_, std::memory_order_release);
  header_->changes.fetch_add(1, std::memory_order_seq_cst);
  if (waiting_ == nullptr || waiting_->load(std::memory_order_seq_cst) == 0) return false;
  futex::wake_all(&header_->changes);
  header_->wakes.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void TableWriter::flag_replaced(TableHeader& h, uint32_t how) {
  h.replaced.store(how, std::memory_order_release);
  h.changes.fetch_add(1, std::memory_order_seq_cst);
  futex::wake_all(&h.changes);
}

void TableWriter::wake_all() {
  header_->changes.fetch_add(1, std::memory_order_seq_cst);
  futex::wake_all(&header_->changes);
  header_->wakes.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace kvs
