#include "kvsd.hpp"

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <memory>
#include <thread>

#include "kafka/consumer.hpp"
#include "kafka/embedded_kafka.hpp"
#include "kafka/topic_checks.hpp"
#include "kafka/topic_wait.hpp"
#include "kafka/watermark_poller.hpp"
#include "log.hpp"
#include "server/server.hpp"
#include "writer/table_writer.hpp"

namespace kvs::daemon {
namespace {

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

using clock = std::chrono::steady_clock;

// The consumer's fetch wait on the embedded Kafka, unless [kafka] sets it.
constexpr std::pair<const char*, const char*> kEmbeddedFetchWait{"fetch.wait.max.ms", "10"};

// A record that needs room its table does not have (index at capacity,
// arena full, or reuse waiting for a reader): it waits, copied here, while
// its partition is not fetched; the table's other partitions and the other
// tables go on. Records behind it in its partition wait with it (they are
// fetched again when it is applied), so a partition is applied in order.
struct Held {
  int64_t offset = -1;  // -1: nothing waits
  uint64_t timestamp_ns = 0;
  bool tombstone = false;
  std::string key, value;
  format::HoldReason reason = format::HoldReason::kNone;
  clock::time_point since{}, next_try{};
  std::chrono::milliseconds backoff{1};
};

struct Table {
  config::TableConfig cfg;
  std::unique_ptr<TableWriter> writer;  // the segment readers read
  // A replacement being filled from the beginning of the topic (a rebuild),
  // or null. Records go to it; readers keep `writer`'s data until it is
  // current and takes the table's name.
  std::unique_ptr<TableWriter> rebuild;
  TableWriter& active() { return rebuild ? *rebuild : *writer; }
  uint64_t source_cluster = 0;  // XXH3 of the cluster id (0: unknown)
  uint64_t source_topic = 0;    // XXH3 of the topic name
  bool skip_batch = false;      // rest of this batch predates a seek
  int32_t partitions = 0;
  std::vector<int64_t> target;   // high watermark seen at start
  std::vector<bool> reached;     // position has reached target
  std::vector<int64_t> pending;  // next offset to publish after the batch; -1: none
  uint64_t applied = 0;
  uint64_t skipped = 0;
  bool ready = false;
  // Per partition: the record that waits for room, if any (see hold()).
  std::vector<Held> held;
  uint32_t n_held = 0;
  format::HoldReason hold_reason = format::HoldReason::kNone;  // of the latest hold
  clock::time_point next_hold_log{};
  uint64_t holds_unlogged = 0;
  // Per partition, for the age of the oldest unapplied record: the Kafka
  // timestamp of the last record applied, and when kvsd last saw the
  // partition caught up with its high watermark (Unix ns; 0: not yet).
  std::vector<uint64_t> last_applied_ts_ns;
  std::vector<uint64_t> caught_up_ns;
  // The reader last named in the log for holding memory back.
  ReaderHolder logged_holder;
  clock::time_point next_holder_log{};
};

// Retries `fn` while it fails with kTimeout (a broker not answering yet),
// logging each failure, until it succeeds, fails otherwise, or kvsd stops.
template <class F>
auto with_retry(const char* what, F fn) -> decltype(fn()) {
  for (int attempt = 1;; ++attempt) {
    auto r = fn();
    if (r || r.error().code != Errc::kTimeout || g_stop) return r;
    KVS_LOG_WARN("%s: %s; retrying (attempt %d)", what, r.error().message.c_str(), attempt);
    for (int i = 0; i < 10 && !g_stop; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void notify(const std::string& msg) { sd_notify(0, msg.c_str()); }

// At start: the topic's partition count, retried while the cluster does not
// answer or calls the topic unknown, up to `bound` (kafka/topic_wait.hpp),
// creating it where the config says so; STATUS= and the log say what kvsd
// waits for.
Result<int32_t> wait_for_topic(const Table& t, kafka::Consumer& c, std::chrono::seconds bound) {
  using Clock = kafka::TopicWait::Clock;
  const auto start = Clock::now();
  kafka::TopicWait wait(bound, t.cfg.create_topic, start);
  auto next_log = start;
  for (;;) {
    // Each metadata request waits at most what is left of the bound.
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(start + bound - Clock::now());
    const auto timeout = std::clamp<int64_t>(left.count(), 500, 5000);
    auto n = c.partition_count(t.cfg.topic, static_cast<int>(timeout));
    const auto now = Clock::now();
    switch (wait.after(n, now)) {
      case kafka::TopicWait::Next::kUse:
        return n;
      case kafka::TopicWait::Next::kGiveUp:
        if (n.error().code == Errc::kNotFound) {
          return make_error(Errc::kNotFound,
                            n.error().message + " (still, after " + std::to_string(bound.count()) +
                                " s: topic_wait_s); create it with cleanup.policy=compact" +
                                (t.cfg.create_topic ? "" : ", or set create_topic = true"));
        }
        return make_error(n.error().code, "no usable answer from Kafka within " +
                                              std::to_string(bound.count()) +
                                              " s (topic_wait_s): " + n.error().message);
      case kafka::TopicWait::Next::kCreate: {
        // Durability: acks=all protects a write only with at least two
        // in-sync replicas, and only if no replica that missed it can lead.
        std::map<std::string, std::string> configs{{"unclean.leader.election.enable", "false"}};
        const int32_t rf = t.cfg.create_replication_factor;
        if (rf >= 2) {
          configs["min.insync.replicas"] =
              std::to_string(std::min(t.cfg.create_min_insync_replicas, rf));
        }
        KVS_LOG_INFO(
            "table %s: creating topic %s (%d partitions, cleanup.policy=compact%s%s): it "
            "stayed unknown to the cluster",
            t.cfg.name.c_str(), t.cfg.topic.c_str(), t.cfg.create_partitions,
            rf >= 2 ? ", min.insync.replicas=" : "",
            rf >= 2 ? configs["min.insync.replicas"].c_str() : "");
        auto made = c.create_topic(t.cfg.topic, t.cfg.create_partitions, rf, configs, 10000);
        if (!made && made.error().code != Errc::kTimeout) {
          return std::move(made).error().context(
              "create the topic yourself "
              "(cleanup.policy=compact)");
        }
        continue;  // metadata lags behind creation for a moment
      }
      case kafka::TopicWait::Next::kRetry:
        break;
    }
    if (g_stop) return n;
    const std::string what =
        wait.unknown() ? "topic " + t.cfg.topic + " to be known to the cluster" : "Kafka to answer";
    notify("STATUS=table " + t.cfg.name + ": waiting for " + what);
    if (now >= next_log) {
      KVS_LOG_WARN("table %s: waiting for %s (%s); giving up after %lld s", t.cfg.name.c_str(),
                   what.c_str(), n.error().message.c_str(), static_cast<long long>(bound.count()));
      next_log = now + std::chrono::seconds(10);
    }
    const auto pause = wait.backoff();
    for (auto slept = std::chrono::milliseconds(0); slept < pause && !g_stop;
         slept += std::chrono::milliseconds(50)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

uint64_t hash_of(const std::string& s) { return format::hash_key(s.data(), s.size()); }

using format::HoldReason;
using namespace std::chrono_literals;

// A reader holding memory back is named in the log once it has done so
// this long: longer than a read of a large table takes.
constexpr auto kHolderLogAfter = 3s;

uint64_t timestamp_ns(const rd_kafka_message_t* m) {
  const int64_t ms = rd_kafka_message_timestamp(m, nullptr);
  return ms > 0 ? static_cast<uint64_t>(ms) * 1000000 : 0;
}

std::string utc_time(uint64_t unix_ns) {
  const auto t = static_cast<time_t>(unix_ns / 1000000000);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// "reader process 123 (file) has held 1.0 MiB back from reuse since T".
std::string describe_holder(const ReaderHolder& h, uint64_t bytes) {
  const std::string who = h.pid > 0
                              ? "reader process " + std::to_string(h.pid) + " (" + h.file + ")"
                              : "reader " + h.file;
  return who + " has held " + mib(bytes) + " back from reuse since " + utc_time(h.since_unix_ns);
}

bool needs_room(Errc code) { return code == Errc::kBusy || code == Errc::kTableFull; }

HoldReason reason_of(Table& t, Errc code) {
  if (code == Errc::kBusy) return HoldReason::kReaders;
  TableWriter& w = t.active();
  return w.stats().size >= w.header().capacity ? HoldReason::kCapacity : HoldReason::kMemory;
}

const char* reason_text(HoldReason r) {
  switch (r) {
    case HoldReason::kCapacity:
      return "the table holds its capacity of keys";
    case HoldReason::kMemory:
      return "the table's arena (memory_limit_bytes) is full";
    case HoldReason::kReaders:
      return "its room waits for a reader to finish its read";
    case HoldReason::kNone:
      break;
  }
  return "no room";
}

Result<void> apply_to(TableWriter& w, std::string_view key, const char* payload, size_t len) {
  if (payload == nullptr) {  // tombstone
    auto e = w.erase(key);
    return e ? Result<void>{} : Result<void>(std::move(e).error());
  }
  return w.put(key, {payload, len});
}

void note_skipped(Table& t, int32_t p, int64_t offset, const Error& e) {
  ++t.skipped;
  t.active().count_skipped();
  KVS_LOG_WARN("table %s: skipped %s[%d] offset %lld: %s", t.cfg.name.c_str(), t.cfg.topic.c_str(),
               p, static_cast<long long>(offset), e.message.c_str());
}

void publish_hold(Table& t) {
  t.writer->set_hold(t.n_held, t.hold_reason);
  if (t.rebuild) t.rebuild->set_hold(t.n_held, t.hold_reason);
}

// At most one line about holds per table per 10 s; the suffix counts the
// ones not logged.
std::optional<std::string> hold_log_due(Table& t, clock::time_point now) {
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
bool hold(Table& t, kafka::Consumer& c, const rd_kafka_message_t* m, const Error& e) {
  const int32_t p = m->partition;
  const auto now = clock::now();
  Held& h = t.held[p];
  h.offset = m->offset;
  h.timestamp_ns = timestamp_ns(m);
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
bool retry_holds(Table& t, kafka::Consumer& c, clock::time_point now) {
  for (int32_t p = 0; p < t.partitions && t.n_held > 0; ++p) {
    Held& h = t.held[p];
    if (h.offset < 0 || now < h.next_try) continue;
    auto r = apply_to(t.active(), h.key, h.tombstone ? nullptr : h.value.data(), h.value.size());
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
      t.last_applied_ts_ns[p] = h.timestamp_ns;
    }
    const int64_t next = h.offset + 1;
    t.active().set_next_offset(static_cast<uint32_t>(p), next);
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
clock::time_point next_hold_try(const std::vector<Table>& tables, clock::time_point limit) {
  for (const auto& t : tables) {
    if (t.n_held == 0) continue;
    for (const Held& h : t.held) {
      if (h.offset >= 0) limit = std::min(limit, h.next_try);
    }
  }
  return limit;
}

// A rebuild starts every partition of the table over: nothing waits.
void drop_holds(Table& t, kafka::Consumer& c) {
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
void report_holder(Table& t, clock::time_point now) {
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
void refresh_lag(Table& t, kafka::Consumer& c, const kafka::WatermarkPoller& poller) {
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
    const uint64_t bound = h.offset >= 0 && h.timestamp_ns != 0
                               ? h.timestamp_ns
                               : std::max(t.last_applied_ts_ns[p], t.caught_up_ns[p]);
    if (bound != 0 && (oldest == 0 || bound < oldest)) oldest = bound;
  }
  w.set_oldest_unapplied(oldest);
}

// What STATUS= adds about tables under pressure ("" if none).
std::string pressure_status(const std::vector<Table>& tables) {
  std::string s;
  for (const auto& t : tables) {
    if (t.n_held > 0) {
      s += "; table " + t.cfg.name + ": " + std::to_string(t.n_held) +
           " partition(s) wait for room (" + reason_text(t.hold_reason) + ")";
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

// Queries every partition's watermarks; records the high watermarks as the
// targets to reach and in `into`. Returns (low, high) per partition.
Result<std::vector<std::pair<int64_t, int64_t>>> capture_targets(Table& t, kafka::Consumer& c,
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
Result<void> start_rebuild(Table& t, kafka::Consumer& c, const std::string& why, bool seek) {
  KVS_LOG_WARN(
      "table %s: %s; rebuilding it from the beginning of topic %s in a new segment "
      "(readers keep the current data until the new segment has caught up)",
      t.cfg.name.c_str(), why.c_str(), t.cfg.topic.c_str());
  drop_holds(t, c);
  t.rebuild.reset();  // a rebuild under way starts over
  auto r = t.writer->begin_replacement();
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
  t.applied = t.skipped = 0;
  t.skip_batch = true;
  if (seek) return c.reassign_from_beginning(t.cfg.topic, t.partitions);
  return {};
}

// Why the segment cannot resume from its recorded offsets, or "".
std::string why_rebuild(const Table& t, const std::vector<std::pair<int64_t, int64_t>>& wms) {
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

// Removes a table's segment so that the next writer starts afresh, first
// flagging it replaced (if it is one of this layout that kvsd may write), so
// that open readers move to the new segment instead of reading the removed
// one for as long as they run.
void discard_segment(const std::string& name) {
  if (auto m = shm::open_segment(name, shm::Access::kReadWrite);
      m && (*m)->size() >= sizeof(format::TableHeader)) {
    auto* h = reinterpret_cast<format::TableHeader*>((*m)->data());
    if (h->magic == format::kTableMagic && h->layout_version == format::kLayoutVersion) {
      h->replaced.store(1, std::memory_order_release);
    }
  }
  shm::remove_segment(name);
}

// At start: the partitions the table follows, the high watermarks to reach
// and where each partition starts (appended to `starts`). A segment that
// cannot resume (why_rebuild) or cannot hold the topic's partitions is
// rebuilt from the beginning of the topic.
Result<void> open_partitions(Table& t, kafka::Consumer& c, int32_t n,
                             std::vector<kafka::PartitionStart>& starts) {
  if (static_cast<uint32_t>(n) > t.cfg.max_partitions) {
    return make_error(Errc::kInvalidArgument,
                      "table " + t.cfg.name + ": topic " + t.cfg.topic + " has " +
                          std::to_string(n) + " partitions, above max_partitions = " +
                          std::to_string(t.cfg.max_partitions) + "; raise it");
  }
  // A segment that tracks fewer partitions is not touched beyond them.
  const bool fits = static_cast<bool>(t.writer->set_partition_count(static_cast<uint32_t>(n)));
  t.partitions = n;
  t.target.assign(n, 0);
  t.reached.assign(n, false);
  t.pending.assign(n, -1);
  t.held.assign(n, Held{});
  t.last_applied_ts_ns.assign(n, 0);
  t.caught_up_ns.assign(n, 0);
  t.source_topic = hash_of(t.cfg.topic);
  if (auto id = c.cluster_id(2000)) {
    t.source_cluster = hash_of(*id);
  } else {
    KVS_LOG_DEBUG("table %s: %s; the segment's cluster is not checked", t.cfg.name.c_str(),
                  id.error().message.c_str());
  }
  std::string why;
  if (!fits) {
    why = "its segment tracks at most " + std::to_string(t.writer->header().partition_capacity) +
          " partitions and topic " + t.cfg.topic + " has " + std::to_string(n);
  } else {
    auto wms = capture_targets(t, c, *t.writer);
    if (!wms) return std::move(wms).error().context("table " + t.cfg.name);
    why = why_rebuild(t, *wms);
  }
  if (!why.empty()) {
    if (auto ok = start_rebuild(t, c, why, /*seek=*/false); !ok) return ok;
  } else {
    t.writer->set_source(t.source_cluster, t.source_topic);
  }
  for (int32_t p = 0; p < n; ++p) {
    const int64_t next = t.active().next_offset(static_cast<uint32_t>(p));
    if (!t.rebuild) t.reached[p] = next >= t.target[p];
    starts.push_back({t.cfg.topic, p, (next > 0 && !t.rebuild) ? next : -2});
  }
  return {};
}

}  // namespace

int run(const config::Config& cfg, const RunOptions& opts) {
  g_stop = 0;
  log::set_level(cfg.log_level);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  auto properties = cfg.kafka;
  std::unique_ptr<kafka::EmbeddedKafka> embedded;
  if (opts.embedded_kafka) {
    auto k = kafka::EmbeddedKafka::start(1);
    if (!k) {
      KVS_LOG_ERROR("%s", k.error().message.c_str());
      return 1;
    }
    embedded = std::move(*k);
    for (const auto& t : cfg.tables) {
      if (auto ok = embedded->create_topic(t.topic, t.create_partitions); !ok) {
        KVS_LOG_ERROR("%s", ok.error().message.c_str());
        return 1;
      }
    }
    std::erase_if(properties, [](const auto& p) { return p.first == "bootstrap.servers"; });
    properties.emplace_back("bootstrap.servers", embedded->bootstrap_servers());
    // The mock cluster answers a fetch that finds no new record only when
    // fetch.wait.max.ms (librdkafka's default: 500 ms) has passed, even if a
    // record arrives meanwhile; a real broker answers as soon as one does.
    // With the default, every "visible" write and kvs_wait would take up to
    // half a second here. A short wait costs an empty fetch every 10 ms
    // while idle. [kafka] may still set it.
    if (std::none_of(properties.begin(), properties.end(),
                     [](const auto& p) { return p.first == kEmbeddedFetchWait.first; })) {
      properties.emplace_back(kEmbeddedFetchWait.first, kEmbeddedFetchWait.second);
    }
    std::printf("embedded Kafka: bootstrap.servers=%s\n", embedded->bootstrap_servers().c_str());
    std::fflush(stdout);
    KVS_LOG_WARN(
        "embedded Kafka (librdkafka's mock cluster) at %s: its data lives only as long "
        "as this kvsd process; use a real cluster for anything you keep",
        embedded->bootstrap_servers().c_str());
  }

  auto gid = config::resolve_group(cfg.shm_group, "shm_group");
  if (!gid) {
    KVS_LOG_ERROR("%s", gid.error().message.c_str());
    return kExitConfig;
  }

  // 1. The tables: attach to the segments that are there, else create them.
  std::vector<Table> tables;
  std::map<std::string, size_t, std::less<>> by_topic;
  for (const auto& tc : cfg.tables) {
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
    wo.group = *gid;
    wo.dead_reader_check = std::chrono::milliseconds(cfg.dead_reader_check_ms);
    wo.reader_scan_interval = std::chrono::milliseconds(1);
    if (embedded) {
      // A new embedded cluster starts empty: offsets recorded against an
      // earlier one mean nothing. Readers of the old segment keep it mapped.
      if (auto seg = shm::segment_name(cfg.shm_prefix, tc.name)) discard_segment(*seg);
    }
    auto w = TableWriter::open(wo);
    if (!w) {
      KVS_LOG_ERROR("table %s: %s", tc.name.c_str(), w.error().message.c_str());
      return 1;
    }
    const char* how = (*w)->attach_kind() == AttachKind::kAttached  ? "attached to"
                      : (*w)->attach_kind() == AttachKind::kCreated ? "created"
                                                                    : "replaced";
    KVS_LOG_INFO("table %s: %s /dev/shm/%s (%llu entries)", tc.name.c_str(), how,
                 (*w)->segment_name().c_str(), static_cast<unsigned long long>((*w)->stats().size));
    (*w)->set_state(format::TableState::kBootstrapping);
    Table t;
    t.cfg = tc;
    t.writer = std::move(*w);
    by_topic[tc.topic] = tables.size();
    tables.push_back(std::move(t));
  }

  // 2. Kafka: partitions, the high watermarks to reach, where to start.
  auto consumer = kafka::Consumer::create(properties);
  if (!consumer) {
    KVS_LOG_ERROR("%s: %s", cfg.source.c_str(), consumer.error().message.c_str());
    return kExitConfig;
  }
  std::vector<kafka::PartitionStart> starts;
  for (auto& t : tables) {
    auto n = wait_for_topic(t, *consumer, std::chrono::seconds(cfg.topic_wait_s));
    if (g_stop) return 0;
    if (!n) {
      KVS_LOG_ERROR("table %s: %s", t.cfg.name.c_str(), n.error().message.c_str());
      return 1;
    }
    if (auto ok = open_partitions(t, *consumer, *n, starts); !ok || g_stop) {
      if (g_stop) return 0;
      KVS_LOG_ERROR("%s", ok.error().message.c_str());
      return ok.error().code == Errc::kInvalidArgument ? kExitConfig : 1;
    }
    KVS_LOG_INFO("table %s: topic %s, %d partitions", t.cfg.name.c_str(), t.cfg.topic.c_str(), *n);
  }
  // A topic that is not compacted loses keys to retention; the table would
  // then be rebuilt from what remains. Asked in the background: the answer
  // must not delay READY, and not every cluster can tell.
  {
    std::vector<std::string> topics;
    for (const auto& t : tables) topics.push_back(t.cfg.topic);
    consumer->request_topic_configs(topics, 5000);
  }
  if (auto ok = consumer->assign(starts); !ok) {
    KVS_LOG_ERROR("%s", ok.error().message.c_str());
    return 1;
  }
  // Writes are served from here on, during bootstrap too (Kafka takes them;
  // VISIBLE waits until the table has caught up to them).
  auto server = Server::start(cfg, properties);
  if (!server) {
    KVS_LOG_ERROR("%s", server.error().message.c_str());
    return server.error().code == Errc::kInvalidArgument ? kExitConfig : 1;
  }

  int exit_code = 0;
  bool all_ready = false;
  auto check_ready = [&](Table& t) {
    if (t.ready && !t.rebuild) return;
    for (bool r : t.reached) {
      if (!r) return;
    }
    if (t.rebuild) {
      // The new segment is current: it takes the table's name and readers
      // move to it.
      t.rebuild->set_state(format::TableState::kReady);
      if (auto ok = t.writer->publish_replacement(*t.rebuild); !ok) {
        KVS_LOG_ERROR("table %s: publishing the rebuilt segment: %s", t.cfg.name.c_str(),
                      ok.error().message.c_str());
        exit_code = 1;
        g_stop = 1;
        return;
      }
      t.writer = std::move(t.rebuild);
      if (all_ready) notify("STATUS=READY: table " + t.cfg.name + " rebuilt");
      KVS_LOG_INFO(
          "table %s: rebuilt from the topic (%llu records applied, %llu skipped); "
          "readers moved to the new segment",
          t.cfg.name.c_str(), static_cast<unsigned long long>(t.applied),
          static_cast<unsigned long long>(t.skipped));
    }
    if (t.ready) return;
    t.ready = true;
    t.writer->set_state(format::TableState::kReady);
    KVS_LOG_INFO("table %s: READY (%llu records applied, %llu skipped)", t.cfg.name.c_str(),
                 static_cast<unsigned long long>(t.applied),
                 static_cast<unsigned long long>(t.skipped));
  };
  auto update_all_ready = [&] {
    bool all = true;
    for (auto& t : tables) {
      check_ready(t);
      all = all && t.ready;
    }
    if (all && !all_ready) {
      all_ready = true;
      notify("READY=1\nSTATUS=READY: " + std::to_string(tables.size()) + " table(s) current");
    }
  };
  update_all_ready();

  // High watermarks from a thread of their own, also for partitions that
  // are not fetched while a record of theirs waits for room.
  kafka::WatermarkPoller poller(*consumer, std::chrono::seconds(1), std::chrono::seconds(2));
  for (const auto& t : tables) poller.follow(t.cfg.topic, t.partitions);
  std::string last_status;

  uint64_t watchdog_usec = 0;
  const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0;
  auto next_status = clock::now();
  auto next_watchdog = clock::now();
  auto next_watermarks = clock::now();

  // 3. Consume and apply until told to stop.
  constexpr size_t kBatch = 1024;
  std::vector<rd_kafka_message_t*> batch(kBatch);
  std::vector<Table*> owner(kBatch);
  // Topic handle -> table, so that the name is looked up once per handle.
  std::vector<std::pair<const rd_kafka_topic_t*, size_t>> by_handle;
  auto table_of = [&](const rd_kafka_topic_t* rkt) -> Table* {
    for (const auto& [h, i] : by_handle) {
      if (h == rkt) return &tables[i];
    }
    auto it = by_topic.find(std::string_view(rd_kafka_topic_name(rkt)));
    if (it == by_topic.end()) return nullptr;
    if (by_handle.size() >= 64) by_handle.clear();  // handles are long-lived; stay bounded anyway
    by_handle.emplace_back(rkt, it->second);
    return &tables[it->second];
  };
  while (!g_stop) {
    for (auto& t : tables) t.skip_batch = false;
    // A record waiting for room is tried again when due, not a poll later.
    const auto poll_start = clock::now();
    const auto poll_until =
        next_hold_try(tables, poll_start + std::chrono::milliseconds(cfg.poll_timeout_ms));
    const auto poll_ms = std::chrono::ceil<std::chrono::milliseconds>(poll_until - poll_start);
    const size_t n = consumer->poll_batch(static_cast<int>(std::max<int64_t>(0, poll_ms.count())),
                                          batch.data(), kBatch);
    // Index groups of the records a few places ahead are loaded while this
    // one is applied, and, a few places later, the entry an overwrite
    // compares its key with: a batch costs about one cache miss, not two
    // dependent ones per record.
    constexpr size_t kAhead = 16, kEntryAhead = 8;
    // owner[j]: the table of batch[j], looked up once, when it is prefetched.
    auto prefetch = [&](size_t j) {
      if (j >= n) return;
      const rd_kafka_message_t* m = batch[j];
      owner[j] = m->rkt ? table_of(m->rkt) : nullptr;
      if (owner[j] != nullptr && !m->err && m->key != nullptr) {
        owner[j]->active().prefetch({static_cast<const char*>(m->key), m->key_len});
      }
    };
    auto prefetch_entry = [&](size_t j) {
      if (j >= n) return;
      const rd_kafka_message_t* m = batch[j];
      if (owner[j] != nullptr && !m->err && m->key != nullptr) {
        owner[j]->active().prefetch_entry({static_cast<const char*>(m->key), m->key_len});
      }
    };
    for (size_t j = 0; j < kAhead; ++j) prefetch(j);
    for (size_t j = 0; j < kEntryAhead; ++j) prefetch_entry(j);
    for (size_t i = 0; i < n; ++i) {
      prefetch(i + kAhead);
      prefetch_entry(i + kEntryAhead);
      rd_kafka_message_t* m = batch[i];
      Table* tp = owner[i];
      if (tp == nullptr || m->partition < 0) {
        if (m->err) KVS_LOG_WARN("Kafka: %s", rd_kafka_message_errstr(m));
        kafka::Consumer::release(m);
        continue;
      }
      Table& t = *tp;
      const int32_t p = m->partition;
      if (p >= t.partitions) {
        kafka::Consumer::release(m);
        continue;
      }
      if (t.skip_batch || t.held[p].offset >= 0) {
        // Fetched before the table's partitions went back to the beginning,
        // or behind a record that waits for room (fetched again after it).
        kafka::Consumer::release(m);
        continue;
      }
      if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ||
          m->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) {
        // The log no longer holds our position (retention, a recreated
        // topic): skipping ahead would lose records silently.
        const std::string why =
            std::string(t.cfg.topic) + "[" + std::to_string(p) + "]: " + rd_kafka_message_errstr(m);
        if (auto ok = start_rebuild(t, *consumer, why, /*seek=*/true); !ok) {
          KVS_LOG_ERROR("%s", ok.error().message.c_str());
          exit_code = 1;
          g_stop = 1;
        }
      } else if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        // The end of what the broker has: everything below m->offset is applied.
        if (m->offset > t.pending[p]) t.pending[p] = m->offset;
        if (m->offset >= t.target[p]) t.reached[p] = true;
      } else if (m->err) {
        KVS_LOG_ERROR("table %s: %s[%d]: %s", t.cfg.name.c_str(), t.cfg.topic.c_str(), p,
                      rd_kafka_message_errstr(m));
      } else {
        const std::string_view key(static_cast<const char*>(m->key), m->key_len);
        auto r = apply_to(t.active(), key, static_cast<const char*>(m->payload), m->len);
        if (!r && needs_room(r.error().code)) {
          // Skipping would lose data: it waits, and only its partition with it.
          if (!hold(t, *consumer, m, r.error())) {
            exit_code = 1;
            g_stop = 1;
          }
          kafka::Consumer::release(m);
          continue;
        }
        if (!r) {
          note_skipped(t, p, m->offset, r.error());
        } else {
          // While bootstrapping, a sample of the timestamps is enough: an
          // older one only makes the age bound larger.
          if (t.ready || (t.applied & 15) == 0) t.last_applied_ts_ns[p] = timestamp_ns(m);
          ++t.applied;
        }
        // Published per record, right after it is visible: a kvsd killed
        // here replays from the record after it, so readers never see a key
        // go back to an older value (the replay is of records they have not
        // seen yet, or of this one).
        t.active().set_next_offset(static_cast<uint32_t>(p), m->offset + 1);
        if (m->offset + 1 >= t.target[p]) t.reached[p] = true;
      }
      kafka::Consumer::release(m);
    }
    // Positions learnt from partition EOFs (offsets of control records and
    // compacted gaps): every record below them is visible.
    for (auto& t : tables) {
      for (int32_t p = 0; p < t.partitions; ++p) {
        const auto up = static_cast<uint32_t>(p);
        if (t.pending[p] > t.active().next_offset(up)) t.active().set_next_offset(up, t.pending[p]);
        t.pending[p] = -1;
      }
      t.active().reclaim();
      if (auto walk = t.writer->take_attach_walk_report()) {
        if (!walk->corrupt) {
          if (walk->leaked_blocks > 0) {
            KVS_LOG_INFO("table %s: %s", t.cfg.name.c_str(), walk->message.c_str());
          }
        } else if (!t.rebuild) {
          if (auto ok = start_rebuild(t, *consumer, walk->message, /*seek=*/true); !ok) {
            KVS_LOG_ERROR("%s", ok.error().message.c_str());
            exit_code = 1;
            g_stop = 1;
          }
        }
      }
    }
    const auto now = clock::now();
    for (auto& t : tables) {
      if (t.n_held > 0 && !retry_holds(t, *consumer, now)) {
        exit_code = 1;
        g_stop = 1;
      }
    }
    (*server)->applied();
    update_all_ready();
    if (auto configs = consumer->poll_topic_configs()) {
      for (const auto& [topic, cfgs] : *configs) {
        if (!cfgs) {
          KVS_LOG_INFO("cannot tell whether topic %s is compacted and durable (%s)", topic.c_str(),
                       cfgs.error().message.c_str());
          continue;
        }
        for (const auto& w : kafka::topic_warnings(topic, cfgs.value()))
          KVS_LOG_WARN("%s", w.c_str());
      }
    }
    if (now >= next_watermarks) {
      // The lag readers see (kvs_partition_offsets, kvsctl stats) follows
      // the high watermarks, not only the start's; readers that hold memory
      // back are named.
      next_watermarks = now + std::chrono::seconds(1);
      for (auto& t : tables) {
        refresh_lag(t, *consumer, poller);
        report_holder(t, now);
      }
      if (all_ready) {
        const std::string status = "STATUS=READY: " + std::to_string(tables.size()) +
                                   " table(s) current" + pressure_status(tables);
        if (status != last_status) notify(status);
        last_status = status;
      }
    }
    if (watchdog && now >= next_watchdog) {
      notify("WATCHDOG=1");
      next_watchdog = now + std::chrono::microseconds(watchdog_usec / 2);
    }
    bool rebuilding = false;
    for (const auto& t : tables) rebuilding = rebuilding || t.rebuild;
    if ((!all_ready || rebuilding) && now >= next_status) {
      next_status = now + std::chrono::seconds(1);
      uint64_t applied = 0;
      double done = 0, total = 0;
      for (auto& t : tables) {
        if (t.ready && !t.rebuild) continue;
        applied += t.applied;
        for (int32_t p = 0; p < t.partitions; ++p) {
          total += static_cast<double>(t.target[p]);
          done += static_cast<double>(
              std::min(t.active().next_offset(static_cast<uint32_t>(p)), t.target[p]));
        }
      }
      const int pct = total > 0 ? static_cast<int>(100.0 * done / total) : 100;
      last_status = std::string("STATUS=") + (all_ready ? "REBUILDING: " : "BOOTSTRAPPING: ") +
                    std::to_string(applied) + " records, " + std::to_string(pct) + "%" +
                    pressure_status(tables);
      notify(last_status);
    }
  }
  notify("STOPPING=1");
  // Writes in flight get a moment to be acknowledged and answered.
  (*server)->stop(std::chrono::milliseconds(std::min<uint32_t>(cfg.write_timeout_ms, 5000)));
  KVS_LOG_INFO("stopping: segments stay for the next start");
  return exit_code;
}

}  // namespace kvs::daemon
