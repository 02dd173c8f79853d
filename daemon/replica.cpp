#include "replica.hpp"

#include <algorithm>
#include <cstdio>
#include <thread>

#include "growth.hpp"
#include "log.hpp"
#include "seed.hpp"
#include "snapshots.hpp"

namespace kvs::daemon {

volatile sig_atomic_t g_stop = 0;

using format::HoldReason;
using namespace std::chrono_literals;

// Retries `fn` while it fails with kTimeout (a broker not answering yet),
// logging each failure, until it succeeds, fails otherwise, or kvsd stops.
template <class F>
static auto with_retry(const char* what, F fn) -> decltype(fn()) {
  for (int attempt = 1;; ++attempt) {
    auto r = fn();
    if (r || r.error().code != Errc::kTimeout || g_stop) return r;
    KVS_LOG_WARN("%s: %s; retrying (attempt %d)", what, r.error().message.c_str(), attempt);
    for (int i = 0; i < 10 && !g_stop; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

static uint64_t hash_of(const std::string& s) { return format::hash_key(s.data(), s.size()); }

// A reader holding memory back is named in the log once it has done so
// this long: longer than a read of a large table takes.
static constexpr auto kHolderLogAfter = 3s;
// A record that has waited this long for readers to free room makes the
// table grow instead (growth.hpp): readers' reads end within microseconds,
// so one that holds room back this long is stuck.
static constexpr auto kGrowPastReadersAfter = 1s;

int64_t timestamp_ms(const rd_kafka_message_t* m) {
  const int64_t ms = rd_kafka_message_timestamp(m, nullptr);
  return ms > 0 ? ms : 0;
}

static uint64_t ms_to_ns(int64_t ms) { return ms > 0 ? static_cast<uint64_t>(ms) * 1000000 : 0; }

using log::utc_time;

static std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// "reader process 123 (file) has held 1.0 MiB back from reuse since T".
static std::string describe_holder(const ReaderHolder& h, uint64_t bytes) {
  const std::string who = h.pid > 0
                              ? "reader process " + std::to_string(h.pid) + " (" + h.file + ")"
                              : "reader " + h.file;
  return who + " has held " + mib(bytes) + " back from reuse since " + utc_time(h.since_unix_ns);
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
  const bool track = t.partitions > 1 && (tombstone || t.tombstones.size() > 0);
  const uint64_t hash = track ? format::hash_key(key.data(), key.size()) : 0;
  if (track && !tombstone && t.tombstones.wins_over(hash, origin)) return {};
  std::optional<std::string_view> value;
  if (!tombstone) value.emplace(payload, len);
  auto r = t.active().apply(key, value, origin, offset);
  if (!r) return std::move(r).error();
  if (track && *r != Applied::kSuperseded) {
    if (tombstone) {
      t.tombstones.remember(hash, origin);
    } else {
      t.tombstones.forget(hash);
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
  Held& h = t.held[p];
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
  t.pending[p] = -1;
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

// Applies the held records that are due and fetches their partitions again
// from the record after. False if kvsd cannot go on.
bool retry_holds(Replica& t, kafka::Consumer& c, clock::time_point now) {
  for (int32_t p = 0; p < t.partitions && t.n_held > 0; ++p) {
    Held& h = t.held[p];
    if (h.offset < 0 || now < h.next_try) continue;
    const format::Origin origin{h.timestamp_ms, static_cast<uint32_t>(p)};
    const char* payload = h.tombstone ? nullptr : h.value.data();
    auto r = apply_or_grow(t, h.key, payload, h.value.size(), origin, h.offset);
    if (!r && r.error().code == Errc::kBusy && now - h.since >= kGrowPastReadersAfter && !t.grow) {
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
      t.last_applied_ts_ns[p] = ms_to_ns(h.timestamp_ms);
    }
    const int64_t next = h.offset + 1;
    t.active().record_applied(static_cast<uint32_t>(p), h.offset, h.timestamp_ms, h.key);
    if (next >= t.target[p]) t.reached[p] = true;
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
    if (t.grow) return clock::time_point{};  // a growth's copy goes on at once
    if (t.n_held == 0) continue;
    for (const Held& h : t.held) {
      if (h.offset >= 0) limit = std::min(limit, h.next_try);
    }
  }
  return limit;
}

// A rebuild starts every partition of the table over: nothing waits.
static void drop_holds(Replica& t, kafka::Consumer& c) {
  for (int32_t p = 0; p < t.partitions; ++p) {
    if (t.held[p].offset < 0) continue;
    t.held[p] = Held{};
    // Assigned again so that the rebuild's reassignment finds it assigned.
    (void)c.start_partition(t.cfg.topic, p, RD_KAFKA_OFFSET_BEGINNING);
  }
  t.n_held = 0;
  publish_hold(t);
}

// Names, in the log, the reader that has held memory back for
// kHolderLogAfter, then every minute while it does.
void report_holder(Replica& t, clock::time_point now) {
  const WriterStats st = t.active().stats();
  const ReaderHolder& h = st.holder;
  const uint64_t now_ns = format::now_unix_ns();
  const auto after_ns = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(kHolderLogAfter).count());
  if (h.epoch == 0 || now_ns < h.since_unix_ns + after_ns) {
    if (t.logged_holder.epoch != 0) {
      KVS_LOG_INFO("table %s: the reader named before no longer holds memory back",
                   t.cfg.name.c_str());
    }
    t.logged_holder = ReaderHolder{};
    return;
  }
  const bool same =
      h.file == t.logged_holder.file && h.since_unix_ns == t.logged_holder.since_unix_ns;
  if (same && now < t.next_holder_log) return;
  t.logged_holder = h;
  t.next_holder_log = now + 60s;
  KVS_LOG_WARN(
      "table %s: %s (%llu s): a read that does not end (a stopped process, a slow walk of "
      "kvs_for_each, or kvs_read_begin without kvs_read_end); %s",
      t.cfg.name.c_str(), describe_holder(h, st.retired_bytes).c_str(),
      static_cast<unsigned long long>((now_ns - h.since_unix_ns) / 1000000000),
      t.n_held > 0 ? "partitions of the table wait for it"
                   : "the table uses the rest of its arena meanwhile");
}

// Publishes the high watermarks (the larger of the last fetch response's and
// the poller's) and the timestamp of the oldest record not applied yet.
void refresh_lag(Replica& t, kafka::Consumer& c, const kafka::WatermarkPoller& poller) {
  const uint64_t now_ns = format::now_unix_ns();
  TableWriter& w = t.active();
  uint64_t oldest = 0;
  for (int32_t p = 0; p < t.partitions; ++p) {
    const auto up = static_cast<uint32_t>(p);
    const int64_t hw =
        std::max(c.cached_high_watermark(t.cfg.topic, p), poller.high_watermark(t.cfg.topic, p));
    if (hw >= 0) w.set_high_watermark(up, hw);
    if (hw <= w.next_offset(up)) {
      t.caught_up_ns[p] = now_ns;
      continue;
    }
    // A held record's timestamp is exact. Otherwise the oldest unapplied
    // record came after the last one applied, and after the partition was
    // last seen caught up: the later of the two bounds its age.
    const Held& h = t.held[p];
    const uint64_t bound = h.offset >= 0 && h.timestamp_ms != 0
                               ? ms_to_ns(h.timestamp_ms)
                               : std::max(t.last_applied_ts_ns[p], t.caught_up_ns[p]);
    if (bound != 0 && (oldest == 0 || bound < oldest)) oldest = bound;
  }
  w.set_oldest_unapplied(oldest);
}

// What STATUS= adds about tables under pressure ("" if none).
std::string pressure_status(const std::vector<Replica>& tables) {
  std::string s;
  for (const auto& t : tables) {
    if (t.n_held > 0) {
      s += "; table " + t.cfg.name + ": " + std::to_string(t.n_held) +
           " partition(s) wait for room (" +
           format::hold_reason_text(static_cast<uint32_t>(t.hold_reason)) + ")";
    }
    if (t.logged_holder.epoch != 0) {
      s += "; table " + t.cfg.name + ": reader " +
           (t.logged_holder.pid > 0 ? "process " + std::to_string(t.logged_holder.pid)
                                    : t.logged_holder.file) +
           " holds memory back since " + utc_time(t.logged_holder.since_unix_ns);
    }
  }
  return s;
}

// Grows the replica's per-partition state to n partitions.
static void resize_partitions(Replica& t, int32_t n) {
  t.partitions = n;
  t.target.resize(n, 0);
  t.reached.resize(n, false);
  t.pending.resize(n, -1);
  t.held.resize(n, Held{});
  t.verify.resize(n, TableWriter::LastRecord{});
  t.last_applied_ts_ns.resize(n, 0);
  t.caught_up_ns.resize(n, 0);
}

// Queries every partition's watermarks; records the high watermarks as the
// targets to reach and in `into`. Returns (low, high) per partition.
static Result<std::vector<std::pair<int64_t, int64_t>>> capture_targets(Replica& t,
                                                                        kafka::Consumer& c,
                                                                        TableWriter& into) {
  auto wms = with_retry("fetching watermarks",
                        [&] { return c.watermarks(t.cfg.topic, t.partitions, 5000); });
  if (!wms) return std::move(wms).error();
  for (int32_t p = 0; p < t.partitions; ++p) {
    t.target[p] = (*wms)[p].second;
    into.set_high_watermark(static_cast<uint32_t>(p), (*wms)[p].second);
  }
  return wms;
}

// Starts filling a new segment for `t` from the beginning of its topic.
// `seek`: the partitions are assigned already and must go back.
Result<void> start_rebuild(Replica& t, kafka::Consumer& c, const std::string& why, bool seek) {
  KVS_LOG_WARN(
      "table %s: %s; rebuilding it from the beginning of topic %s in a new segment "
      "(readers keep the current data until the new segment has caught up)",
      t.cfg.name.c_str(), why.c_str(), t.cfg.topic.c_str());
  drop_holds(t, c);
  t.grow.reset();     // records since it began are read again from the beginning
  t.rebuild.reset();  // a rebuild under way starts over
  auto r = t.writer->begin_replacement(rebuild_size(t.writer->stats(), t.cfg));
  if (!r) return std::move(r).error().context("table " + t.cfg.name + ": rebuild");
  TableWriter& w = **r;
  if (auto ok = w.set_partition_count(static_cast<uint32_t>(t.partitions)); !ok) return ok;
  w.set_source(t.source_cluster, t.source_topic);
  w.set_state(format::TableState::kBootstrapping);
  auto wms = capture_targets(t, c, w);
  if (!wms) return std::move(wms).error();
  for (int32_t p = 0; p < t.partitions; ++p) {
    const auto [lo, hi] = (*wms)[p];
    // Nothing below the log start exists: it counts as applied.
    w.set_next_offset(static_cast<uint32_t>(p), lo);
    t.reached[p] = hi <= lo;
    t.pending[p] = -1;
  }
  t.rebuild = std::move(*r);
  t.seed = Replica::Seed{};
  t.tombstones.clear();
  t.verify.assign(t.partitions, TableWriter::LastRecord{});
  t.applied = t.skipped = 0;
  t.skip_batch = true;
  if (seek) return c.reassign_from_beginning(t.cfg.topic, t.partitions);
  return {};
}

// Why the segment cannot resume from its recorded offsets, or "".
static std::string why_rebuild(const Replica& t,
                               const std::vector<std::pair<int64_t, int64_t>>& wms) {
  const TableWriter& w = *t.writer;
  if (const std::string change = w.size_change(); !change.empty()) {
    return "the config sizes it differently from its segment (" + change + ")";
  }
  if (w.source_topic() != 0 && w.source_topic() != t.source_topic) {
    return "its segment was filled from another topic";
  }
  if (w.source_cluster() != 0 && t.source_cluster != 0 && w.source_cluster() != t.source_cluster) {
    return "its segment was filled from another Kafka cluster (the cluster id differs)";
  }
  for (int32_t p = 0; p < t.partitions; ++p) {
    const int64_t next = w.next_offset(static_cast<uint32_t>(p));
    const auto [lo, hi] = wms[p];
    if (next > 0 && (next < lo || next > hi)) {
      return "offset " + std::to_string(next) + " recorded for " + t.cfg.topic + "[" +
             std::to_string(p) + "] is not in the log (" + std::to_string(lo) + ".." +
             std::to_string(hi) + ")";
    }
  }
  return "";
}

// At start: the partitions the table follows, the high watermarks to reach
// and where each partition starts (appended to `starts`). A segment that
// cannot resume (why_rebuild) or cannot hold the topic's partitions is
// rebuilt from the beginning of the topic.
Result<void> open_partitions(Replica& t, kafka::Consumer& c, int32_t n,
                             std::vector<kafka::PartitionStart>& starts) {
  if (static_cast<uint32_t>(n) > t.cfg.max_partitions) {
    return make_error(Errc::kInvalidArgument,
                      "table " + t.cfg.name + ": topic " + t.cfg.topic + " has " +
                          std::to_string(n) + " partitions, above max_partitions = " +
                          std::to_string(t.cfg.max_partitions) + "; raise it");
  }
  // A segment that tracks fewer partitions is not touched beyond them.
  const bool fits = static_cast<bool>(t.writer->set_partition_count(static_cast<uint32_t>(n)));
  resize_partitions(t, n);
  t.source_topic = hash_of(t.cfg.topic);
  if (auto id = c.cluster_id(2000)) {
    t.source_cluster = hash_of(*id);
  } else {
    KVS_LOG_DEBUG("table %s: %s; the segment's cluster is not checked", t.cfg.name.c_str(),
                  id.error().message.c_str());
  }
  std::string why;
  std::vector<std::pair<int64_t, int64_t>> wms;
  if (!fits) {
    why = "its segment tracks at most " + std::to_string(t.writer->header().partition_capacity) +
          " partitions and topic " + t.cfg.topic + " has " + std::to_string(n);
  } else {
    auto got = capture_targets(t, c, *t.writer);
    if (!got) return std::move(got).error().context("table " + t.cfg.name);
    wms = std::move(*got);
    why = why_rebuild(t, wms);
  }
  // Without a segment to resume, the newest usable snapshot saves reading
  // the whole topic.
  if (fits && (!why.empty() || blank(*t.writer)) && seed_from_snapshot(t, wms)) {
    if (!why.empty()) {
      KVS_LOG_WARN("table %s: %s; starting from the snapshot instead of its segment",
                   t.cfg.name.c_str(), why.c_str());
    }
  } else if (!why.empty()) {
    if (auto ok = start_rebuild(t, c, why, /*seek=*/false); !ok) return ok;
  } else {
    t.writer->set_source(t.source_cluster, t.source_topic);
  }
  for (int32_t p = 0; p < n; ++p) {
    const int64_t next = t.active().next_offset(static_cast<uint32_t>(p));
    if (t.rebuild && t.seed.path.empty()) {
      starts.push_back({t.cfg.topic, p, -2});
      continue;
    }
    t.reached[p] = next >= t.target[p];
    starts.push_back({t.cfg.topic, p, next > 0 ? next : -2});
    // The last record applied is read again and compared (check_log).
    const TableWriter::LastRecord last = t.active().last_record(static_cast<uint32_t>(p));
    if (last.offset >= 0 && last.offset < next && last.offset >= wms[p].first &&
        last.offset < wms[p].second) {
      t.verify[p] = last;
      t.reached[p] = false;
      starts.back().offset = last.offset;
    }
  }
  return {};
}

bool follow_new_partitions(Replica& t, kafka::Consumer& c, kafka::WatermarkPoller& poller,
                           int32_t n) {
  const int32_t had = t.partitions;
  if (n <= had) return true;
  if (static_cast<uint32_t>(n) > t.cfg.max_partitions) {
    if (t.refused_partitions != n) {
      t.refused_partitions = n;
      KVS_LOG_ERROR(
          "table %s: topic %s now has %d partitions, above max_partitions = %u: records of "
          "partitions %u..%d are NOT applied; raise max_partitions and restart kvsd",
          t.cfg.name.c_str(), t.cfg.topic.c_str(), n, t.cfg.max_partitions, t.cfg.max_partitions,
          n - 1);
    }
    n = static_cast<int32_t>(t.cfg.max_partitions);
    if (n <= had) return true;
  }
  // The segment (and a rebuild's or a growth's) has room for max_partitions.
  for (TableWriter* w : {t.writer.get(), t.rebuild.get(), t.grow.get()}) {
    if (w == nullptr) continue;
    if (auto ok = w->set_partition_count(static_cast<uint32_t>(n)); !ok) {
      KVS_LOG_ERROR("table %s: %s", t.cfg.name.c_str(), ok.error().message.c_str());
      return true;  // the start's check rebuilds such a segment
    }
  }
  resize_partitions(t, n);
  for (int32_t p = had; p < n; ++p) {
    // READY stays: a new partition only holds records written after it
    // was added, which is lag, not a bootstrap. A table still
    // bootstrapping waits for the partition's first record or its end.
    t.reached[p] = t.ready;
    if (auto ok = c.start_partition(t.cfg.topic, p, RD_KAFKA_OFFSET_BEGINNING); !ok) {
      KVS_LOG_ERROR("table %s: %s", t.cfg.name.c_str(), ok.error().message.c_str());
      return false;
    }
  }
  poller.follow(t.cfg.topic, n);
  KVS_LOG_WARN(
      "table %s: topic %s grew from %d to %d partitions; following partitions %d..%d from "
      "their beginning. Keys now move between partitions: where a key has records in two "
      "partitions, the one with the later Kafka timestamp wins (docs/format.md, \"Keys in "
      "two partitions\")",
      t.cfg.name.c_str(), t.cfg.topic.c_str(), had, n, had, n - 1);
  return true;
}

// Removes a table's segment so that the next writer starts afresh, first
// flagging it replaced (if it is one of this layout that kvsd may write), so
// that open readers move to the new segment instead of reading the removed
// one for as long as they run.
static void discard_segment(const std::string& name) {
  if (auto m = shm::open_segment(name, shm::Access::kReadWrite);
      m && (*m)->size() >= sizeof(format::TableHeader)) {
    auto* h = reinterpret_cast<format::TableHeader*>((*m)->data());
    if (h->magic == format::kTableMagic && h->layout_version == format::kLayoutVersion) {
      TableWriter::flag_replaced(*h, format::kReplacedPending);
      shm::remove_segment(name);
      TableWriter::flag_replaced(*h, format::kReplacedNamed);
      return;
    }
  }
  shm::remove_segment(name);
}

Result<Replica> open_replica(const config::Config& cfg, const config::TableConfig& tc, gid_t gid,
                             bool fresh) {
  WriterOptions wo;
  wo.table = tc.name;
  wo.shm_prefix = cfg.shm_prefix;
  wo.capacity = tc.capacity;
  wo.arena_bytes = tc.memory_limit_bytes;
  wo.partition_capacity = tc.max_partitions;
  wo.reader_slots = tc.reader_slots;
  wo.max_key_bytes = tc.max_key_bytes;
  wo.max_value_bytes = tc.max_value_bytes;
  wo.data_mode = cfg.data_mode;
  wo.registry_mode = cfg.registry_mode;
  wo.group = gid;
  wo.dead_reader_check = std::chrono::milliseconds(cfg.dead_reader_check_ms);
  wo.reader_scan_interval = std::chrono::milliseconds(1);
  wo.change_log_entries = tc.change_log_entries;
  if (fresh) {
    if (auto seg = shm::segment_name(cfg.shm_prefix, tc.name)) discard_segment(*seg);
  }
  auto w = TableWriter::open(wo);
  if (!w) return std::move(w).error();
  const char* how = (*w)->attach_kind() == AttachKind::kAttached  ? "attached to"
                    : (*w)->attach_kind() == AttachKind::kCreated ? "created"
                                                                  : "replaced";
  KVS_LOG_INFO("table %s: %s /dev/shm/%s (%llu entries)", tc.name.c_str(), how,
               (*w)->segment_name().c_str(), static_cast<unsigned long long>((*w)->stats().size));
  (*w)->set_state(format::TableState::kBootstrapping);
  Replica t;
  t.cfg = tc;
  t.writer = std::move(*w);
  // An embedded cluster starts empty: no snapshot of it can be current.
  if (!fresh) t.snapshot_dir = snapshot_dir(cfg, tc.name);
  t.snapshot_max_age_s = cfg.snapshot_max_age_s;
  if (const size_t n = sweep_temporaries(t.snapshot_dir); n > 0) {
    KVS_LOG_INFO("table %s: removed %zu unfinished snapshot file(s) from %s", tc.name.c_str(), n,
                 t.snapshot_dir.c_str());
  }
  return t;
}

std::string progress_status(const std::vector<Replica>& tables, bool all_ready) {
  uint64_t applied = 0;
  double done = 0, total = 0;
  for (const auto& t : tables) {
    if (t.ready && !t.rebuild) continue;
    applied += t.applied;
    const TableWriter& w = t.rebuild ? *t.rebuild : *t.writer;
    for (int32_t p = 0; p < t.partitions; ++p) {
      total += static_cast<double>(t.target[p]);
      done += static_cast<double>(std::min(w.next_offset(static_cast<uint32_t>(p)), t.target[p]));
    }
  }
  const int pct = total > 0 ? static_cast<int>(100.0 * done / total) : 100;
  return std::string(all_ready ? "REBUILDING: " : "BOOTSTRAPPING: ") + std::to_string(applied) +
         " records, " + std::to_string(pct) + "%";
}

ReadyChange check_ready(Replica& t) {
  if (t.ready && !t.rebuild) return ReadyChange::kNone;
  if (t.grow) return ReadyChange::kNone;  // readers see the table once its growth is swapped in
  for (bool r : t.reached) {
    if (!r) return ReadyChange::kNone;
  }
  ReadyChange change = ReadyChange::kReady;
  if (t.rebuild) {
    // The new segment is current: it takes the table's name and readers
    // move to it.
    t.rebuild->set_state(format::TableState::kReady);
    if (auto ok = t.writer->publish_replacement(*t.rebuild); !ok) {
      KVS_LOG_ERROR("table %s: publishing the rebuilt segment: %s", t.cfg.name.c_str(),
                    ok.error().message.c_str());
      return ReadyChange::kFailed;
    }
    t.writer = std::move(t.rebuild);
    change = ReadyChange::kRebuilt;
    if (!t.seed.path.empty()) {
      KVS_LOG_INFO(
          "table %s: started from snapshot %s and %llu records from the topic (%llu skipped) "
          "in %.0f ms; readers moved to the new segment",
          t.cfg.name.c_str(), t.seed.path.c_str(), static_cast<unsigned long long>(t.applied),
          static_cast<unsigned long long>(t.skipped),
          std::chrono::duration<double, std::milli>(clock::now() - t.seed.since).count());
      t.seed = Replica::Seed{};
    } else {
      KVS_LOG_INFO(
          "table %s: rebuilt from the topic (%llu records applied, %llu skipped); "
          "readers moved to the new segment",
          t.cfg.name.c_str(), static_cast<unsigned long long>(t.applied),
          static_cast<unsigned long long>(t.skipped));
    }
  }
  if (t.ready) return change;
  t.ready = true;
  t.writer->set_state(format::TableState::kReady);
  KVS_LOG_INFO("table %s: READY (%llu records applied, %llu skipped)", t.cfg.name.c_str(),
               static_cast<unsigned long long>(t.applied),
               static_cast<unsigned long long>(t.skipped));
  return change;
}

// The first record or EOF of a partition whose last applied record is to
// be checked (Replica::verify): the record at that offset must be the one
// the segment applied, or the log is another one (a topic deleted and
// re-created while kvsd was down) and the table is rebuilt. kApply: go on
// with m as usual; kDone: m is handled; kFailed: kvsd cannot go on.
enum class LogCheck { kApply, kDone, kFailed };
static LogCheck check_log(Replica& t, kafka::Consumer& c, const rd_kafka_message_t* m) {
  const int32_t p = m->partition;
  const TableWriter::LastRecord want = t.verify[p];
  const auto up = static_cast<uint32_t>(p);
  t.verify[p] = TableWriter::LastRecord{};
  t.reached[p] = t.active().next_offset(up) >= t.target[p];
  const std::string where =
      t.cfg.topic + "[" + std::to_string(p) + "] offset " + std::to_string(want.offset);
  if (m->err == 0 && m->offset == want.offset) {
    const bool same = timestamp_ms(m) == want.timestamp_ms &&
                      format::hash_key(m->key, m->key_len) == want.key_hash;
    if (same) return LogCheck::kDone;  // applied before: nothing to do
    const std::string why = "the record at " + where + " is not the one " +
                            (t.seed.path.empty() ? "its segment" : "snapshot " + t.seed.path) +
                            " applied (was the topic deleted and re-created?)";
    if (auto ok = start_rebuild(t, c, why, /*seek=*/true); !ok) {
      KVS_LOG_ERROR("%s", ok.error().message.c_str());
      return LogCheck::kFailed;
    }
    return LogCheck::kDone;
  }
  // Compacted away since (or no record left before the end): nothing to
  // compare with.
  if (!t.unverified_logged) {
    t.unverified_logged = true;
    KVS_LOG_INFO(
        "table %s: the last record applied at %s is no longer in the log (compacted); the "
        "log is resumed without that check",
        t.cfg.name.c_str(), where.c_str());
  }
  return LogCheck::kApply;
}

bool apply_message(Replica& t, kafka::Consumer& c, rd_kafka_message_t* m) {
  const int32_t p = m->partition;
  if (p >= t.partitions || t.skip_batch || t.held[p].offset >= 0) {
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
  if (t.verify[p].offset >= 0 && (m->err == 0 || m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)) {
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
    if (m->offset > t.pending[p]) t.pending[p] = m->offset;
    if (m->offset >= t.target[p]) t.reached[p] = true;
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
    if (t.ready || (t.applied & 15) == 0) t.last_applied_ts_ns[p] = ms_to_ns(ts);
    ++t.applied;
  }
  // Published per record, right after it is visible: a kvsd killed here
  // replays from the record after it, so readers never see a key go back
  // to an older value (the replay is of records they have not seen yet, or
  // of this one).
  t.active().record_applied(static_cast<uint32_t>(p), m->offset, ts, key);
  if (m->offset + 1 >= t.target[p]) t.reached[p] = true;
  return true;
}

bool end_batch(Replica& t, kafka::Consumer& c) {
  // Positions learnt from partition EOFs (offsets of control records and
  // compacted gaps): every record below them is visible.
  for (int32_t p = 0; p < t.partitions; ++p) {
    const auto up = static_cast<uint32_t>(p);
    if (t.pending[p] > t.active().next_offset(up)) t.active().set_next_offset(up, t.pending[p]);
    t.pending[p] = -1;
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
  if (t.rebuild) return true;
  if (auto ok = start_rebuild(t, c, walk->message, /*seek=*/true); !ok) {
    KVS_LOG_ERROR("%s", ok.error().message.c_str());
    return false;
  }
  return true;
}

}  // namespace kvs::daemon
