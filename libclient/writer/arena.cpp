// TableWriter, part 2 of 3: the arena. Blocks are carved from its unused
// end (bump allocation) or reused from exact-size free lists (best fit once
// the end is reached); a block replaced or erased is retired with the epoch
// of its retirement and reused only once no reader can still see it.
//
// Invariants enforced here:
// - block_bytes is written once, when a block is first carved, and never
//   changes: the arena can be walked block by block, and blocks are never
//   split or merged.
// - A block is handed out to at most one entry at a time.
// - A retired block is freed only when every reader slot announces an epoch
//   above its retirement epoch (or none): the epoch is advanced, a full fence
//   orders the slot stores before the registry is read, and a reader that
//   cannot be read counts as one announcing the oldest epoch.
// - Epochs never end in a zero byte (docs/format.md, "Reader registry").
#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>

#include "format/sanitizers.hpp"
#include "writer/table_writer.hpp"

namespace kvs {
using namespace format;

namespace {

constexpr auto kSweepInterval = std::chrono::seconds(1);
// Retired bytes past which reclaim() reads the registry whenever it is called.
constexpr uint64_t kScanBytes = 1 << 20;
// The arena is backed ahead of the blocks carved, this much at a time (a
// huge page of a tmpfs mounted with huge=).
constexpr uint64_t kBackingStep = 2 << 20;

}  // namespace

bool TableWriter::back_until(uint64_t end) {
  if (end <= backed_end_) return true;
  const uint64_t size = data_->size();
  // A step ahead if /dev/shm has it, else just the pages asked for.
  for (const uint64_t to :
       {std::min(size, align_up(end, kBackingStep)), std::min(size, align_up(end, 4096))}) {
    const int err = ::posix_fallocate(data_->fd(), static_cast<off_t>(backed_end_),
                                      static_cast<off_t>(to - backed_end_));
    if (err == 0) {
      backed_end_ = to;
      no_space_.clear();
      return true;
    }
    no_space_ = std::string("posix_fallocate: ") + std::strerror(err);
  }
  return false;
}

Result<void> TableWriter::back_segment() {
  // The carved arena was written block by block, so its pages exist; the
  // index may have holes (groups never written), which a write would fill.
  if (back_until(header_->arena_offset)) {
    const uint64_t used = header_->arena_used.load(std::memory_order_relaxed);
    // The page the carved arena ends in is backed again by the next carve
    // (a block's padding there may never have been written).
    const uint64_t carved_pages = (header_->arena_offset + used) / 4096 * 4096;
    backed_end_ = std::max(backed_end_, carved_pages);
    return {};
  }
  return make_error(Errc::kNoMemory, "table " + opts_.table + ": /dev/shm has no room for " +
                                         shm::path_of(data_->name) + "'s index and entries (" +
                                         no_space_ + "); free space there (df /dev/shm)");
}

uint32_t TableWriter::block_bytes(uint64_t offset) const {
  uint32_t b;
  std::memcpy(&b, base_ + offset, sizeof b);
  return b;
}

uint64_t TableWriter::allocate(uint64_t bytes) {
  auto take = [&](std::map<uint32_t, std::vector<uint64_t>>::iterator it) {
    const uint64_t off = it->second.back();
    const uint32_t bb = it->first;
    it->second.pop_back();
    free_bytes_ -= bb;
    if (it->second.empty()) free_.erase(it);
    KVS_UNPOISON(base_ + off, bb);
    return off;
  };
  if (auto it = free_.find(static_cast<uint32_t>(bytes)); it != free_.end()) return take(it);
  const uint64_t used = header_->arena_used.load(std::memory_order_relaxed);
  if (used + bytes <= header_->arena_bytes && back_until(header_->arena_offset + used + bytes)) {
    const uint64_t off = header_->arena_offset + used;
    const auto bb = static_cast<uint32_t>(bytes);
    std::memcpy(base_ + off, &bb, sizeof bb);
    // release: the block's size is in place before the arena walk can reach it.
    header_->arena_used.store(used + bytes, std::memory_order_release);
    return off;
  }
  // Arena exhausted: best fit among larger free blocks (the rest of the block
  // stays unused until the block is freed again).
  if (auto it = free_.lower_bound(static_cast<uint32_t>(bytes)); it != free_.end()) return take(it);
  return 0;
}

void TableWriter::retire(uint64_t offset) {
  if (offset < unchecked_end_) {
    if (walk_.pending()) walk_.held.push_back(offset);
    return;
  }
  const uint32_t bb = block_bytes(offset);
  retired_.push_back({offset, header_->epoch.load(std::memory_order_relaxed)});
  retired_bytes_ += bb;
}

void TableWriter::free_block(uint64_t offset) {
  const uint32_t bb = block_bytes(offset);
  retired_bytes_ -= bb;
  free_bytes_ += bb;
  free_[bb].push_back(offset);
  // The first 4 bytes (block_bytes) stay readable for the arena walk.
  KVS_POISON(base_ + offset + sizeof(uint32_t), bb - sizeof(uint32_t));
}

void TableWriter::full_fence() {
#ifndef KVS_TSAN
  // Orders the slot stores before the loads of reader epochs (pairs with the
  // seq_cst exchange in kvs_read_begin). TSan does not model fences; the
  // seq_cst RMW on the epoch just before is a full barrier on x86 as well.
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

uint32_t TableWriter::sweep_dead_readers() { return roster_->sweep(); }

void TableWriter::publish_reader_counts() {
  const ReaderCounts c = roster_->counts(header_->incarnation);
  header_->reader_processes.store(c.processes, std::memory_order_relaxed);
  header_->reader_slots_used.store(c.slots_used, std::memory_order_relaxed);
  header_->readers_reading.store(c.reading, std::memory_order_relaxed);
  header_->reader_files_unchecked.store(c.unchecked, std::memory_order_relaxed);
  header_->reader_stats_unix_ns.store(now_unix_ns(), std::memory_order_relaxed);
  header_->reader_slot_limit.store(opts_.reader_slots, std::memory_order_relaxed);
}

// Readers may copy an epoch out of their file byte by byte (kvsd reads the
// files with pread, whose copy has no atomicity): epochs never end in a
// zero byte, so a copy that mixes the bytes of the pin (1) and of an epoch e
// is never above e (docs/format.md).
void TableWriter::advance_epoch() {
  uint64_t e = header_->epoch.load(std::memory_order_relaxed) + 1;
  if ((e & 0xFF) == 0) ++e;
  header_->epoch.store(e, std::memory_order_seq_cst);
}

uint64_t TableWriter::reclaim() {
  const auto now = std::chrono::steady_clock::now();
  if (now >= next_sweep_) {
    next_sweep_ = now + kSweepInterval;
    sweep_dead_readers();
    publish_reader_counts();
  }
  continue_attach_walk(opts_.attach_walk_bytes);
  if (retired_.empty()) {
    roster_->tick();
    return 0;
  }
  if (now < next_scan_ && retired_bytes_ < kScanBytes) return retired_bytes_;
  return scan_and_free(now);
}

uint64_t TableWriter::scan_and_free(std::chrono::steady_clock::time_point now) {
  if (retired_.empty()) return 0;
  next_scan_ = now + opts_.reader_scan_interval;
  // Readers that start from here on announce a newer epoch than anything
  // retired so far, and (acquire on their side) see the cleared slots.
  advance_epoch();
  full_fence();

  const bool check_dead = now >= next_dead_check_;
  if (check_dead) next_dead_check_ = now + opts_.dead_reader_check;
  const uint64_t min_active =
      roster_->min_announced(header_->incarnation, retired_.front().epoch, check_dead);
  while (!retired_.empty() && retired_.front().epoch < min_active) {
    free_block(retired_.front().offset);
    retired_.pop_front();
  }
  // The roster reads the registry only while something waits; a reader seen
  // at the same epoch across an idle spell has not held anything meanwhile.
  if (retired_.empty()) roster_->forget_holders();
  publish_holder();
  return retired_bytes_;
}

void TableWriter::publish_holder() {
  holder_ = retired_.empty() ? ReaderHolder{} : roster_->holder();
  // -1: memory waits for a registry entry kvsd cannot read.
  const int32_t pid = holder_.epoch == 0 ? 0 : holder_.pid != 0 ? holder_.pid : -1;
  header_->holder_pid.store(pid, std::memory_order_relaxed);
  header_->holder_since_unix_ns.store(holder_.since_unix_ns, std::memory_order_relaxed);
  header_->holder_bytes.store(retired_bytes_, std::memory_order_relaxed);
}

}  // namespace kvs
