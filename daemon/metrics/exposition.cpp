// kvsd's metrics page; see exposition.hpp. Names follow Prometheus's
// conventions: `kvs_table_*` per table, `kvs_partition_*` per partition,
// `kvsd_*` per daemon; counters end in `_total`, units are spelt out
// (`_bytes`, `_seconds`, `_records`), and a value carried as a label is an
// `_info` family of value 1.
#include "metrics/exposition.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <iterator>

#include "format/layout.hpp"

namespace kvs::daemon::metrics {

std::string escape_label(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void Writer::family(std::string_view name, std::string_view type, std::string_view help) {
  out_.append("# HELP ").append(name).append(" ").append(help).append("\n# TYPE ");
  out_.append(name).append(" ").append(type).append("\n");
}

void Writer::labels(const std::vector<std::string_view>& labels) {
  if (labels.empty()) return;
  out_ += '{';
  for (size_t i = 0; i + 1 < labels.size(); i += 2) {
    if (i > 0) out_ += ',';
    out_.append(labels[i]).append("=\"").append(escape_label(labels[i + 1])).append("\"");
  }
  out_ += '}';
}

void Writer::sample(std::string_view name, const std::vector<std::string_view>& l, double value) {
  out_.append(name);
  labels(l);
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, value);
  out_.append(" ").append(buf, r.ptr).append("\n");
}

void Writer::sample(std::string_view name, const std::vector<std::string_view>& l, uint64_t value) {
  out_.append(name);
  labels(l);
  out_.append(" ").append(std::to_string(value)).append("\n");
}

namespace {

double age_s(uint64_t unix_ns, uint64_t now) {
  return unix_ns == 0 || unix_ns > now ? 0.0 : static_cast<double>(now - unix_ns) / 1e9;
}

// One family per table-level figure, each with a sample per table.
struct TableFigure {
  const char* name;
  const char* type;
  const char* help;
  double (*value)(const kvs_table_stats& s, const TableSource& t, uint64_t now);
};

#define KVS_FIGURE(expr)                                                       \
  [](const kvs_table_stats& s, const TableSource& t, uint64_t now) -> double { \
    (void)s;                                                                   \
    (void)t;                                                                   \
    (void)now;                                                                 \
    return static_cast<double>(expr);                                          \
  }

const TableFigure kTableFigures[] = {
    {"kvs_table_entries", "gauge", "Live keys in the table.", KVS_FIGURE(s.entries)},
    {"kvs_table_capacity_entries", "gauge", "Keys the table's index is sized for (it grows).",
     KVS_FIGURE(s.capacity)},
    {"kvs_table_segment_bytes", "gauge", "Size of the table's shared-memory segment.",
     KVS_FIGURE(s.segment_bytes)},
    {"kvs_table_arena_bytes", "gauge", "Size of the segment's arena of entries.",
     KVS_FIGURE(s.arena_bytes)},
    {"kvs_table_arena_used_bytes", "gauge", "Arena bytes handed out so far.",
     KVS_FIGURE(s.arena_used_bytes)},
    {"kvs_table_max_memory_bytes", "gauge",
     "max_memory_bytes of the table in kvsd.toml (0: no limit but /dev/shm).",
     KVS_FIGURE(t.max_memory_bytes)},
    {"kvs_table_puts_total", "counter", "Puts applied since the segment was created.",
     KVS_FIGURE(s.puts)},
    {"kvs_table_erases_total", "counter", "Erases applied since the segment was created.",
     KVS_FIGURE(s.erases)},
    {"kvs_table_records_skipped_total", "counter",
     "Records kvsd could not apply (over the table's size limits).", KVS_FIGURE(s.skipped)},
    {"kvs_table_writer_attaches_total", "counter", "kvsd starts on this segment.",
     KVS_FIGURE(s.writer_attaches)},
    {"kvs_table_held_partitions", "gauge", "Partitions whose next record waits for room.",
     KVS_FIGURE(s.held_partitions)},
    {"kvs_table_holder_pid", "gauge",
     "The reader process holding memory back longest, in its own pid namespace (0: none, -1: "
     "one kvsd cannot identify).",
     KVS_FIGURE(s.holder_pid)},
    {"kvs_table_holder_bytes", "gauge", "Arena bytes waiting for readers to finish their reads.",
     KVS_FIGURE(s.holder_bytes)},
    {"kvs_table_holder_seconds", "gauge", "How long that reader has held memory back.",
     KVS_FIGURE(s.holder_pid != 0 ? age_s(s.holder_since_unix_ns, now) : 0.0)},
    {"kvs_table_reader_slots_used", "gauge", "Reader slots live reader processes hold.",
     KVS_FIGURE(s.reader_slots_used)},
    {"kvs_table_readers_reading", "gauge", "Reader slots inside a read.",
     KVS_FIGURE(s.readers_reading)},
    {"kvs_table_waiters", "gauge", "Processes kvsd wakes after each batch (waits, watches).",
     KVS_FIGURE(s.waiters)},
    {"kvs_table_wakes_total", "counter", "FUTEX_WAKE calls kvsd made for the segment.",
     KVS_FIGURE(s.wakes)},
    {"kvs_table_change_log_entries", "gauge", "Size of the change log (0: watches are off).",
     KVS_FIGURE(s.change_log_entries)},
    {"kvs_table_change_log_position", "gauge", "Changes logged so far in the log's lineage.",
     KVS_FIGURE(s.change_log_position)},
    {"kvs_table_backlog_records", "gauge", "Records stored in Kafka and not applied yet.",
     KVS_FIGURE(s.backlog)},
    {"kvs_table_oldest_unapplied_age_seconds", "gauge",
     "Upper bound on the age of the oldest record not applied yet (0: none).",
     KVS_FIGURE(s.backlog > 0 ? age_s(s.oldest_unapplied_unix_ns, now) : 0.0)},
};
#undef KVS_FIGURE

void table_figures(Writer& w, const std::vector<TableSource>& tables,
                   const std::vector<kvs_table_stats>& stats, uint64_t now) {
  w.family("kvs_table_ready", "gauge", "1 once the table is READY, else 0 (BOOTSTRAPPING).");
  for (const auto& t : tables) {
    if (t.table != nullptr)
      w.sample("kvs_table_ready", {"table", t.name},
               uint64_t{kvs_state(t.table) == KVS_STATE_READY});
  }
  for (const TableFigure& f : kTableFigures) {
    w.family(f.name, f.type, f.help);
    for (size_t i = 0; i < tables.size(); ++i) {
      if (tables[i].table != nullptr)
        w.sample(f.name, {"table", tables[i].name}, f.value(stats[i], tables[i], now));
    }
  }
  w.family("kvs_table_hold_reason_info", "gauge",
           "Why partitions wait for room, at the latest hold (while any wait).");
  for (size_t i = 0; i < tables.size(); ++i) {
    if (tables[i].table != nullptr && stats[i].held_partitions > 0)
      w.sample("kvs_table_hold_reason_info",
               {"table", tables[i].name, "reason", format::hold_reason_name(stats[i].hold_reason)},
               uint64_t{1});
  }
}

// The digest as two exact 32-bit halves: a float64 sample cannot hold 64
// bits, and a label would make a new series at every change.
void digests(Writer& w, const std::vector<TableSource>& tables) {
  std::vector<std::pair<const std::string*, uint64_t>> read;
  for (const auto& t : tables) {
    kvs_digest d{};
    if (t.table != nullptr && kvs_table_digest(t.table, &d) == KVS_OK)
      read.emplace_back(&t.name, d.digest);
  }
  w.family("kvs_table_digest_upper_half", "gauge",
           "Upper 32 bits of the table's digest at its applied offsets (docs/format.md, \"The "
           "digest\"); absent while kvsd applies without pause.");
  for (const auto& [name, d] : read)
    w.sample("kvs_table_digest_upper_half", {"table", *name}, d >> 32);
  w.family("kvs_table_digest_lower_half", "gauge", "Lower 32 bits of the table's digest.");
  for (const auto& [name, d] : read)
    w.sample("kvs_table_digest_lower_half", {"table", *name}, d & 0xffffffffu);
}

void partitions(Writer& w, const std::vector<TableSource>& tables) {
  struct Row {
    const std::string* table;
    std::string partition;
    int64_t next, hw;
  };
  std::vector<Row> rows;
  for (const auto& t : tables) {
    const uint32_t n = t.table != nullptr ? kvs_partition_count(t.table) : 0;
    for (uint32_t p = 0; p < n; ++p) {
      Row r{&t.name, std::to_string(p), 0, 0};
      if (kvs_partition_offsets(t.table, p, &r.next, &r.hw) == KVS_OK) rows.push_back(r);
    }
  }
  auto each = [&](const char* name, const char* help, auto value) {
    w.family(name, "gauge", help);
    for (const Row& r : rows)
      w.sample(name, {"table", *r.table, "partition", r.partition}, value(r));
  };
  each("kvs_partition_applied_offset", "One past the last offset applied to the table.",
       [](const Row& r) { return static_cast<double>(r.next); });
  each("kvs_partition_high_watermark", "The partition's high watermark as kvsd last saw it.",
       [](const Row& r) { return static_cast<double>(r.hw); });
  each("kvs_partition_lag_records", "Records of the partition not applied yet.",
       [](const Row& r) { return format::partition_lag(r.next, r.hw); });
}

void snapshots(Writer& w, const std::vector<TableSource>& tables, const SnapshotStatus* status,
               uint64_t now) {
  std::vector<SnapshotFigures> f;
  for (const auto& t : tables) f.push_back(status ? status->figures(t.name) : SnapshotFigures{});
  auto each = [&](const char* name, const char* type, const char* help, auto value) {
    w.family(name, type, help);
    for (size_t i = 0; i < tables.size(); ++i) {
      if (f[i].created_unix_ns != 0 || std::string_view(type) == "counter")
        w.sample(name, {"table", tables[i].name}, value(f[i]));
    }
  };
  each("kvs_table_snapshot_age_seconds", "gauge",
       "Age of the last snapshot kvsd wrote (absent: none since it started).",
       [&](const SnapshotFigures& s) { return age_s(s.created_unix_ns, now); });
  each("kvs_table_snapshot_bytes", "gauge", "Size of the last snapshot file.",
       [](const SnapshotFigures& s) { return s.file_bytes; });
  each("kvs_table_snapshot_entries", "gauge", "Entries in the last snapshot.",
       [](const SnapshotFigures& s) { return s.entries; });
  each("kvs_table_snapshot_duration_seconds", "gauge", "Time the last snapshot took to write.",
       [](const SnapshotFigures& s) { return s.duration_s; });
  each("kvs_table_snapshot_failures_total", "counter", "Snapshots that failed since kvsd started.",
       [](const SnapshotFigures& s) { return s.failures; });
}

void server_counters(Writer& w, const server::Counters& c) {
  struct Figure {
    const char* name;
    const char* type;
    const char* help;
    uint64_t value;
  };
  const Figure figures[] = {
      {"kvsd_connections", "gauge", "Write-socket connections open.", c.connections},
      {"kvsd_requests_total", "counter", "Requests (frames) read from the write socket.",
       c.requests},
      {"kvsd_writes_acknowledged_total", "counter", "Writes Kafka acknowledged (acks=all).",
       c.writes_acked},
      {"kvsd_write_errors_total", "counter", "Writes answered with an error.", c.write_errors},
      {"kvsd_protocol_errors_total", "counter", "Malformed frames and protocol violations.",
       c.protocol_errors},
      {"kvsd_connections_refused_total", "counter",
       "Connections refused (peer not allowed, max_connections).", c.refused_connections},
      {"kvsd_connections_timed_out_total", "counter",
       "Connections closed for a handshake or frame that took too long.", c.timed_out_connections},
      {"kvsd_frame_memory_bytes", "gauge", "Memory of requests received in part.",
       c.unfinished_frame_bytes},
      {"kvsd_connections_waiting_for_frame_memory", "gauge",
       "Connections not read until frame memory is free.", c.waiting_for_frame_memory},
      {"kvsd_unsent_reply_bytes", "gauge", "Replies written and not yet read by their clients.",
       c.unsent_reply_bytes},
      {"kvsd_pending_requests", "gauge", "Requests not answered yet.", c.pending},
      {"kvsd_producer_queue_full_waits_total", "counter",
       "Writes that waited for room in the producer's queue.", c.queue_full_waits},
      {"kvsd_producer_queue_records", "gauge", "Records the producer has not delivered yet.",
       c.producer_queue},
  };
  for (const Figure& f : figures) {
    w.family(f.name, f.type, f.help);
    w.sample(f.name, {}, f.value);
  }
}

// What only the apply thread knows, as it published it (board.hpp).
void board_figures(Writer& w, const std::vector<TableSource>& tables, const Board& board,
                   uint64_t now) {
  const size_t n = std::min(tables.size(), board.size());
  auto each = [&](const char* name, const char* help, const std::atomic<uint64_t> TableBoard::*f) {
    w.family(name, "counter", help);
    for (size_t i = 0; i < n; ++i)
      w.sample(name, {"table", tables[i].name}, ((*board[i]).*f).load(std::memory_order_relaxed));
  };
  each("kvs_table_records_applied_total", "Records applied to the table since kvsd started.",
       &TableBoard::records_applied);
  each("kvs_table_rebuilds_total",
       "Rebuilt segments that took the table's name since kvsd started.", &TableBoard::rebuilds);
  each("kvs_table_growths_total", "Larger segments that took the table's name since kvsd started.",
       &TableBoard::growths);
  w.family("kvs_partition_oldest_unapplied_age_seconds", "gauge",
           "Upper bound on the age of the partition's oldest record not applied yet (0: none).");
  for (size_t i = 0; i < n; ++i) {
    const TableBoard& b = *board[i];
    const uint32_t parts = std::min<uint32_t>(b.partitions.load(std::memory_order_relaxed),
                                              static_cast<uint32_t>(b.oldest_unapplied_ns.size()));
    for (uint32_t p = 0; p < parts; ++p) {
      const std::string partition = std::to_string(p);
      w.sample("kvs_partition_oldest_unapplied_age_seconds",
               {"table", tables[i].name, "partition", partition},
               age_s(b.oldest_unapplied_ns[p].load(std::memory_order_relaxed), now));
    }
  }
}

// KVS_E* by number, for the `code` label.
const char* code_name(int code) {
  static const char* const kNames[] = {
      "",           "KVS_ENOTFOUND", "KVS_ENOTABLE", "KVS_ELAYOUT", "KVS_ECORRUPT", "KVS_EACCES",
      "KVS_EINVAL", "KVS_ETIMEDOUT", "KVS_EREADERS", "KVS_ERANGE",  "KVS_EFULL",    "KVS_ETOOBIG",
      "KVS_EBUSY",  "KVS_ESYS",      "KVS_ENOMEM",   "KVS_ENOTSUP", "KVS_EPROTO",   "KVS_EQUEUE",
      "KVS_ECONN",  "KVS_EKAFKA"};
  return code < 0 && -code < static_cast<int>(std::size(kNames)) ? kNames[-code] : "other";
}

void histogram(Writer& w, const char* name, const char* help, const server::LatencyHistogram& h) {
  const server::LatencyHistogram::Snapshot s = h.load();
  w.family(name, "histogram", help);
  uint64_t cumulative = 0;
  const std::string bucket = std::string(name) + "_bucket";
  for (size_t b = 0; b + 1 < server::LatencyHistogram::kBuckets; ++b) {
    cumulative += s.counts[b];
    char le[32];  // as Prometheus's clients spell bounds: 0.0005, 2.5, 10
    std::snprintf(le, sizeof le, "%g", server::LatencyHistogram::kBounds[b]);
    w.sample(bucket, {"le", le}, cumulative);
  }
  w.sample(bucket, {"le", "+Inf"}, s.count);
  w.sample(std::string(name) + "_sum", {}, s.sum_s);
  w.sample(std::string(name) + "_count", {}, s.count);
}

void write_figures(Writer& w, const server::WriteStats& ws) {
  w.family("kvsd_write_failures_total", "counter",
           "Writes answered with an error, by libkvs error code (kvs/kvs.h).");
  for (int code = -1; code >= -19; --code) {
    if (code == KVS_EREADERS || code == KVS_ENOTFOUND) continue;  // never a write's answer
    w.sample("kvsd_write_failures_total", {"code", code_name(code)}, ws.errors(code));
  }
  histogram(w, "kvsd_write_acknowledged_seconds",
            "Time from a write's arrival to its answer, Kafka having acknowledged it (acks=all).",
            ws.acked);
  histogram(w, "kvsd_write_visible_seconds",
            "Time from a VISIBLE write's arrival to its answer, this host's table having applied "
            "it.",
            ws.visible);
}

}  // namespace

std::string render(const std::vector<TableSource>& tables, const Sources& sources) {
  Writer w;
  const uint64_t now = format::now_unix_ns();
  std::vector<kvs_table_stats> stats(tables.size());
  for (size_t i = 0; i < tables.size(); ++i) {
    if (tables[i].table != nullptr) (void)kvs_stat(tables[i].table, &stats[i]);
  }
  w.family("kvsd_info", "gauge", "kvsd's version.");
  w.sample("kvsd_info", {"version", sources.version}, uint64_t{1});
  table_figures(w, tables, stats, now);
  digests(w, tables);
  partitions(w, tables);
  if (sources.board != nullptr) board_figures(w, tables, *sources.board, now);
  snapshots(w, tables, sources.snapshots, now);
  server_counters(w, sources.counters);
  if (sources.writes != nullptr) write_figures(w, *sources.writes);
  kafka_figures(w, sources.kafka, now);
  return w.take();
}

}  // namespace kvs::daemon::metrics
