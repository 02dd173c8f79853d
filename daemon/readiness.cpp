// One table's replica turning READY (and a rebuilt segment's swap), and
// what kvsd reports about a table: its lag, the reader that holds memory
// back, STATUS=.
#include <cstdio>

#include "log.hpp"
#include "replica.hpp"

namespace kvs::daemon {

using namespace std::chrono_literals;
using log::utc_time;

// A reader holding memory back is named in the log once it has done so
// this long: longer than a read of a large table takes.
static constexpr auto kHolderLogAfter = 3s;

static std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

std::string describe_holder(const ReaderHolder& h, uint64_t bytes) {
  const std::string who = h.pid > 0
                              ? "reader process " + std::to_string(h.pid) + " (" + h.file + ")"
                              : "reader " + h.file;
  return who + " has held " + mib(bytes) + " back from reuse since " + utc_time(h.since_unix_ns);
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
  for (int32_t p = 0; p < t.partition_count(); ++p) {
    const auto up = static_cast<uint32_t>(p);
    const int64_t hw =
        std::max(c.cached_high_watermark(t.cfg.topic, p), poller.high_watermark(t.cfg.topic, p));
    if (hw >= 0) w.set_high_watermark(up, hw);
    if (hw <= w.next_offset(up)) {
      t.parts[p].caught_up_ns = now_ns;
      t.parts[p].oldest_unapplied_ns = 0;
      continue;
    }
    // A held record's timestamp is exact. Otherwise the oldest unapplied
    // record came after the last one applied, and after the partition was
    // last seen caught up: the later of the two bounds its age.
    const Held& h = t.parts[p].held;
    const uint64_t bound = h.offset >= 0 && h.timestamp_ms != 0
                               ? ms_to_ns(h.timestamp_ms)
                               : std::max(t.parts[p].last_applied_ts_ns, t.parts[p].caught_up_ns);
    t.parts[p].oldest_unapplied_ns = bound;
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

std::string progress_status(const std::vector<Replica>& tables, bool all_ready) {
  uint64_t applied = 0;
  double done = 0, total = 0;
  for (const auto& t : tables) {
    if (t.ready && !replacing(t.phase)) continue;
    applied += t.applied;
    const TableWriter& w = replacing(t.phase) ? *t.rebuild : *t.writer;
    for (int32_t p = 0; p < t.partition_count(); ++p) {
      total += static_cast<double>(t.parts[p].target);
      done +=
          static_cast<double>(std::min(w.next_offset(static_cast<uint32_t>(p)), t.parts[p].target));
    }
  }
  const int pct = total > 0 ? static_cast<int>(100.0 * done / total) : 100;
  return std::string(all_ready ? "REBUILDING: " : "BOOTSTRAPPING: ") + std::to_string(applied) +
         " records, " + std::to_string(pct) + "%";
}

ReadyChange check_ready(Replica& t) {
  switch (t.phase) {
    case Phase::kReady:
      return ReadyChange::kNone;
    case Phase::kGrowing:  // readers see the table once its growth is swapped in
      return ReadyChange::kNone;
    case Phase::kBootstrapping:
    case Phase::kRebuilding:
    case Phase::kSeeded:
      break;
  }
  for (const PartitionTrack& pt : t.parts) {
    if (!pt.reached) return ReadyChange::kNone;
  }
  ReadyChange change = ReadyChange::kReady;
  if (replacing(t.phase)) {
    // The new segment is current: it takes the table's name and readers
    // move to it.
    const Replica::Seed seed = t.seed;
    const bool seeded = t.phase == Phase::kSeeded;
    if (auto ok = publish_rebuild(t); !ok) {
      KVS_LOG_ERROR("table %s: publishing the rebuilt segment: %s", t.cfg.name.c_str(),
                    ok.error().message.c_str());
      return ReadyChange::kFailed;
    }
    change = ReadyChange::kRebuilt;
    if (seeded) {
      KVS_LOG_INFO(
          "table %s: started from snapshot %s and %llu records from the topic (%llu skipped) "
          "in %.0f ms; readers moved to the new segment",
          t.cfg.name.c_str(), seed.path.c_str(), static_cast<unsigned long long>(t.applied),
          static_cast<unsigned long long>(t.skipped),
          std::chrono::duration<double, std::milli>(clock::now() - seed.since).count());
    } else {
      KVS_LOG_INFO(
          "table %s: rebuilt from the topic (%llu records applied, %llu skipped); "
          "readers moved to the new segment",
          t.cfg.name.c_str(), static_cast<unsigned long long>(t.applied),
          static_cast<unsigned long long>(t.skipped));
    }
  }
  if (t.ready) return change;
  become_ready(t);
  KVS_LOG_INFO("table %s: READY (%llu records applied, %llu skipped)", t.cfg.name.c_str(),
               static_cast<unsigned long long>(t.applied),
               static_cast<unsigned long long>(t.skipped));
  return change;
}

}  // namespace kvs::daemon
