#include "writer/table_writer.hpp"

#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <unordered_map>
#include <utility>

#include "format/sanitizers.hpp"

#ifdef KVS_ASAN
#include <sanitizer/asan_interface.h>
#define KVS_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define KVS_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define KVS_POISON(p, n) ((void)(p), (void)(n))
#define KVS_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace kvs {
using namespace format;

namespace {

constexpr auto kSweepInterval = std::chrono::seconds(1);
// Retired bytes past which reclaim() reads the registry whenever it is called.
constexpr uint64_t kScanBytes = 1 << 20;

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
  auto seg = shm::segment_name(options.shm_prefix, options.table);
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
      if (auto ok = w->attach_existing(); ok) return w;
      stale = std::move(w->data_);
      KVS_UNPOISON(stale->data(), stale->size());  // see ~TableWriter
    }
    w->attach_kind_ = AttachKind::kReplaced;
  } else if (data.error().code != Errc::kNoTable && data.error().code != Errc::kCorrupt) {
    return std::move(data).error().context("opening table " + options.table);
  }

  // A segment of another layout or a corrupt one stays as it is for the
  // readers that have it mapped; the new one takes its name atomically.
  if (auto ok = w->create_temp(*seg); !ok) return std::move(ok).error();
  w->init_new(options.capacity, options.partition_capacity, options.arena_bytes);
  // Readers of the inconsistent one learn that a new one takes its name
  // (flag first, as in publish_replacement).
  if (stale) {
    reinterpret_cast<TableHeader*>(stale->data())->replaced.store(1, std::memory_order_release);
  }
  if (auto ok = shm::rename_segment(w->data_->name, *seg); !ok) {
    shm::remove_segment(w->data_->name);
    return std::move(ok).error();
  }
  w->data_->name = *seg;
  return w;
}

Result<void> TableWriter::create_temp(const std::string& segment) {
  const Geometry g = geometry(opts_.capacity, opts_.partition_capacity, opts_.arena_bytes);
  const std::string tmp = temp_name(segment);
  auto created = shm::create_segment(tmp, g.segment_bytes, opts_.data_mode, opts_.group);
  if (!created) return std::move(created).error().context("creating table " + opts_.table);
  data_ = std::move(*created);
  return {};
}

void TableWriter::remove_stale_temps(const std::string& segment) {
  // "<segment>.new.<pid>.<random>", see temp_name(). Called from open(),
  // under the writer lock and before this writer began any replacement: every
  // one there is a leftover of a writer that is gone.
  const std::string prefix = segment + ".new.";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with(prefix)) shm::remove_segment(name);
  }
}

Result<std::unique_ptr<TableWriter>> TableWriter::begin_replacement() {
  std::unique_ptr<TableWriter> w(new TableWriter());
  w->opts_ = opts_;
  w->roster_ = roster_;
  w->segment_ = segment_;
  if (auto ok = w->create_temp(segment_); !ok) return std::move(ok).error();
  w->init_new(opts_.capacity, opts_.partition_capacity, opts_.arena_bytes);
  // Readers announce epochs per segment (their files name its incarnation),
  // so the new segment's epochs start afresh.
  return w;
}

Result<void> TableWriter::publish_replacement(TableWriter& next) {
  // The flag before the rename: a writer that dies in between leaves a
  // flagged segment under the name, which the next writer clears when it
  // attaches; the other order could strand readers on a segment no longer
  // named, with nothing telling them to move. A reader that sees the flag
  // before the rename finds the same segment and tries again a second later.
  header_->replaced.store(1, std::memory_order_release);
  if (auto ok = shm::rename_segment(next.data_->name, segment_); !ok) {
    header_->replaced.store(0, std::memory_order_release);
    return ok;
  }
  next.data_->name = segment_;
  return {};
}

std::string TableWriter::size_change() const {
  const Geometry g = geometry(opts_.capacity, opts_.partition_capacity, opts_.arena_bytes);
  std::string what;
  auto note = [&](const char* name, uint64_t was, uint64_t now) {
    if (was == now) return;
    what += (what.empty() ? "" : ", ") + std::string(name) + " " + std::to_string(was) + " -> " +
            std::to_string(now);
  };
  note("capacity", header_->capacity, opts_.capacity);
  note("arena bytes", header_->arena_bytes, g.arena_bytes);
  note("max_partitions", header_->partition_capacity, opts_.partition_capacity);
  return what;
}

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

TableWriter::~TableWriter() {
  if (header_) header_->writer_pid.store(0, std::memory_order_relaxed);
  // ASan keeps the shadow of unmapped memory: a later mapping at this
  // address would inherit the poison of free blocks.
  if (data_) KVS_UNPOISON(data_->data(), data_->size());
}

void TableWriter::init_new(uint64_t capacity, uint32_t partition_capacity, uint64_t arena_bytes) {
  const Geometry g = geometry(capacity, partition_capacity, arena_bytes);
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
  view_ = TableView(base_, *header_);
  if (auto ok = rebuild_allocator(); !ok) return ok;
  header_->writer_pid.store(::getpid(), std::memory_order_relaxed);
  header_->writer_attaches.fetch_add(1, std::memory_order_relaxed);
  // The segment under the table's name is the current one: a flag left by a
  // writer that died while replacing it does not stand.
  header_->replaced.store(0, std::memory_order_release);
  header_->reader_slot_limit.store(opts_.reader_slots, std::memory_order_relaxed);
  attach_kind_ = AttachKind::kAttached;
  return {};
}

