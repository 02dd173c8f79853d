// TableWriter, part 3 of 3: creating a segment, attaching to one a dead
// writer left, and replacing one (a rebuild), with the recovery of the
// allocator's state that an attach needs. The index and the arena's rules
// are in table_writer.cpp and arena.cpp.
//
// Invariants enforced here:
// - A segment gets its name only once it is fully initialised: it is built
//   under a temporary name and renamed (no reader maps half a segment).
// - A replacement flags the old segment `replaced` before it takes the name,
//   so a writer that dies in between strands no reader (the next attach
//   clears a stale flag).
// - An attach trusts nothing it did not check: every slot must point at a
//   distinct, aligned block start inside the carved arena, else the segment
//   is replaced. Every carved block no slot references may still be seen by
//   a reader of the dead writer: it is retired, never freed at once.
// - The arena walk retires the unreferenced blocks only after the chain of
//   block sizes met every live slot at a block's start; a chain that is off
//   leaks them (and kvsd rebuilds) rather than hand out a live entry's bytes.
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <utility>

#include "format/sanitizers.hpp"
#include "writer/fault_points.hpp"
#include "writer/table_writer.hpp"

namespace kvs {
using namespace format;

namespace {

Result<void> validate(const WriterOptions& o) {
  auto bad = [&](const std::string& what) {
    return make_error(Errc::kInvalidArgument, "table " + o.table + ": " + what);
  };
  if (o.capacity < 1 || o.capacity > kMaxCapacity) {
    return bad("capacity = " + std::to_string(o.capacity) + ", must be 1..2^40");
  }
  if (o.arena_bytes < kMinArenaBytes || o.arena_bytes > kMaxArenaBytes) {
    return bad("arena_bytes = " + std::to_string(o.arena_bytes) + ", must be 4096..2^50");
  }
  if (o.partition_capacity < 1 || o.partition_capacity > kMaxPartitions) {
    return bad("partition_capacity = " + std::to_string(o.partition_capacity) +
               ", must be 1..65536");
  }
  if (o.reader_slots < 1 || o.reader_slots > (1u << 20)) {
    return bad("reader_slots = " + std::to_string(o.reader_slots) + ", must be 1..1048576");
  }
  if (o.max_key_bytes < 1 || o.max_value_bytes > (1u << 30)) {
    return bad("max_key_bytes must be >= 1 and max_value_bytes <= 1 GiB");
  }
  if (o.change_log_entries > kMaxLogEntries ||
      (o.change_log_entries > 0 && change_entries(o.max_key_bytes) > o.change_log_entries)) {
    return bad("change_log_entries = " + std::to_string(o.change_log_entries) + ", must be 0 or " +
               std::to_string(change_entries(o.max_key_bytes)) +
               " (a change of the longest key).." + std::to_string(kMaxLogEntries));
  }
  if (o.data_mode & (S_IWGRP | S_IWOTH)) {
    return bad("data_mode must not let the group or others write: readers refuse such a table");
  }
  if (block_bytes_for(o.max_key_bytes, o.max_value_bytes) > o.arena_bytes) {
    return bad("arena_bytes = " + std::to_string(o.arena_bytes) +
               " cannot hold one entry of the maximum key and value size");
  }
  return {};
}

// Refuses a data segment this user did not create (planted in /dev/shm by
// another user before kvsd started).
Result<void> check_owner(const shm::Mapping& m) {
  struct stat st {};
  if (::fstat(m.fd(), &st) != 0) {
    return make_error(Errc::kSystem, "fstat " + shm::path_of(m.name) + ": " + std::strerror(errno));
  }
  if (st.st_uid != ::geteuid()) {
    return make_error(Errc::kPermission,
                      shm::path_of(m.name) + " belongs to uid " + std::to_string(st.st_uid) +
                          ", not to kvsd (uid " + std::to_string(::geteuid()) +
                          "): another user made it; remove it (as root) and restart kvsd");
  }
  return {};
}

std::string temp_name(const std::string& name) {
  std::random_device rd;
  return name + ".new." + std::to_string(::getpid()) + "." + std::to_string(rd());
}

}  // namespace

Result<std::unique_ptr<TableWriter>> TableWriter::open(const WriterOptions& options) {
  if (auto ok = validate(options); !ok) return std::move(ok).error();
  auto seg = shm::segment_in(options.shm_dir, options.shm_prefix, options.table);
  if (!seg) return std::move(seg).error();
  std::unique_ptr<TableWriter> w(new TableWriter());
  w->opts_ = options;

  // 1. The reader registry, which also carries the writer's lock: it outlives
  //    data segments, so two writers always contend for the same directory.
  auto roster =
      ReaderRoster::open(*seg, options.registry_mode, options.group, options.reader_slots);
  if (!roster) return std::move(roster).error().context("table " + options.table);
  w->roster_ = std::move(*roster);

  w->segment_ = *seg;
  w->remove_stale_temps(*seg);

  // 2. The data segment: take over a good one, else create it anew.
  std::unique_ptr<shm::Mapping> stale;  // ours, but inconsistent
  auto data = shm::open_segment(*seg, shm::Access::kReadWrite);
  if (data) {
    if (auto ok = check_owner(**data); !ok) return std::move(ok).error();
    const HeaderVerdict v = check_header((*data)->data(), (*data)->size());
    if (v.check == HeaderCheck::kOk) {
      w->data_ = std::move(*data);
      if (auto ok = w->attach_existing(); ok) {
        if (auto backed = w->back_segment(); !backed) return std::move(backed).error();
        w->roster_->set_current(w->header_->incarnation);
        return w;
      }
      stale = std::move(w->data_);
      KVS_UNPOISON(stale->data(), stale->size());  // see ~TableWriter
    }
    w->attach_kind_ = AttachKind::kReplaced;
  } else if (data.error().code != Errc::kNoTable && data.error().code != Errc::kCorrupt) {
    return std::move(data).error().context("opening table " + options.table);
  }

  // A segment of another layout or a corrupt one stays as it is for the
  // readers that have it mapped; the new one takes its name atomically.
  const TableSize size{options.capacity, options.arena_bytes};
  if (auto ok = w->create_temp(*seg, size); !ok) return std::move(ok).error();
  w->init_new(size, options.partition_capacity);
  // Readers of the inconsistent one learn that a new one takes its name
  // (flag first, as in publish_replacement).
  auto* stale_header = stale ? reinterpret_cast<TableHeader*>(stale->data()) : nullptr;
  if (stale_header) flag_replaced(*stale_header, kReplacedPending);
  if (auto ok = shm::rename_segment(w->data_->name, *seg); !ok) {
    shm::remove_segment(w->data_->name);
    return std::move(ok).error();
  }
  w->data_->name = *seg;
  w->roster_->set_current(w->header_->incarnation);
  if (stale_header) flag_replaced(*stale_header, kReplacedNamed);
  return w;
}

Result<void> TableWriter::create_temp(const std::string& segment, TableSize size) {
  const Geometry g =
      geometry(size.capacity, opts_.partition_capacity, size.arena_bytes, opts_.change_log_entries);
  const std::string tmp = temp_name(segment);
  auto created = shm::create_segment(tmp, g.segment_bytes, opts_.data_mode, opts_.group);
  if (!created) return std::move(created).error().context("creating table " + opts_.table);
  data_ = std::move(*created);
  // The header, partitions and index are written at once: backed first.
  backed_end_ = 0;
  if (!back_until(g.arena_offset)) {
    shm::remove_segment(tmp);
    data_.reset();
    return make_error(Errc::kNoMemory,
                      "creating table " + opts_.table + ": /dev/shm has no room for its " +
                          std::to_string(g.arena_offset) + "-byte index (" + no_space_ +
                          "); free space there (df /dev/shm) or lower capacity");
  }
  return {};
}

void TableWriter::remove_stale_temps(const std::string& segment) {
  // "<segment>.new.<pid>.<random>", see temp_name(). Called from open(),
  // under the writer lock and before this writer began any replacement: every
  // one there is a leftover of a writer that is gone.
  const bool bare = segment.empty() || segment[0] != '/';
  const std::string dir = shm::dir_of(segment);
  const std::string prefix =
      (bare ? segment : std::filesystem::path(segment).filename().string()) + ".new.";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with(prefix)) shm::remove_segment(bare ? name : dir + "/" + name);
  }
}

