// One table's replica following its topic: a table's start (its segment,
// its partitions, whether the segment can resume, the check of the last
// record applied), rebuilds from the beginning of the topic, and
// partitions the topic gains or loses while kvsd runs.
#include <algorithm>
#include <thread>

#include "growth.hpp"
#include "log.hpp"
#include "replica.hpp"
#include "seed.hpp"
#include "snapshots.hpp"

namespace kvs::daemon {

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

// The replica follows n partitions: new ones start with nothing known.
static void resize_partitions(Replica& t, int32_t n) { t.parts.resize(n); }

// Queries every partition's watermarks; records the high watermarks as the
// targets to reach and in `into`. Returns (low, high) per partition.
static Result<std::vector<std::pair<int64_t, int64_t>>> capture_targets(Replica& t,
                                                                        kafka::Consumer& c,
                                                                        TableWriter& into) {
  auto wms = with_retry("fetching watermarks",
                        [&] { return c.watermarks(t.cfg.topic, t.partition_count(), 5000); });
  if (!wms) return std::move(wms).error();
  for (int32_t p = 0; p < t.partition_count(); ++p) {
    t.parts[p].target = (*wms)[p].second;
    into.set_high_watermark(static_cast<uint32_t>(p), (*wms)[p].second);
  }
  return wms;
}

// The topic has `n` partitions, fewer than the table follows (it was
// deleted and re-created): the partitions that are gone are no longer
// fetched nor asked about (librdkafka 2.0.2 may hang at its destroy after
// requests for partitions that do not exist).
static void forget_partitions(Replica& t, kafka::Consumer& c, int32_t n) {
  for (int32_t p = n; p < t.partition_count(); ++p) {
    if (t.parts[p].held.offset >= 0) {  // not fetched already
      t.parts[p].held = Held{};
      --t.n_held;
      continue;
    }
    if (auto ok = c.stop_partition(t.cfg.topic, p); !ok) {
      KVS_LOG_WARN("table %s: %s", t.cfg.name.c_str(), ok.error().message.c_str());
    }
  }
  resize_partitions(t, n);
}

// Starts filling a new segment for `t` from the beginning of its topic.
// `seek`: the partitions are assigned already and must go back.
Result<void> start_rebuild(Replica& t, kafka::Consumer& c, const std::string& why, bool seek) {
  KVS_LOG_WARN(
      "table %s: %s; rebuilding it from the beginning of topic %s in a new segment "
      "(readers keep the current data until the new segment has caught up)",
      t.cfg.name.c_str(), why.c_str(), t.cfg.topic.c_str());
  // A rebuild while kvsd runs often follows a topic re-created: with fewer
  // partitions, those that are gone are neither read nor waited for.
  if (seek) {
    auto n = with_retry("fetching the partition count",
                        [&] { return c.partition_count(t.cfg.topic, 5000); });
    if (n && *n < t.partition_count()) {
      KVS_LOG_WARN("table %s: topic %s has %d partitions now, fewer than the %d it followed",
                   t.cfg.name.c_str(), t.cfg.topic.c_str(), *n, t.partition_count());
      forget_partitions(t, c, *n);
    }
  }
  drop_holds(t, c);
  // A growth's records are read again from the beginning; a rebuild under
  // way starts over.
  drop_replacements(t);
  auto r = t.writer->begin_replacement(rebuild_size(t.writer->stats(), t.cfg));
  if (!r) return std::move(r).error().context("table " + t.cfg.name + ": rebuild");
  TableWriter& w = **r;
  if (auto ok = w.set_partition_count(static_cast<uint32_t>(t.partition_count())); !ok) return ok;
  w.set_source(t.source_cluster, t.source_topic);
  w.set_state(format::TableState::kBootstrapping);
  auto wms = capture_targets(t, c, w);
  if (!wms) return std::move(wms).error();
  for (int32_t p = 0; p < t.partition_count(); ++p) {
    const auto [lo, hi] = (*wms)[p];
    // Nothing below the log start exists: it counts as applied.
    w.set_next_offset(static_cast<uint32_t>(p), lo);
    t.parts[p].reached = hi <= lo;
    t.parts[p].pending = -1;
  }
  enter_rebuild(t, std::move(*r));
  t.tombstones.clear();
  for (PartitionTrack& pt : t.parts) pt.verify = TableWriter::LastRecord{};
  t.applied = t.skipped = 0;
  t.skip_batch = true;
  if (seek) return c.reassign_from_beginning(t.cfg.topic, t.partition_count());
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
  for (int32_t p = 0; p < t.partition_count(); ++p) {
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

// A table with nothing to resume from reads its whole topic: said, with
// how much that is.
static void log_cold_start(const Replica& t, const std::vector<std::pair<int64_t, int64_t>>& wms) {
  uint64_t offsets = 0;
  for (const auto& [lo, hi] : wms) offsets += static_cast<uint64_t>(std::max<int64_t>(0, hi - lo));
  KVS_LOG_INFO(
      "table %s: no segment to resume and no usable snapshot (%s%s%s); reading topic %s from "
      "its beginning: %llu offsets up to the high watermarks",
      t.cfg.name.c_str(), t.snapshot_dir.empty() ? "snapshots off" : t.snapshot_dir.c_str(),
      t.cfg.seed_from.empty() ? "" : ", seed_from ", t.cfg.seed_from.c_str(), t.cfg.topic.c_str(),
      static_cast<unsigned long long>(offsets));
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
  // A segment that tracks fewer partitions is not touched beyond them; one
  // that tracks more than the topic has now holds keys of partitions that
  // are gone (the topic was re-created), whatever the others hold.
  const TableWriter& seg = *t.writer;
  const uint32_t tracked = std::min(seg.header().partition_count.load(std::memory_order_relaxed),
                                    seg.header().partition_capacity);
  const bool fits = static_cast<uint32_t>(n) <= seg.header().partition_capacity;
  if (fits && static_cast<uint32_t>(n) >= tracked)
    (void)t.writer->set_partition_count(static_cast<uint32_t>(n));
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
    why = static_cast<uint32_t>(n) < tracked
              ? "its segment follows " + std::to_string(tracked) + " partitions and topic " +
                    t.cfg.topic + " has " + std::to_string(n) +
                    " (was it deleted and re-created with fewer partitions?)"
              : why_rebuild(t, wms);
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
    if (fits && blank(*t.writer)) log_cold_start(t, wms);
  }
  for (int32_t p = 0; p < n; ++p) {
    const int64_t next = t.active().next_offset(static_cast<uint32_t>(p));
    if (t.phase == Phase::kRebuilding) {
      starts.push_back({t.cfg.topic, p, -2});
      continue;
    }
    t.parts[p].reached = next >= t.parts[p].target;
    starts.push_back({t.cfg.topic, p, next > 0 ? next : -2});
    // The last record applied is read again and compared (check_log).
    const TableWriter::LastRecord last = t.active().last_record(static_cast<uint32_t>(p));
    if (last.offset >= 0 && last.offset < next && last.offset >= wms[p].first &&
        last.offset < wms[p].second) {
      t.parts[p].verify = last;
      t.parts[p].reached = false;
      starts.back().offset = last.offset;
    }
  }
  return {};
}

// The record at the checked offset must be the one the segment applied, or
// the log is another one (a topic deleted and re-created while kvsd was
// down) and the table is rebuilt.
LogCheck check_log(Replica& t, kafka::Consumer& c, const rd_kafka_message_t* m) {
  const int32_t p = m->partition;
  const TableWriter::LastRecord want = t.parts[p].verify;
  const auto up = static_cast<uint32_t>(p);
  t.parts[p].verify = TableWriter::LastRecord{};
  t.parts[p].reached = t.active().next_offset(up) >= t.parts[p].target;
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

bool follow_fewer_partitions(Replica& t, kafka::Consumer& c, kafka::WatermarkPoller& poller,
                             int32_t n) {
  const int32_t had = t.partition_count();
  if (n <= 0 || n >= had) return true;
  const std::string why = "topic " + t.cfg.topic + " now has " + std::to_string(n) +
                          " partitions, fewer than the " + std::to_string(had) +
                          " the table follows: it was deleted and re-created";
  forget_partitions(t, c, n);
  poller.follow(t.cfg.topic, n);
  if (auto ok = start_rebuild(t, c, why, /*seek=*/true); !ok) {
    KVS_LOG_ERROR("%s", ok.error().message.c_str());
    return false;
  }
  return true;
}

bool follow_new_partitions(Replica& t, kafka::Consumer& c, kafka::WatermarkPoller& poller,
                           int32_t n) {
  const int32_t had = t.partition_count();
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
    t.parts[p].reached = t.ready;
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
  wo.shm_dir = cfg.shm_dir;
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
    if (auto seg = shm::segment_in(cfg.shm_dir, cfg.shm_prefix, tc.name)) discard_segment(*seg);
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

}  // namespace kvs::daemon
