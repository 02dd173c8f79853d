#include "growth.hpp"

#include <algorithm>
#include <cstdio>

#include "log.hpp"

namespace kvs::daemon {

using namespace std::chrono_literals;

// A growth copies this long per round of the apply loop, so that records
// go on being applied meanwhile.
static constexpr auto kCopySlice = 2ms;
static constexpr uint64_t kCopyGroups = 512;  // between looks at the clock

static std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

static uint64_t segment_bytes(TableSize s, uint32_t partition_capacity, uint64_t log_entries) {
  return format::geometry(s.capacity, partition_capacity, s.arena_bytes, log_entries).segment_bytes;
}

static bool fits(TableSize s, uint64_t max_bytes, uint32_t partition_capacity,
                 uint64_t log_entries) {
  return format::geometry_in_bounds(s.capacity, partition_capacity, s.arena_bytes, log_entries) &&
         (max_bytes == 0 || segment_bytes(s, partition_capacity, log_entries) <= max_bytes);
}

std::optional<TableSize> bootstrap_projection(const WriterStats& st, uint64_t applied,
                                              uint64_t remaining) {
  if (applied == 0 || remaining == 0) return std::nullopt;
  const double scale = 1.1 * (static_cast<double>(applied) + static_cast<double>(remaining)) /
                       static_cast<double>(applied);
  const double cap = static_cast<double>(format::kMaxCapacity);
  const double arena = static_cast<double>(format::kMaxArenaBytes);
  return TableSize{
      static_cast<uint64_t>(std::min(cap, static_cast<double>(st.size) * scale)),
      static_cast<uint64_t>(std::min(arena, static_cast<double>(st.live_bytes) * scale))};
}

std::optional<TableSize> plan_growth(const WriterStats& st, uint64_t need, uint64_t max_bytes,
                                     uint32_t partition_capacity, uint64_t log_entries,
                                     std::optional<TableSize> expected) {
  if (expected) {
    // Both dimensions to what the table is expected to hold, and at least
    // what plain growth would give.
    auto plain = plan_growth(st, need, max_bytes, partition_capacity, log_entries);
    if (plain) {
      TableSize s{std::max(plain->capacity, expected->capacity),
                  format::align_up(std::max(plain->arena_bytes, expected->arena_bytes), 4096)};
      if (fits(s, max_bytes, partition_capacity, log_entries)) return s;
    }
    return plain;
  }
  const bool index_short = st.size >= st.capacity;
  // Compacted by the copy: the live entries and the record, with room.
  const uint64_t arena_floor = st.live_bytes + need;
  // The other dimension doubles with it when it is over half used, so that
  // it does not force the next copy soon after.
  const bool other_half_used =
      index_short ? 2 * st.live_bytes > st.arena_bytes : 2 * st.size > st.capacity;
  for (int both = other_half_used ? 1 : 0; both >= 0; --both) {
    for (int shift = 0; shift <= 3; ++shift) {
      TableSize s{st.capacity, std::max(st.arena_bytes, arena_floor)};
      if (index_short || both) {
        s.capacity = st.capacity + std::max<uint64_t>(1, st.capacity >> (index_short ? shift : 0));
      }
      if (!index_short || both) {
        const uint64_t step = st.arena_bytes >> (index_short ? 0 : shift);
        s.arena_bytes = std::max(st.arena_bytes + step, arena_floor + need);
      }
      s.arena_bytes = format::align_up(s.arena_bytes, 4096);
      if (fits(s, max_bytes, partition_capacity, log_entries)) return s;
    }
  }
  return std::nullopt;
}

std::optional<TableSize> plan_resize(const WriterStats& st, const config::TableConfig& cfg) {
  if (!st.live_bytes_exact) return std::nullopt;
  const TableSize want{std::max(cfg.capacity, 2 * st.size),
                       format::align_up(std::max(cfg.memory_limit_bytes, 2 * st.live_bytes), 4096)};
  const bool small = st.capacity < cfg.capacity || st.arena_bytes < cfg.memory_limit_bytes;
  const bool large = st.capacity > 2 * want.capacity || st.arena_bytes > 2 * want.arena_bytes;
  const bool over = cfg.max_memory_bytes != 0 && st.segment_bytes > cfg.max_memory_bytes;
  if (!small && !large && !over) return std::nullopt;
  // Only the short dimension grows, only the oversized one shrinks (both
  // when over the limit).
  TableSize s{st.capacity, st.arena_bytes};
  if (over || st.capacity < cfg.capacity || st.capacity > 2 * want.capacity) {
    s.capacity = want.capacity;
  }
  if (over || st.arena_bytes < cfg.memory_limit_bytes || st.arena_bytes > 2 * want.arena_bytes) {
    s.arena_bytes = want.arena_bytes;
  }
  if (!fits(s, cfg.max_memory_bytes, cfg.max_partitions, cfg.change_log_entries))
    return std::nullopt;
  return s;
}

TableSize rebuild_size(const WriterStats& st, const config::TableConfig& cfg) {
  TableSize s{
      std::max(cfg.capacity, st.size + st.size / 2),
      format::align_up(std::max(cfg.memory_limit_bytes, st.live_bytes + st.live_bytes / 2), 4096)};
  if (!fits(s, cfg.max_memory_bytes, cfg.max_partitions, cfg.change_log_entries))
    s = {cfg.capacity, cfg.memory_limit_bytes};
  return s;
}

std::optional<TableSize> seed_size(uint64_t entries, uint64_t live_bytes,
                                   const config::TableConfig& cfg) {
  for (const double factor : {1.5, 1.25, 1.1, 1.0}) {
    const TableSize s{
        std::max(cfg.capacity, static_cast<uint64_t>(static_cast<double>(entries) * factor)),
        format::align_up(std::max(cfg.memory_limit_bytes,
                                  static_cast<uint64_t>(static_cast<double>(live_bytes) * factor)),
                         4096)};
    if (fits(s, cfg.max_memory_bytes, cfg.max_partitions, cfg.change_log_entries)) return s;
  }
  return std::nullopt;
}

std::optional<TableSize> seeded_projection(WriterStats st, uint64_t seed_entries,
                                           uint64_t seed_live_bytes, uint64_t applied,
                                           uint64_t remaining) {
  st.size -= std::min(st.size, seed_entries);
  st.live_bytes -= std::min(st.live_bytes, seed_live_bytes);
  auto grown = bootstrap_projection(st, applied, remaining);
  if (!grown) return grown;
  grown->capacity = std::min(grown->capacity + seed_entries, format::kMaxCapacity);
  grown->arena_bytes = std::min(grown->arena_bytes + seed_live_bytes, format::kMaxArenaBytes);
  return grown;
}

// Starts copying t.writer into a segment of `size` (records go to it).
static Result<void> start_resize(Replica& t, TableSize size, const char* what) {
  const WriterStats st = t.writer->stats();
  auto next = t.writer->begin_resize(size);
  if (!next) return std::move(next).error();
  enter_growth(t, std::move(*next));
  t.growth = Replica::Growth{t.writer->size(), clock::now(), st.size, t.applied};
  KVS_LOG_INFO(
      "table %s: %s from %llu entries and %s of arena to %llu entries and %s (%s of /dev/shm); "
      "copying its %llu entries while records go on being applied",
      t.cfg.name.c_str(), what, static_cast<unsigned long long>(st.capacity),
      mib(st.arena_bytes).c_str(), static_cast<unsigned long long>(size.capacity),
      mib(size.arena_bytes).c_str(), mib(t.grow->header().segment_bytes).c_str(),
      static_cast<unsigned long long>(st.size));
  return {};
}

// A rebuild's segment has no readers yet: it is copied into the larger one
// at once.
static Result<void> grow_rebuild(Replica& t, TableSize size) {
  auto next = t.rebuild->begin_resize(size);
  if (!next) return std::move(next).error();
  if (auto ok = (*next)->copy_rest(); !ok) return ok;
  KVS_LOG_INFO("table %s: the segment being rebuilt grew to %llu entries and %s of arena",
               t.cfg.name.c_str(), static_cast<unsigned long long>(size.capacity),
               mib(size.arena_bytes).c_str());
  replace_rebuild(t, std::move(*next));
  return {};
}

// A growth whose copy is complete: the new segment takes the table's name.
static Result<void> publish_growth(Replica& t) {
  t.grow->set_hold(t.n_held, t.hold_reason);
  const uint64_t copied = t.growth.entries;
  if (auto ok = publish_growth_segment(t); !ok) return ok;
  const auto ms = std::chrono::duration<double, std::milli>(clock::now() - t.growth.since).count();
  KVS_LOG_INFO(
      "table %s: grown to %llu entries and %s of arena: %llu entries copied in %.0f ms; "
      "readers moved to the new segment",
      t.cfg.name.c_str(), static_cast<unsigned long long>(t.writer->size().capacity),
      mib(t.writer->size().arena_bytes).c_str(), static_cast<unsigned long long>(copied), ms);
  return {};
}

Result<void> grow(Replica& t, uint64_t need) {
  if (t.phase == Phase::kGrowing) {
    // The grown segment is full too: it is completed and swapped in first.
    if (auto ok = t.grow->copy_rest(); !ok) return ok;
    if (auto ok = publish_growth(t); !ok) return ok;
  }
  TableWriter& full = t.active();
  const WriterStats st = full.stats();
  std::optional<TableSize> expected;
  if (t.phase != Phase::kReady) {
    uint64_t remaining = 0;
    for (int32_t p = 0; p < t.partition_count(); ++p) {
      const int64_t next = full.next_offset(static_cast<uint32_t>(p));
      if (t.parts[p].target > next) remaining += static_cast<uint64_t>(t.parts[p].target - next);
    }
    expected = t.phase == Phase::kSeeded
                   ? seeded_projection(st, t.seed.entries, t.seed.live_bytes, t.applied, remaining)
                   : bootstrap_projection(st, t.applied, remaining);
  }
  const auto size = plan_growth(st, need, t.cfg.max_memory_bytes, full.header().partition_capacity,
                                t.cfg.change_log_entries, expected);
  if (!size) {
    t.at_limit = true;
    return make_error(Errc::kTableFull,
                      "table " + t.cfg.name +
                          " reached max_memory_bytes = " + std::to_string(t.cfg.max_memory_bytes) +
                          ": its segment of " + std::to_string(st.segment_bytes) + " bytes holds " +
                          std::to_string(st.size) + " entries (" + mib(st.live_bytes) +
                          ") and cannot grow; raise max_memory_bytes and restart kvsd");
  }
  t.at_limit = false;
  if (replacing(t.phase)) return grow_rebuild(t, *size);
  return start_resize(t, *size, "growing");
}

// The growth cannot go on: the records applied to the new segment are
// applied again to the table's segment, from its recorded positions. A
// source whose index is corrupt is rebuilt from the topic instead.
static bool abandon_growth(Replica& t, kafka::Consumer& c, const Error& e) {
  leave_growth(t);
  if (e.code == Errc::kCorrupt) {  // the source: rebuilt from the topic
    if (auto ok = start_rebuild(t, c, "copying it into a larger segment found " + e.message,
                                /*seek=*/true);
        !ok) {
      KVS_LOG_ERROR("%s", ok.error().message.c_str());
      return false;
    }
    return true;
  }
  KVS_LOG_ERROR(
      "table %s: growing the table failed (%s); it stays at its size, and records "
      "since the growth began are applied again",
      t.cfg.name.c_str(), e.message.c_str());
  // What the dropped segment applied is applied again.
  for (int32_t p = 0; p < t.partition_count(); ++p) {
    const int64_t next = t.writer->next_offset(static_cast<uint32_t>(p));
    t.parts[p].forget_fetched();
    (void)c.stop_partition(t.cfg.topic, p);
    if (auto ok = c.start_partition(t.cfg.topic, p, next > 0 ? next : RD_KAFKA_OFFSET_BEGINNING);
        !ok) {
      KVS_LOG_ERROR("table %s: %s", t.cfg.name.c_str(), ok.error().message.c_str());
      return false;
    }
  }
  // Progress is the table segment's.
  t.n_held = 0;
  t.applied = t.growth.applied;
  for (int32_t p = 0; p < t.partition_count(); ++p) {
    t.parts[p].reached = t.writer->next_offset(static_cast<uint32_t>(p)) >= t.parts[p].target;
  }
  t.writer->set_hold(0, format::HoldReason::kNone);
  t.skip_batch = true;
  return true;
}

bool continue_growth(Replica& t, kafka::Consumer& c) {
  if (t.phase != Phase::kGrowing) return true;
  const auto until = clock::now() + kCopySlice;
  for (;;) {
    auto done = t.grow->copy_step(kCopyGroups);
    if (!done) return abandon_growth(t, c, done.error());
    if (*done) break;
    if (clock::now() >= until) return true;
  }
  if (auto ok = publish_growth(t); !ok) return abandon_growth(t, c, ok.error());
  return true;
}

void resize_if_due(Replica& t) {
  if (t.resize_checked || (t.phase != Phase::kReady && t.phase != Phase::kBootstrapping)) return;
  const WriterStats st = t.writer->stats();
  if (!st.live_bytes_exact) return;  // the attach walk has not ended yet
  t.resize_checked = true;
  const auto size = plan_resize(st, t.cfg);
  if (!size) {
    if (t.cfg.max_memory_bytes != 0 && st.segment_bytes > t.cfg.max_memory_bytes) {
      KVS_LOG_WARN(
          "table %s: its segment of %llu bytes is larger than max_memory_bytes = %llu "
          "and its entries need too much to make it smaller; it keeps its size",
          t.cfg.name.c_str(), static_cast<unsigned long long>(st.segment_bytes),
          static_cast<unsigned long long>(t.cfg.max_memory_bytes));
    }
    return;
  }
  const bool smaller = size->capacity < st.capacity || size->arena_bytes < st.arena_bytes;
  if (auto ok = start_resize(t, *size,
                             smaller ? "resizing (it holds far less than it once did)"
                                     : "resizing to the configured size");
      !ok) {
    KVS_LOG_WARN("table %s: %s; it keeps its size", t.cfg.name.c_str(), ok.error().message.c_str());
  }
}

}  // namespace kvs::daemon