Result<std::unique_ptr<TableWriter>> TableWriter::begin_replacement(std::optional<TableSize> size) {
  const TableSize sz = size.value_or(TableSize{opts_.capacity, opts_.arena_bytes});
  if (!geometry_in_bounds(sz.capacity, opts_.partition_capacity, sz.arena_bytes,
                          opts_.change_log_entries) ||
      block_bytes_for(opts_.max_key_bytes, opts_.max_value_bytes) > sz.arena_bytes) {
    return make_error(Errc::kInvalidArgument, "table " + opts_.table + ": a segment of " +
                                                  std::to_string(sz.capacity) + " entries and " +
                                                  std::to_string(sz.arena_bytes) +
                                                  " arena bytes is out of bounds");
  }
  std::unique_ptr<TableWriter> w(new TableWriter());
  w->opts_ = opts_;
  w->roster_ = roster_;
  w->segment_ = segment_;
  w->waiting_ = waiting_;
  if (auto ok = w->create_temp(segment_, sz); !ok) return std::move(ok).error();
  w->init_new(sz, opts_.partition_capacity);
  // Readers announce epochs per segment (their files name its incarnation),
  // so the new segment's epochs start afresh.
  return w;
}

Result<void> TableWriter::publish_replacement(TableWriter& next) {
  // The flag before the rename: a writer that dies in between leaves a
  // flagged segment under the name, which the next writer clears when it
  // attaches; the other order could strand readers on a segment no longer
  // named, with nothing telling them to move. A reader that sees the flag
  // before the rename finds the same segment, and tries again as soon as
  // it reads kReplacedNamed, which follows the rename.
  header_->replaced.store(kReplacedPending, std::memory_order_release);
  fault::at(fault::Point::kReplacementFlagged);
  if (auto ok = shm::rename_segment(next.data_->name, segment_); !ok) {
    header_->replaced.store(0, std::memory_order_release);
    return ok;
  }
  next.data_->name = segment_;
  // Readers that open the table from now on read `next`.
  roster_->set_current(next.header_->incarnation);
  // Sleepers on this segment move to the new one (rare: no need to ask
  // whether anyone sleeps).
  header_->replaced.store(kReplacedNamed, std::memory_order_release);
  wake_all();
  return {};
}

