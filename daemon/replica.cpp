// One table's replica: applying consumed records to it, and the records
// that wait for room (holds). Its phase is in phase.cpp; following the
// topic (start, rebuilds, partitions gained or lost, the check of the last
// record applied) in following.cpp; READY and what kvsd reports about a
// table in readiness.cpp.
#include "replica.hpp"

#include <algorithm>
#include <cstdio>

#include "growth.hpp"
#include "log.hpp"

namespace kvs::daemon {

volatile sig_atomic_t g_stop = 0;

using format::HoldReason;
using namespace std::chrono_literals;

// A record that has waited this long for readers to free room makes the
// table grow instead (growth.hpp): readers' reads end within microseconds,
// so one that holds room back this long is stuck.
static constexpr auto kGrowPastReadersAfter = 1s;

int64_t timestamp_ms(const rd_kafka_message_t* m) {
  const int64_t ms = rd_kafka_message_timestamp(m, nullptr);
  return ms > 0 ? ms : 0;
}

bool needs_room(Errc code) {
  return code == Errc::kBusy || code == Errc::kTableFull || code == Errc::kNoMemory;
}

static HoldReason reason_of(Replica& t, Errc code) {
  if (code == Errc::kBusy) return HoldReason::kReaders;
  if (code == Errc::kNoMemory) return HoldReason::kNoSpace;
  if (t.at_limit) return HoldReason::kLimit;
  TableWriter& w = t.active();
  return w.stats().size >= w.header().capacity ? HoldReason::kCapacity : HoldReason::kMemory;
}

// With one partition a key's records are in offset order: nothing to
// remember. With more, a tombstone's origin is kept until a record of its
// key replaces it (see Tombstones).
Result<void> apply_to(Replica& t, std::string_view key, const char* payload, size_t len,
                      format::Origin origin, int64_t offset) {
  using Applied = TableWriter::Applied;
  // The key's hash only when a tombstone is remembered or looked up: most
  // records of most tables need none.
  const bool tombstone = payload == nullptr;
  const bool track = t.partition_count() > 1 && (tombstone || t.tombstones.size() > 0);
  const KeyId id = track ? key_id(key) : KeyId{};
  if (track && !tombstone && t.tombstones.wins_over(id, origin)) return {};
  std::optional<std::string_view> value;
  if (!tombstone) value.emplace(payload, len);
  auto r = t.active().apply(key, value, origin, offset);
  if (!r) return std::move(r).error();
  if (track && *r != Applied::kSuperseded) {
    if (tombstone) {
      t.tombstones.remember(id, origin);
    } else {
      t.tombstones.forget(id);
    }
  }
  return {};
}

// A record that finds its table full makes the table grow (growth.hpp) and
// is applied to the larger segment. A growth that fails for another reason
// than room (a descriptor limit, a corrupt arena that a rebuild will
// replace) leaves the record waiting, as a full table does.
static Result<void> apply_or_grow(Replica& t, std::string_view key, const char* payload, size_t len,
                                  format::Origin origin, int64_t offset) {
  auto r = apply_to(t, key, payload, len, origin, offset);
  if (r || r.error().code != Errc::kTableFull) return r;
  auto grown = grow(t, format::block_bytes_for(key.size(), payload ? len : 0));
  if (grown) return apply_to(t, key, payload, len, origin, offset);
  if (needs_room(grown.error().code)) return grown;
  const auto now = clock::now();
  if (now >= t.next_grow_error_log) {
    t.next_grow_error_log = now + 10s;
    KVS_LOG_ERROR("table %s: growing the table: %s", t.cfg.name.c_str(),
                  grown.error().message.c_str());
  }
  return r;
}

void note_skipped(Replica& t, int32_t p, int64_t offset, const Error& e) {
  ++t.skipped;
  t.active().count_skipped();
  KVS_LOG_WARN("table %s: skipped %s[%d] offset %lld: %s", t.cfg.name.c_str(), t.cfg.topic.c_str(),
               p, static_cast<long long>(offset), e.message.c_str());
}

static void publish_hold(Replica& t) {
  t.writer->set_hold(t.n_held, t.hold_reason);
  if (t.rebuild) t.rebuild->set_hold(t.n_held, t.hold_reason);
  if (t.grow) t.grow->set_hold(t.n_held, t.hold_reason);
}

// At most one line about holds per table per 10 s; the suffix counts the
// ones not logged.
static std::optional<std::string> hold_log_due(Replica& t, clock::time_point now) {
  if (now < t.next_hold_log) {
    ++t.holds_unlogged;
    return std::nullopt;
  }
  t.next_hold_log = now + 10s;
  const uint64_t n = std::exchange(t.holds_unlogged, 0);
  return n == 0 ? std::string() : " (" + std::to_string(n) + " holds and resumes not logged)";
}

// Record m of t needs room the table does not have: it waits in t.held, and
// its partition is not fetched until it is applied (what was fetched after
// it is dropped and fetched again), so that the table's other partitions
// and the other tables go on and nothing spins.
// False if the partition could not be stopped (kvsd cannot go on).
bool hold(Replica& t, kafka::Consumer& c, const rd_kafka_message_t* m, const Error& e) {
  const int32_t p = m->partition;
  const auto now = clock::now();
  Held& h = t.parts[p].held;
  h.offset = m->offset;
  h.timestamp_ms = timestamp_ms(m);
  h.tombstone = m->payload == nullptr;
  h.key.assign(static_cast<const char*>(m->key), m->key_len);
  h.value.assign(h.tombstone ? "" : static_cast<const char*>(m->payload), h.tombstone ? 0 : m->len);
  h.reason = reason_of(t, e.code);
  h.since = now;
  h.backoff = h.reason == HoldReason::kReaders ? 1ms : 100ms;
  h.next_try = now + h.backoff;
  ++t.n_held;
  t.hold_reason = h.reason;
  t.parts[p].pending = -1;
  publish_hold(t);
  if (auto ok = c.stop_partition(t.cfg.topic, p); !ok) {
    KVS_LOG_ERROR("table %s: %s", t.cfg.name.c_str(), ok.error().message.c_str());
    return false;
  }
  const auto suffix = hold_log_due(t, now);
  if (!suffix) return true;
  std::string who;
  if (h.reason == HoldReason::kReaders) {
    const WriterStats st = t.active().stats();
    if (st.holder.epoch != 0) who = "; " + describe_holder(st.holder, st.retired_bytes);
  }
  KVS_LOG_ERROR(
      "table %s: %s; %s[%d] waits at offset %lld until there is room (the table's other "
      "partitions and the other tables go on)%s%s",
      t.cfg.name.c_str(), e.message.c_str(), t.cfg.topic.c_str(), p,
      static_cast<long long>(m->offset), who.c_str(), suffix->c_str());
  return true;
}

// Whether the table may grow past readers stuck inside a read once more:
// the segments it replaced that such readers keep mapped are fewer than
// grow_past_readers. Else the record waits for them, as a full table's
// does, and that is said (at most every 10 s).
static bool may_grow_past_readers(Replica& t, clock::time_point now) {
  if (t.writer->registry_backlogged()) {
    // What holds the room back is the registry's backlog, which a new
    // segment would inherit: the record waits until kvsd has taken it in.
    if (now >= t.next_grow_error_log) {
      t.next_grow_error_log = now + 10s;
      KVS_LOG_WARN(
          "table %s: its reader registry holds more entries than kvsd has taken in yet (a flood "
          "of entries?); records that need reused memory wait until it has",
          t.cfg.name.c_str());
    }
    return false;
  }
  uint32_t kept = 0;
  std::erase_if(t.replaced, [&](uint64_t incarnation) {
    if (t.writer->readers_inside(incarnation) == 0) return true;  // left at the next read
    ++kept;
    return false;
  });
  if (kept < t.cfg.grow_past_readers) return true;
  if (now >= t.next_grow_error_log) {
    t.next_grow_error_log = now + 10s;
    const WriterStats st = t.active().stats();
    KVS_LOG_ERROR(
        "table %s: readers stuck inside a read keep %u replaced segment(s) of it mapped "
        "(grow_past_readers = %u): records wait for them instead of the table growing again%s",
        t.cfg.name.c_str(), kept, t.cfg.grow_past_readers,
        st.holder.epoch != 0 ? ("; " + describe_holder(st.holder, st.retired_bytes)).c_str() : "");
  }
  return false;
}

// Applies the held records that are due and fetches their partitions again
// from the record after. False if kvsd cannot go on.
bool retry_holds(Replica& t, kafka::Consumer& c, clock::time_point now) {
  for (int32_t p = 0; p < t.partition_count() && t.n_held > 0; ++p) {
    Held& h = t.parts[p].held;
    if (h.offset < 0 || now < h.next_try) continue;
    const format::Origin origin{h.timestamp_ms, static_cast<uint32_t>(p)};
    const char* payload = h.tombstone ? nullptr : h.value.data();
    auto r = apply_or_grow(t, h.key, payload, h.value.size(), origin, h.offset);
    if (!r && r.error().code == Errc::kBusy && now - h.since >= kGrowPastReadersAfter &&
        t.phase != Phase::kGrowing && may_grow_past_readers(t, now)) {
      // Readers hold the room back for long: the table takes new memory
      // (a copy of its live entries), and leaves the old segment to them.
      if (grow(t, format::block_bytes_for(h.key.size(), h.value.size()))) {
        KVS_LOG_WARN(
            "table %s: its room has waited for readers for %.1f s; the table grows into a "
            "new segment, and the readers keep the old one until they end their reads",
            t.cfg.name.c_str(), std::chrono::duration<double>(now - h.since).count());
        r = apply_to(t, h.key, payload, h.value.size(), origin, h.offset);
      }
    }
    if (!r && needs_room(r.error().code)) {
      h.reason = t.hold_reason = reason_of(t, r.error().code);
      h.backoff = std::min<std::chrono::milliseconds>(h.backoff * 2, 100ms);
      h.next_try = now + h.backoff;
      continue;
    }
    if (!r) {
      note_skipped(t, p, h.offset, r.error());
    } else {
      ++t.applied;
      ++t.applied_total;
      t.parts[p].last_applied_ts_ns = ms_to_ns(h.timestamp_ms);
    }
    const int64_t next = h.offset + 1;
    t.active().record_applied(static_cast<uint32_t>(p), h.offset, h.timestamp_ms, h.key);
    if (next >= t.parts[p].target) t.parts[p].reached = true;
    if (auto suffix = hold_log_due(t, now)) {
      KVS_LOG_INFO(
          "table %s: %s[%d] offset %lld applied after %.1f s waiting for room; the "
          "partition is fetched again%s",
          t.cfg.name.c_str(), t.cfg.topic.c_str(), p, static_cast<long long>(h.offset),
          std::chrono::duration<double>(now - h.since).count(), suffix->c_str());
    }
    h = Held{};
    --t.n_held;
    if (auto ok = c.start_partition(t.cfg.topic, p, next); !ok) {
      KVS_LOG_ERROR("table %s: %s", t.cfg.name.c_str(), ok.error().message.c_str());
      return false;
    }
  }
  publish_hold(t);
  return true;
}

// The earliest time a held record of any table is due (or `limit`).
clock::time_point next_hold_try(const std::vector<Replica>& tables, clock::time_point limit) {
  for (const auto& t : tables) {
    if (t.phase == Phase::kGrowing) return clock::time_point{};  // its copy goes on at once
    if (t.n_held == 0) continue;
    for (const PartitionTrack& pt : t.parts) {
      if (pt.held.offset >= 0) limit = std::min(limit, pt.held.next_try);
    }
  }
  return limit;
}

void drop_holds(Replica& t, kafka::Consumer& c) {
  for (int32_t p = 0; p < t.partition_count(); ++p) {
    if (t.parts[p].held.offset < 0) continue;
    t.parts[p].held = Held{};
    // Assigned again so that the rebuild's reassignment finds it assigned.
    (void)c.start_partition(t.cfg.topic, p, RD_KAFKA_OFFSET_BEGINNING);
  }
  t.n_held = 0;
  publish_hold(t);
}

bool apply_message(Replica& t, kafka::Consumer& c, rd_kafka_message_t* m) {
  const int32_t p = m->partition;
  if (p >= t.partition_count() || t.skip_batch || t.parts[p].held.offset >= 0) {
    // A partition the table does not follow yet; fetched before the
    // table's partitions went back to the beginning; or behind a record
    // that waits for room (fetched again after it).
    return true;
  }
  if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ||
      m->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) {
    // The log no longer holds our position (retention, a recreated topic):
    // skipping ahead would lose records silently.
    const std::string why =
        std::string(t.cfg.topic) + "[" + std::to_string(p) + "]: " + rd_kafka_message_errstr(m);
    if (auto ok = start_rebuild(t, c, why, /*seek=*/true); !ok) {
      KVS_LOG_ERROR("%s", ok.error().message.c_str());
      return false;
    }
    return true;
  }
  if (t.parts[p].verify.offset >= 0 &&
      (m->err == 0 || m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)) {
    switch (check_log(t, c, m)) {
      case LogCheck::kDone:
        return true;
      case LogCheck::kFailed:
        return false;
      case LogCheck::kApply:
        break;
    }
  }
  if (m->err == 0 && m->offset < t.active().next_offset(static_cast<uint32_t>(p))) {
    return true;  // applied before (fetched again from the checked record)
  }
  if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
    // The end of what the broker has: everything below m->offset is applied.
    if (m->offset > t.parts[p].pending) t.parts[p].pending = m->offset;
    if (m->offset >= t.parts[p].target) t.parts[p].reached = true;
    return true;
  }
  if (m->err) {
    KVS_LOG_ERROR("table %s: %s[%d]: %s", t.cfg.name.c_str(), t.cfg.topic.c_str(), p,
                  rd_kafka_message_errstr(m));
    return true;
  }
  const std::string_view key(static_cast<const char*>(m->key), m->key_len);
  const int64_t ts = timestamp_ms(m);
  auto r = apply_or_grow(t, key, static_cast<const char*>(m->payload), m->len,
                         format::Origin{ts, static_cast<uint32_t>(p)}, m->offset);
  // Skipping a record that needs room would lose data: it waits, and only
  // its partition with it.
  if (!r && needs_room(r.error().code)) return hold(t, c, m, r.error());
  if (!r) {
    note_skipped(t, p, m->offset, r.error());
  } else {
    // While bootstrapping, a sample of the timestamps is enough: an older
    // one only makes the age bound larger.
    if (t.ready || (t.applied & 15) == 0) t.parts[p].last_applied_ts_ns = ms_to_ns(ts);
    ++t.applied;
    ++t.applied_total;
  }
  // Published per record, right after it is visible: a kvsd killed here
  // replays from the record after it, so readers never see a key go back
  // to an older value (the replay is of records they have not seen yet, or
  // of this one).
  t.active().record_applied(static_cast<uint32_t>(p), m->offset, ts, key);
  if (m->offset + 1 >= t.parts[p].target) t.parts[p].reached = true;
  return true;
}

bool end_batch(Replica& t, kafka::Consumer& c) {
  // Positions learnt from partition EOFs (offsets of control records and
  // compacted gaps): every record below them is visible.
  for (int32_t p = 0; p < t.partition_count(); ++p) {
    const auto up = static_cast<uint32_t>(p);
    if (t.parts[p].pending > t.active().next_offset(up))
      t.active().set_next_offset(up, t.parts[p].pending);
    t.parts[p].pending = -1;
  }
  // What the batch changed is published to sleepers before anything slow.
  t.active().publish_batch();
  t.active().reclaim();
  if (!continue_growth(t, c)) return false;
  resize_if_due(t);
  auto walk = t.writer->take_attach_walk_report();
  if (!walk) return true;
  if (!walk->corrupt) {
    if (walk->leaked_blocks > 0)
      KVS_LOG_INFO("table %s: %s", t.cfg.name.c_str(), walk->message.c_str());
    return true;
  }
  if (replacing(t.phase)) return true;
  if (auto ok = start_rebuild(t, c, walk->message, /*seek=*/true); !ok) {
    KVS_LOG_ERROR("%s", ok.error().message.c_str());
    return false;
  }
  return true;
}

}  // namespace kvs::daemon
