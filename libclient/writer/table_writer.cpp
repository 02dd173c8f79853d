// TableWriter, part 1 of 3: the index (put, erase, apply: which record of
// a key the table keeps) and what readers see of kvsd's progress
// (partition offsets, state, pressure). The arena is in arena.cpp, creating,
// attaching and replacing segments in attach.cpp.
//
// Invariants enforced here:
// - An entry's block is complete before the release store of its slot word
//   publishes it; replacing or removing an entry is one store of that word,
//   and the old block is retired (arena.cpp), never reused at once.
// - A slot beyond a key's home group is published only after the groups
//   passed over counted it in `overflow`; the counts drop only after the
//   slot is cleared (a crash in between leaves them high, which is safe).
// - size never exceeds capacity, so a free slot always exists.
// - A partition's next_offset is published (release) only after the
//   records below it are visible; its high watermark never trails it.
#include "writer/table_writer.hpp"

#include <algorithm>
#include <cstring>

#include "writer/fault_points.hpp"

namespace kvs {
using namespace format;

void TableWriter::set_source(uint64_t cluster_hash, uint64_t topic_hash) {
  header_->source_cluster.store(cluster_hash, std::memory_order_relaxed);
  header_->source_topic.store(topic_hash, std::memory_order_relaxed);
}

uint64_t TableWriter::source_cluster() const {
  return header_->source_cluster.load(std::memory_order_relaxed);
}

uint64_t TableWriter::source_topic() const {
  return header_->source_topic.load(std::memory_order_relaxed);
}

Result<void> TableWriter::put(std::string_view key, std::string_view value) {
  auto r = put_from(key, value, std::nullopt);
  if (!r) return std::move(r).error();
  return {};
}

Result<bool> TableWriter::erase(std::string_view key) {
  auto r = erase_from(key, std::nullopt);
  if (!r) return std::move(r).error();
  return *r == Applied::kApplied;
}

Result<TableWriter::Applied> TableWriter::apply(std::string_view key,
                                                std::optional<std::string_view> value,
                                                Origin origin, int64_t offset) {
  const int64_t log_offset = log_ != nullptr ? offset : -1;
  // A slot store of this record makes digest_seq odd until its offset is
  // published (set_next_offset); one that stores nothing leaves it.
  applying_ = true;
  auto r = value ? put_from(key, *value, origin, log_offset) : erase_from(key, origin, log_offset);
  applying_ = false;
  return r;
}

Origin TableWriter::origin_of(uint64_t word) const {
  BlockHeader h;
  std::memcpy(&h, base_ + slot_offset(word), sizeof h);
  return Origin{h.timestamp_ms, h.partition};
}

Result<TableWriter::Applied> TableWriter::put_from(std::string_view key, std::string_view value,
                                                   std::optional<Origin> origin,
                                                   int64_t log_offset) {
  if (key.size() > opts_.max_key_bytes) {
    return make_error(Errc::kTooLarge, "key of " + std::to_string(key.size()) +
                                           " bytes exceeds table " + opts_.table + "'s limit of " +
                                           std::to_string(opts_.max_key_bytes));
  }
  if (value.size() > opts_.max_value_bytes) {
    return make_error(Errc::kTooLarge, "value of " + std::to_string(value.size()) +
                                           " bytes exceeds table " + opts_.table + "'s limit of " +
                                           std::to_string(opts_.max_value_bytes));
  }
  const uint64_t hash = hash_key(key.data(), key.size());
  const uint64_t need = block_bytes_for(key.size(), value.size());
  if (copying()) {
    if (auto ok = copy_key(key, hash); !ok) return std::move(ok).error();
    // The entries still to copy are guaranteed room: copied first if this
    // record would take it.
    if (!room_beside_copy(need)) {
      if (auto ok = copy_rest(); !ok) return std::move(ok).error();
    }
  }
  EntryRef old;
  SlotRef where;
  const Lookup found = view_.find(key.data(), key.size(), hash, &old, &where);
  if (found == Lookup::kCorrupt) {
    return make_error(Errc::kCorrupt, shm::path_of(data_->name) + ": index probe failed");
  }
  if (found == Lookup::kFound && origin && !replaces(*origin, origin_of(where.word))) {
    return Applied::kSuperseded;
  }
  const uint64_t size = header_->size.load(std::memory_order_relaxed);
  if (found == Lookup::kAbsent && size >= header_->capacity) {
    return make_error(Errc::kTableFull, "table " + opts_.table + " holds its capacity of " +
                                            std::to_string(header_->capacity) + " entries");
  }
  Error err;
  const uint64_t off = place(key, value, origin.value_or(Origin{}), &err);
  if (off == 0) return err;
  const uint64_t word = make_slot(hash_tag(hash), off);
  // Logged before the store that makes the change: a writer that dies in
  // between leaves a change logged twice (its record is applied again),
  // never one made and not logged.
  if (log_offset >= 0) log_change(key, hash, ChangeKind::kPut, *origin, log_offset);
  const uint64_t added = block_digest(off);
  if (found == Lookup::kFound) {
    store_slot(where.group, where.slot, word,
               added - entry_digest(old.key, old.key_len, old.value_len));
    live_delta_ -= block_bytes(slot_offset(where.word));
    retire(slot_offset(where.word));
  } else {
    insert_slot(hash, word, added);
  }
  fault::at(fault::Point::kPutStored);
  if (!copy_.erased.empty()) {
    if (auto it = copy_.erased.find(key); it != copy_.erased.end()) copy_.erased.erase(it);
  }
  header_->puts.fetch_add(1, std::memory_order_relaxed);
  return Applied::kApplied;
}

uint64_t TableWriter::place(std::string_view key, std::string_view value, Origin origin,
                            Error* err) {
  const uint64_t need = block_bytes_for(key.size(), value.size());
  uint64_t off = allocate(need);
  if (off == 0) {
    // The arena's end is reached: what an attach walk would find is needed now.
    continue_attach_walk(UINT64_MAX);
    scan_and_free(std::chrono::steady_clock::now());
    off = allocate(need);
  }
  if (off == 0) {
    if (retired_bytes_ >= need) {
      *err = Error{Errc::kBusy, "arena of table " + opts_.table + " has " +
                                    std::to_string(retired_bytes_) +
                                    " bytes waiting for readers to finish their reads; retry"};
    } else if (!no_space_.empty()) {
      *err = Error{Errc::kNoMemory, "/dev/shm has no room for more of table " + opts_.table +
                                        "'s arena (" + no_space_ +
                                        "); free space there (df /dev/shm)"};
    } else {
      *err = Error{Errc::kTableFull, "arena of table " + opts_.table +
                                         " is full: " + std::to_string(header_->arena_bytes) +
                                         " bytes, " + std::to_string(free_bytes_) +
                                         " free in blocks too small, " +
                                         std::to_string(retired_bytes_) + " waiting for readers"};
    }
    return 0;
  }
  const BlockHeader h{block_bytes(off), static_cast<uint32_t>(key.size()),
                      static_cast<uint32_t>(value.size()), origin.partition, origin.timestamp_ms};
  std::memcpy(base_ + off, &h, sizeof h);
  if (!key.empty()) std::memcpy(base_ + off + sizeof h, key.data(), key.size());
  if (!value.empty()) std::memcpy(base_ + off + sizeof h + key.size(), value.data(), value.size());
  live_delta_ += h.block_bytes;
  return off;
}

void TableWriter::insert_slot(uint64_t hash, uint64_t word, uint64_t digest_delta) {
  const uint64_t home = home_group(hash, header_->group_count);
  uint64_t g = home;
  int slot = -1;
  for (uint64_t probes = 0; probes < header_->group_count && slot < 0; ++probes) {
    for (int i = 0; i < kSlotsPerGroup; ++i) {
      if (groups_[g].slots[i].load(std::memory_order_relaxed) == 0) {
        slot = i;
        break;
      }
    }
    if (slot < 0) g = (g + 1 == header_->group_count) ? 0 : g + 1;
  }
  // size < capacity < slots, so a free slot exists.
  if (slot < 0) std::abort();
  // Groups passed over learn that a key lives beyond them, before the slot
  // is published (the release store below orders these increments).
  for (uint64_t p = home; p != g; p = (p + 1 == header_->group_count) ? 0 : p + 1) {
    groups_[p].overflow.store(groups_[p].overflow.load(std::memory_order_relaxed) + 1,
                              std::memory_order_relaxed);
  }
  store_slot(g, slot, word, digest_delta);
  header_->size.store(header_->size.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

Result<TableWriter::Applied> TableWriter::erase_from(std::string_view key,
                                                     std::optional<Origin> origin,
                                                     int64_t log_offset) {
  const uint64_t hash = hash_key(key.data(), key.size());
  if (copying()) {
    if (auto ok = copy_key(key, hash); !ok) return std::move(ok).error();
  }
  EntryRef old;
  SlotRef where;
  switch (view_.find(key.data(), key.size(), hash, &old, &where)) {
    case Lookup::kAbsent:  // (and absent from a resize's source: copy_key)
      return Applied::kAbsent;
    case Lookup::kCorrupt:
      return make_error(Errc::kCorrupt, shm::path_of(data_->name) + ": index probe failed");
    case Lookup::kFound:
      break;
  }
  if (origin && !replaces(*origin, origin_of(where.word))) return Applied::kSuperseded;
  // Logged first, as in put_from: applied again, a tombstone finds the key
  // absent and logs nothing.
  if (log_offset >= 0) log_change(key, hash, ChangeKind::kErase, *origin, log_offset);
  store_slot(where.group, where.slot, 0, 0 - entry_digest(old.key, old.key_len, old.value_len));
  fault::at(fault::Point::kEraseCleared);
  // Overflow counts drop after the slot is cleared: a crash in between leaves
  // them too high, which only lengthens some probes.
  const uint64_t home = home_group(hash, header_->group_count);
  for (uint64_t p = home; p != where.group; p = (p + 1 == header_->group_count) ? 0 : p + 1) {
    groups_[p].overflow.store(groups_[p].overflow.load(std::memory_order_relaxed) - 1,
                              std::memory_order_relaxed);
  }
  live_delta_ -= block_bytes(slot_offset(where.word));
  retire(slot_offset(where.word));
  header_->size.fetch_sub(1, std::memory_order_relaxed);
  header_->erases.fetch_add(1, std::memory_order_relaxed);
  if (copying()) copy_.erased.emplace(key);
  return Applied::kApplied;
}

void TableWriter::set_hold(uint32_t held_partitions, HoldReason reason) {
  header_->held_partitions.store(held_partitions, std::memory_order_relaxed);
  header_->hold_reason.store(static_cast<uint32_t>(reason), std::memory_order_relaxed);
}

void TableWriter::set_oldest_unapplied(uint64_t unix_ns) {
  header_->oldest_unapplied_unix_ns.store(unix_ns, std::memory_order_relaxed);
}

Result<void> TableWriter::set_partition_count(uint32_t count) {
  if (count > header_->partition_capacity) {
    return make_error(Errc::kInvalidArgument, "table " + opts_.table + " follows " +
                                                  std::to_string(count) +
                                                  " partitions but its segment tracks at most " +
                                                  std::to_string(header_->partition_capacity));
  }
  header_->partition_count.store(count, std::memory_order_release);
  dirty_ = true;
  return {};
}

void TableWriter::set_next_offset(uint32_t partition, int64_t next_offset) {
  auto& ps = partitions_[partition];
  // release: every record below next_offset is visible before the offset is
  // (DESIGN.md invariant 3).
  ps.next_offset.store(next_offset, std::memory_order_release);
  const uint32_t seq = header_->digest_seq.load(std::memory_order_relaxed);
  if (seq & 1) header_->digest_seq.store(seq + 1, std::memory_order_release);
  dirty_ = true;
  // The log holds at least what was applied: the high watermark readers see
  // never trails the applied offset, though kvsd learns the broker's only
  // now and then. (Single writer: load and store need no CAS.)
  if (ps.high_watermark.load(std::memory_order_relaxed) < next_offset)
    ps.high_watermark.store(next_offset, std::memory_order_release);
}

void TableWriter::set_high_watermark(uint32_t partition, int64_t high_watermark) {
  auto& ps = partitions_[partition];
  high_watermark =
      std::max(high_watermark, ps.next_offset.load(std::memory_order_relaxed));  // as above
  ps.high_watermark.store(high_watermark, std::memory_order_release);
}

void TableWriter::record_applied(uint32_t partition, int64_t offset, int64_t timestamp_ms,
                                 std::string_view key) {
  auto& ps = partitions_[partition];
  // Invalidated first: a writer that dies among these stores leaves no
  // fingerprint that mixes two records (the next start then cannot check
  // this partition, which it says, rather than rebuild for nothing).
  ps.last_offset.store(-1, std::memory_order_relaxed);
  // release: a reader of the fingerprint (kvs_snapshot_write) that sees the
  // fields below changed also sees the -1 (a seqlock; free on x86).
  std::atomic_thread_fence(std::memory_order_release);
  ps.last_timestamp_ms.store(timestamp_ms, std::memory_order_relaxed);
  ps.last_key_hash.store(hash_key(key.data(), key.size()), std::memory_order_relaxed);
  ps.last_offset.store(offset, std::memory_order_release);
  set_next_offset(partition, offset + 1);
}

TableWriter::LastRecord TableWriter::last_record(uint32_t partition) const {
  const auto& ps = partitions_[partition];
  return LastRecord{ps.last_offset.load(std::memory_order_acquire),
                    ps.last_timestamp_ms.load(std::memory_order_relaxed),
                    ps.last_key_hash.load(std::memory_order_relaxed)};
}

int64_t TableWriter::next_offset(uint32_t partition) const {
  return partitions_[partition].next_offset.load(std::memory_order_relaxed);
}

void TableWriter::restore_partition(uint32_t partition, int64_t next_offset, int64_t high_watermark,
                                    LastRecord last) {
  auto& ps = partitions_[partition];
  ps.last_offset.store(-1, std::memory_order_relaxed);
  ps.last_timestamp_ms.store(last.timestamp_ms, std::memory_order_relaxed);
  ps.last_key_hash.store(last.key_hash, std::memory_order_relaxed);
  ps.last_offset.store(last.offset, std::memory_order_release);
  set_next_offset(partition, next_offset);
  set_high_watermark(partition, high_watermark);
}

int64_t TableWriter::high_watermark(uint32_t partition) const {
  return partitions_[partition].high_watermark.load(std::memory_order_relaxed);
}

void TableWriter::for_each_entry(
    const std::function<void(std::string_view, std::string_view, Origin)>& fn) const {
  for (uint64_t g = 0; g < header_->group_count; ++g) {
    for (int i = 0; i < kSlotsPerGroup; ++i) {
      const uint64_t w = groups_[g].slots[i].load(std::memory_order_relaxed);
      EntryRef e;
      if (w == 0 || !view_.entry_at(slot_offset(w), &e)) continue;
      fn(std::string_view(reinterpret_cast<const char*>(e.key), e.key_len),
         std::string_view(reinterpret_cast<const char*>(e.value), e.value_len), origin_of(w));
    }
  }
}

void TableWriter::set_state(TableState state) {
  header_->state.store(static_cast<uint32_t>(state), std::memory_order_release);
  // At once, not at the end of the batch: kvs_wait_ready sleeps on it.
  dirty_ = true;
  publish_batch();
}

void TableWriter::count_skipped() { header_->skipped.fetch_add(1, std::memory_order_relaxed); }

WriterStats TableWriter::stats() const {
  WriterStats s;
  s.size = header_->size.load(std::memory_order_relaxed);
  s.arena_used = header_->arena_used.load(std::memory_order_relaxed);
  s.arena_bytes = header_->arena_bytes;
  s.capacity = header_->capacity;
  s.segment_bytes = header_->segment_bytes;
  s.live_bytes_exact = live_exact_;
  s.live_bytes = live_exact_ ? live_at_attach_ + static_cast<uint64_t>(live_delta_)
                             : s.arena_used - free_bytes_ - retired_bytes_;
  s.free_bytes = free_bytes_;
  s.retired_bytes = retired_bytes_;
  s.dead_readers_recovered = roster_->dead_removed();
  s.leaked_blocks_at_attach = leaked_at_attach_;
  s.attach_walk_pending_bytes = walk_.end - walk_.pos;
  s.holder = holder_;
  return s;
}

}  // namespace kvs