std::string TableWriter::size_change() const {
  if (header_->partition_capacity == opts_.partition_capacity) return "";
  return "max_partitions " + std::to_string(header_->partition_capacity) + " -> " +
         std::to_string(opts_.partition_capacity);
}

TableWriter::~TableWriter() {
  if (header_) header_->writer_pid.store(0, std::memory_order_relaxed);
  // A replacement never published: nobody else knows its segment.
  if (data_ && !segment_.empty() && data_->name != segment_) shm::remove_segment(data_->name);
  // ASan keeps the shadow of unmapped memory: a later mapping at this
  // address would inherit the poison of free blocks.
  if (data_) KVS_UNPOISON(data_->data(), data_->size());
}

void TableWriter::init_new(TableSize size, uint32_t partition_capacity) {
  const uint64_t capacity = size.capacity;
  const Geometry g =
      geometry(capacity, partition_capacity, size.arena_bytes, opts_.change_log_entries);
  base_ = data_->data();
  KVS_UNPOISON(base_, data_->size());  // see ~TableWriter
  header_ = reinterpret_cast<TableHeader*>(base_);
  header_->magic = kTableMagic;
  header_->layout_version = kLayoutVersion;
  header_->header_bytes = sizeof(TableHeader);
  header_->fingerprint = layout_fingerprint();
  header_->segment_bytes = g.segment_bytes;
  header_->group_count = g.group_count;
  header_->groups_offset = g.groups_offset;
  header_->arena_offset = g.arena_offset;
  header_->arena_bytes = g.arena_bytes;
  header_->capacity = capacity;
  header_->partition_capacity = partition_capacity;
  header_->partitions_offset = g.partitions_offset;
  header_->log_offset = g.log_offset;
  header_->log_entries = opts_.change_log_entries;
  header_->log_lineage = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
  header_->created_unix_ns = now_unix_ns();
  header_->incarnation = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
  header_->epoch.store(1, std::memory_order_relaxed);  // 0 means "not reading"
  header_->state.store(static_cast<uint32_t>(TableState::kBootstrapping),
                       std::memory_order_relaxed);
  header_->writer_pid.store(::getpid(), std::memory_order_relaxed);
  header_->writer_attaches.store(1, std::memory_order_relaxed);
  header_->reader_slot_limit.store(opts_.reader_slots, std::memory_order_relaxed);
  groups_ = reinterpret_cast<Group*>(base_ + g.groups_offset);
  partitions_ = reinterpret_cast<PartitionState*>(base_ + g.partitions_offset);
  log_ =
      opts_.change_log_entries > 0 ? reinterpret_cast<ChangeEntry*>(base_ + g.log_offset) : nullptr;
  log_pos_ = 0;
  for (uint32_t p = 0; p < partition_capacity; ++p)
    partitions_[p].last_offset.store(-1, std::memory_order_relaxed);
  view_ = TableView(base_, *header_);
  if (attach_kind_ != AttachKind::kReplaced) attach_kind_ = AttachKind::kCreated;
}

