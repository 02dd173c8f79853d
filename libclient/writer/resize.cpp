// TableWriter, part 4 of 4: resizing a table (growth, or shrinking one that
// once spiked) by copying its live entries into a new segment while records
// go on being applied to the new one. The index and the arena are in
// table_writer.cpp and arena.cpp, creating and replacing segments in
// attach.cpp.
//
// Invariants enforced here:
// - The new segment holds what the source would hold had every record
//   applied since begin_resize been applied to it: a record's key is copied
//   from the source before the record is applied (so format::replaces
//   compares with the right entry), a source entry is copied only if its key
//   is neither here already (copied, or put since) nor erased here since.
// - The source is never written: its readers keep a consistent table, and a
//   writer killed mid-copy leaves it whole under the table's name (the new
//   segment has a temporary name, removed at the next start).
// - The entries still to copy always have room: a record that would take it
//   first finishes the copy (room_beside_copy).
#include <algorithm>

#include "writer/table_writer.hpp"

namespace kvs {
using namespace format;

namespace {

// Index groups read ahead of the ones copied, so that the source blocks'
// cache misses overlap.
constexpr uint64_t kCopyBatchGroups = 8;

}  // namespace

// The change log goes on in the new segment: what this one logged is
// published now (it is not written again), and its latest entries are
// copied, so that a watcher that follows the table to the new segment keeps
// its place there, also one that was still reading an older segment when
// this one was replaced.
void TableWriter::carry_log_to(TableWriter& w) {
  publish_batch();
  const uint64_t head = log_pos_;
  uint64_t from = head;
  if (log_ != nullptr && w.log_ != nullptr) {
    from =
        head - std::min({head - header_->log_start, header_->log_entries, w.header_->log_entries});
    for (uint64_t p = from; p < head; ++p) {
      const ChangeEntry& e = log_[p % header_->log_entries];
      ChangeEntry& to = w.log_[p % w.header_->log_entries];
      for (int i = 0; i < 8; ++i)
        to.w[i].store(e.w[i].load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
  }
  // Nobody maps the new segment yet: plain stores are enough.
  w.header_->log_start = from;
  w.header_->log_lineage = header_->log_lineage;
  w.log_pos_ = head;
  w.header_->log_head.store(head, std::memory_order_relaxed);
}

Result<std::unique_ptr<TableWriter>> TableWriter::begin_resize(TableSize size) {
  // An attach walk still under way ends here: a copy must not take blocks
  // of an arena the walk would find off (the report stays for the caller,
  // who rebuilds the table instead).
  continue_attach_walk(UINT64_MAX);
  if (walk_report_ && walk_report_->corrupt) {
    return make_error(Errc::kCorrupt, "table " + opts_.table + ": " + walk_report_->message);
  }
  const WriterStats st = stats();
  if (size.capacity < st.size || size.arena_bytes < st.live_bytes) {
    return make_error(Errc::kInvalidArgument,
                      "table " + opts_.table + ": a segment of " + std::to_string(size.capacity) +
                          " entries and " + std::to_string(size.arena_bytes) +
                          " arena bytes cannot hold its " + std::to_string(st.size) +
                          " entries of " + std::to_string(st.live_bytes) + " bytes");
  }
  auto r = begin_replacement(size);
  if (!r) return r;
  TableWriter& w = **r;
  carry_log_to(w);
  // The arena the copy needs is backed now: a full /dev/shm is an error
  // here, not in the middle of the copy.
  if (!w.back_until(w.header_->arena_offset + std::min(size.arena_bytes, st.live_bytes))) {
    return make_error(Errc::kNoMemory, "table " + opts_.table +
                                           ": /dev/shm has no room for a segment of " +
                                           std::to_string(w.header_->segment_bytes) + " bytes (" +
                                           w.no_space_ + "); free space there (df /dev/shm)");
  }
  const uint32_t pc = std::min(header_->partition_capacity, w.header_->partition_capacity);
  for (uint32_t p = 0; p < pc; ++p) {
    const PartitionState& from = partitions_[p];
    PartitionState& to = w.partitions_[p];
    to.next_offset.store(from.next_offset.load(std::memory_order_relaxed));
    to.high_watermark.store(from.high_watermark.load(std::memory_order_relaxed));
    to.last_offset.store(from.last_offset.load(std::memory_order_relaxed));
    to.last_timestamp_ms.store(from.last_timestamp_ms.load(std::memory_order_relaxed));
    to.last_key_hash.store(from.last_key_hash.load(std::memory_order_relaxed));
  }
  TableHeader& h = *w.header_;
  h.partition_count.store(header_->partition_count.load());
  h.state.store(header_->state.load());
  h.source_cluster.store(header_->source_cluster.load());
  h.source_topic.store(header_->source_topic.load());
  h.puts.store(header_->puts.load());
  h.erases.store(header_->erases.load());
  h.skipped.store(header_->skipped.load());
  h.writer_attaches.store(header_->writer_attaches.load());
  w.copy_ = Copy{this, 0, st.size, st.live_bytes, {}};
  return r;
}

// Only the arena's unused end counts: free blocks may all be too small for
// the entries still to copy.
bool TableWriter::room_beside_copy(uint64_t need) const {
  const uint64_t size = header_->size.load(std::memory_order_relaxed);
  const uint64_t used = header_->arena_used.load(std::memory_order_relaxed);
  return size + 1 + copy_.keys_left <= header_->capacity &&
         need + copy_.bytes_left <= header_->arena_bytes - used;
}

Result<void> TableWriter::copy_entry(const EntryRef& e, uint64_t word) {
  const std::string_view key(reinterpret_cast<const char*>(e.key), e.key_len);
  const uint64_t hash = hash_key(e.key, e.key_len);
  EntryRef here;
  switch (view_.find(e.key, e.key_len, hash, &here)) {
    case Lookup::kFound:
      return {};  // copied before it was written here
    case Lookup::kCorrupt:
      return make_error(Errc::kCorrupt, shm::path_of(data_->name) + ": index probe failed");
    case Lookup::kAbsent:
      break;
  }
  if (!copy_.erased.empty() && copy_.erased.contains(key)) return {};
  const uint64_t need = block_bytes_for(e.key_len, e.value_len);
  if (header_->size.load(std::memory_order_relaxed) >= header_->capacity) {
    return make_error(Errc::kTableFull, "table " + opts_.table + ": the resized segment of " +
                                            std::to_string(header_->capacity) +
                                            " entries cannot take every entry");
  }
  Error err;
  const uint64_t off =
      place(key, std::string_view(reinterpret_cast<const char*>(e.value), e.value_len),
            copy_.from->origin_of(word), &err);
  if (off == 0) return err;
  insert_slot(hash, make_slot(hash_tag(hash), off), block_digest(off));
  copy_.keys_left -= std::min<uint64_t>(copy_.keys_left, 1);
  copy_.bytes_left -= std::min(copy_.bytes_left, need);
  return {};
}

Result<void> TableWriter::copy_key(std::string_view key, uint64_t hash) {
  EntryRef e;
  SlotRef where;
  switch (copy_.from->view_.find(key.data(), key.size(), hash, &e, &where)) {
    case Lookup::kAbsent:
      return {};
    case Lookup::kCorrupt:
      return make_error(Errc::kCorrupt,
                        shm::path_of(copy_.from->data_->name) + ": index probe failed");
    case Lookup::kFound:
      break;
  }
  return copy_entry(e, where.word);
}

Result<bool> TableWriter::copy_step(uint64_t max_groups) {
  if (!copying()) return true;
  const TableView& from = copy_.from->view_;
  const uint64_t groups = from.group_count();
  const uint64_t stop =
      groups - copy_.next_group <= max_groups ? groups : copy_.next_group + max_groups;
  uint64_t words[kCopyBatchGroups * kSlotsPerGroup];
  while (copy_.next_group < stop) {
    const uint64_t end = std::min(stop, copy_.next_group + kCopyBatchGroups);
    size_t n = 0;
    for (uint64_t g = copy_.next_group; g < end; ++g) {
      for (int i = 0; i < kSlotsPerGroup; ++i) {
        const uint64_t w = from.group(g).slots[i].load(std::memory_order_relaxed);
        if (w == 0) continue;
        words[n++] = w;
        const uint64_t off = slot_offset(w);
        if (off >= from.arena_begin() && off < from.arena_end()) {
          __builtin_prefetch(from.base() + off);
        }
      }
    }
    for (size_t i = 0; i < n; ++i) {
      EntryRef e;
      if (!from.entry_at(slot_offset(words[i]), &e)) {
        return make_error(Errc::kCorrupt, shm::path_of(copy_.from->data_->name) +
                                              ": a slot points outside the arena");
      }
      if (auto ok = copy_entry(e, words[i]); !ok) return std::move(ok).error();
    }
    copy_.next_group = end;
  }
  if (copy_.next_group < groups) return false;
  copy_ = Copy{};
  return true;
}

Result<void> TableWriter::copy_rest() {
  for (;;) {
    auto done = copy_step(UINT64_MAX);
    if (!done) return std::move(done).error();
    if (*done) return {};
  }
}

}  // namespace kvs