uint32_t TableWriter::block_bytes(uint64_t offset) const {
  uint32_t b;
  std::memcpy(&b, base_ + offset, sizeof b);
  return b;
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
  walk_ = AttachWalk{std::move(live), begin, begin + used, {}, 0, {}};
  unchecked_end_ = begin + used;
  walk_report_.reset();
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
  if (used + bytes <= header_->arena_bytes) {
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
                                                Origin origin) {
  return value ? put_from(key, *value, origin) : erase_from(key, origin);
}

Origin TableWriter::origin_of(uint64_t word) const {
  BlockHeader h;
  std::memcpy(&h, base_ + slot_offset(word), sizeof h);
  return Origin{h.timestamp_ms, h.partition};
}

Result<TableWriter::Applied> TableWriter::put_from(std::string_view key, std::string_view value,
                                                   std::optional<Origin> origin) {
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
                                            std::to_string(header_->capacity) +
                                            " entries; raise the table's capacity");
  }
  const uint64_t need = block_bytes_for(key.size(), value.size());
  uint64_t off = allocate(need);
  if (off == 0) {
    // The arena's end is reached: what an attach walk would find is needed now.
    continue_attach_walk(UINT64_MAX);
    scan_and_free(std::chrono::steady_clock::now());
    off = allocate(need);
  }
  if (off == 0 && retired_bytes_ >= need) {
    return make_error(Errc::kBusy, "arena of table " + opts_.table + " has " +
                                       std::to_string(retired_bytes_) +
                                       " bytes waiting for readers to finish their reads; retry");
  }
  if (off == 0) {
    return make_error(Errc::kTableFull, "arena of table " + opts_.table +
                                            " is full: " + std::to_string(header_->arena_bytes) +
                                            " bytes, " + std::to_string(free_bytes_) +
                                            " free in blocks too small, " +
                                            std::to_string(retired_bytes_) +
                                            " waiting for readers; raise the table's memory limit");
  }
  const Origin from = origin.value_or(Origin{});
  const BlockHeader h{block_bytes(off), static_cast<uint32_t>(key.size()),
                      static_cast<uint32_t>(value.size()), from.partition, from.timestamp_ms};
  std::memcpy(base_ + off, &h, sizeof h);
  if (!key.empty()) std::memcpy(base_ + off + sizeof h, key.data(), key.size());
  if (!value.empty()) std::memcpy(base_ + off + sizeof h + key.size(), value.data(), value.size());
  const uint64_t word = make_slot(hash_tag(hash), off);

  if (found == Lookup::kFound) {
    // release: the entry is complete before a reader can load its slot.
    groups_[where.group].slots[where.slot].store(word, std::memory_order_release);
    retire(slot_offset(where.word));
  } else {
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
    groups_[g].slots[slot].store(word, std::memory_order_release);
    header_->size.store(size + 1, std::memory_order_relaxed);
  }
  header_->puts.fetch_add(1, std::memory_order_relaxed);
  return Applied::kApplied;
}

Result<TableWriter::Applied> TableWriter::erase_from(std::string_view key,
                                                     std::optional<Origin> origin) {
  const uint64_t hash = hash_key(key.data(), key.size());
  EntryRef old;
  SlotRef where;
  switch (view_.find(key.data(), key.size(), hash, &old, &where)) {
    case Lookup::kAbsent:
      return Applied::kAbsent;
    case Lookup::kCorrupt:
      return make_error(Errc::kCorrupt, shm::path_of(data_->name) + ": index probe failed");
    case Lookup::kFound:
      break;
  }
  if (origin && !replaces(*origin, origin_of(where.word))) return Applied::kSuperseded;
  groups_[where.group].slots[where.slot].store(0, std::memory_order_release);
  // Overflow counts drop after the slot is cleared: a crash in between leaves
  // them too high, which only lengthens some probes.
  const uint64_t home = home_group(hash, header_->group_count);
  for (uint64_t p = home; p != where.group; p = (p + 1 == header_->group_count) ? 0 : p + 1) {
    groups_[p].overflow.store(groups_[p].overflow.load(std::memory_order_relaxed) - 1,
                              std::memory_order_relaxed);
  }
  retire(slot_offset(where.word));
  header_->size.fetch_sub(1, std::memory_order_relaxed);
  header_->erases.fetch_add(1, std::memory_order_relaxed);
  return Applied::kApplied;
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
  if (retired_.empty()) return 0;
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
  return {};
}

void TableWriter::set_next_offset(uint32_t partition, int64_t next_offset) {
  auto& ps = partitions_[partition];
  // release: every record below next_offset is visible before the offset is
  // (DESIGN.md invariant 3).
  ps.next_offset.store(next_offset, std::memory_order_release);
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

void TableWriter::set_state(TableState state) {
  header_->state.store(static_cast<uint32_t>(state), std::memory_order_release);
}

void TableWriter::count_skipped() { header_->skipped.fetch_add(1, std::memory_order_relaxed); }

WriterStats TableWriter::stats() const {
  WriterStats s;
  s.size = header_->size.load(std::memory_order_relaxed);
  s.arena_used = header_->arena_used.load(std::memory_order_relaxed);
  s.arena_bytes = header_->arena_bytes;
  s.free_bytes = free_bytes_;
  s.retired_bytes = retired_bytes_;
  s.dead_readers_recovered = roster_->dead_removed();
  s.leaked_blocks_at_attach = leaked_at_attach_;
  s.attach_walk_pending_bytes = walk_.end - walk_.pos;
  s.holder = holder_;
  return s;
}

}  // namespace kvs