Result<void> TableWriter::attach_existing() {
  base_ = data_->data();
  KVS_UNPOISON(base_, data_->size());  // see ~TableWriter
  header_ = reinterpret_cast<TableHeader*>(base_);
  groups_ = reinterpret_cast<Group*>(base_ + header_->groups_offset);
  partitions_ = reinterpret_cast<PartitionState*>(base_ + header_->partitions_offset);
  log_ = header_->log_entries > 0 ? reinterpret_cast<ChangeEntry*>(base_ + header_->log_offset)
                                  : nullptr;
  log_pos_ = header_->log_head.load(std::memory_order_relaxed);
  view_ = TableView(base_, *header_);
  if (auto ok = rebuild_allocator(); !ok) return ok;
  recover_log();
  recover_digest();
  header_->writer_pid.store(::getpid(), std::memory_order_relaxed);
  header_->writer_attaches.fetch_add(1, std::memory_order_relaxed);
  // The segment under the table's name is the current one: a flag left by a
  // writer that died while replacing it does not stand.
  header_->replaced.store(0, std::memory_order_release);
  header_->reader_slot_limit.store(opts_.reader_slots, std::memory_order_relaxed);
  // Processes that slept for the previous writer announce themselves to
  // this one (its wait socket is new).
  wake_all();
  attach_kind_ = AttachKind::kAttached;
  return {};
}

// A writer that died logged the changes it made (and may have published
// their records' offsets, which are not applied again) without publishing
// the log's head. It never overwrote an entry past the head, so the whole
// changes past it are its own, in order: they are kept (those of records
// applied again are then logged twice), a torn one at their end is
// written over. What lies beyond them is cleared: entries that an earlier
// writer logged and never published, which a later recovery must not take
// for this writer's. A ring the dead writer did overwrite past the head
// (a kvsd that did not publish mid-batch) holds changes no chain can
// reach: the head moves past every position there, so that watchers read
// KVS_CHANGE_LOST instead of a gap.
void TableWriter::recover_log() {
  if (log_ == nullptr) return;
  const uint64_t n = header_->log_entries;
  const uint64_t head = log_pos_;
  uint64_t end = 0;  // past the highest position an entry holds
  for (uint64_t i = 0; i < n; ++i)
    end = std::max(end, log_[i].w[0].load(std::memory_order_relaxed));
  // Changes are logged in order, so an entry past the head with the head's
  // own entry not whole means the head's slot was written again: a lap
  // (whose first lapping entry may be the torn one, holding 0).
  const bool lapped =
      end > head + n ||
      (end > head + 1 && log_[head % n].w[0].load(std::memory_order_relaxed) != head + 1);
  if (lapped) {
    log_pos_ = end;
  } else {
    log_pos_ = whole_changes_from(head);
    for (uint64_t i = 0; i < n; ++i) {
      auto& w0 = log_[i].w[0];
      if (w0.load(std::memory_order_relaxed) > log_pos_) w0.store(0, std::memory_order_relaxed);
    }
  }
  header_->log_head.store(log_pos_, std::memory_order_release);
}

// Rebuilds free space from the live set: every slot's block is live; every
// other carved block may still be seen by a reader of the previous writer, so
// it is retired rather than freed. Here only the index is read (it must be
// sound before anything is written); the arena is walked later, a slice per
// reclaim() (continue_attach_walk).
Result<void> TableWriter::rebuild_allocator() {
  const uint64_t begin = header_->arena_offset;
  const uint64_t used = header_->arena_used.load(std::memory_order_acquire);
  auto corrupt = [&](const std::string& what) {
    return make_error(Errc::kCorrupt, shm::path_of(data_->name) + ": " + what);
  };
  if (used > header_->arena_bytes || used % kBlockAlign != 0)
    return corrupt("arena_used out of range");
  const uint64_t units = used / kBlockAlign;
  std::vector<uint64_t> live((units + 63) / 64, 0);
  uint64_t count = 0;
  for (uint64_t g = 0; g < header_->group_count; ++g) {
    for (int i = 0; i < kSlotsPerGroup; ++i) {
      const uint64_t w = groups_[g].slots[i].load(std::memory_order_relaxed);
      if (w == 0) continue;
      const uint64_t off = slot_offset(w);
      if (off < begin || off >= begin + used) return corrupt("a slot points outside the arena");
      if ((off - begin) % kBlockAlign != 0) return corrupt("a slot points between blocks");
      const uint64_t u = (off - begin) / kBlockAlign;
      if (live[u / 64] & (uint64_t{1} << (u % 64))) return corrupt("two slots share a block");
      live[u / 64] |= uint64_t{1} << (u % 64);
      ++count;
    }
  }
  free_.clear();
  retired_.clear();
  free_bytes_ = retired_bytes_ = 0;
  leaked_at_attach_ = 0;
  walk_ = AttachWalk{std::move(live), begin, begin + used, {}, 0, {}, 0};
  unchecked_end_ = begin + used;
  walk_report_.reset();
  live_delta_ = 0;
  live_at_attach_ = 0;
  live_exact_ = false;
  header_->size.store(count, std::memory_order_relaxed);
  return {};
}

// Blocks are never split or merged once carved, and [walk_.pos, walk_.end)
// was carved before this writer attached, so the chain of block sizes there
// is fixed: it can be walked at any time. A block whose bit is set was live
// at attach (it may have been retired, freed and reused since: all through
// this writer, which knows it); any other block is one the previous writer
// had free or retired. Those are retired only when the whole walk has met
// every live bit at a block's start: a chain that is off would otherwise
// hand out bytes of a live entry.
bool TableWriter::continue_attach_walk(uint64_t max_bytes) {
  if (!walk_.pending()) return false;
  const uint64_t begin = header_->arena_offset;
  const uint64_t stop = walk_.end - walk_.pos <= max_bytes ? walk_.end : walk_.pos + max_bytes;
  auto fail = [&](const std::string& what) {
    walk_report_ = AttachWalkReport{true, 0, 0,
                                    shm::path_of(data_->name) + ": " + what + "; the " +
                                        std::to_string(walk_.leaked.size() + walk_.held.size()) +
                                        " blocks found unreferenced or replaced since, and the " +
                                        std::to_string(walk_.end - walk_.pos) +
                                        " bytes not walked, stay unused"};
    walk_ = AttachWalk{};
    return false;
  };
  while (walk_.pos < stop) {
    const uint64_t pos = walk_.pos;
    const uint32_t bb = block_bytes(pos);
    if (bb < block_bytes_for(0, 0) || bb % kBlockAlign != 0 || bb > walk_.end - pos) {
      return fail("arena block at " + std::to_string(pos) + " has size " + std::to_string(bb));
    }
    const uint64_t u = (pos - begin) / kBlockAlign;
    uint64_t& word = walk_.live[u / 64];
    const uint64_t bit = uint64_t{1} << (u % 64);
    if (word & bit) {
      word &= ~bit;
      walk_.live_bytes += bb;
    } else {
      walk_.leaked.push_back(pos);
      walk_.leaked_bytes += bb;
    }
    walk_.pos = pos + bb;
  }
  if (walk_.pending()) return true;
  for (uint64_t word : walk_.live) {
    if (word != 0) return fail("a slot points into the middle of a block");
  }
  const uint64_t epoch = header_->epoch.load(std::memory_order_relaxed);
  for (uint64_t off : walk_.leaked) retired_.push_back({off, epoch});
  retired_bytes_ += walk_.leaked_bytes;
  for (uint64_t off : walk_.held) {
    retired_.push_back({off, epoch});
    retired_bytes_ += block_bytes(off);
  }
  leaked_at_attach_ = walk_.leaked.size();
  unchecked_end_ = 0;
  live_at_attach_ = walk_.live_bytes;
  live_exact_ = true;
  walk_report_ = AttachWalkReport{false, walk_.leaked.size(), walk_.leaked_bytes,
                                  std::to_string(walk_.leaked.size()) + " unreferenced blocks (" +
                                      std::to_string(walk_.leaked_bytes) +
                                      " bytes) left by the previous writer are reusable"};
  walk_ = AttachWalk{};
  return false;
}

std::optional<AttachWalkReport> TableWriter::take_attach_walk_report() {
  return std::exchange(walk_report_, std::nullopt);
}

}  // namespace kvs
