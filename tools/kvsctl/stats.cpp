// kvsctl stats and kvsctl snapshot: what the table's header, its
// partitions and kvsd's STATS say about a table, for people and as JSON.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "format/layout.hpp"
#include "kvsctl.hpp"

namespace kvs::kvsctl {
namespace {

std::string human_bytes(uint64_t b) {
  char buf[32];
  if (b >= (uint64_t{1} << 30)) {
    std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(b) / (1 << 30));
  } else if (b >= (1 << 20)) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1 << 20));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(b) / 1024);
  }
  return buf;
}

// Seconds from a Unix-ns timestamp to now (0 if it is 0 or ahead).
double age_s(uint64_t unix_ns) {
  const uint64_t now = kvs::format::now_unix_ns();
  return unix_ns == 0 || unix_ns > now ? 0.0 : static_cast<double>(now - unix_ns) / 1e9;
}

// The pressure lines of `kvsctl stats`: what waits for room, who holds
// memory back, how far behind the table is.
void print_pressure(const kvs_table_stats& s) {
  if (s.held_partitions > 0) {
    std::printf("pressure        %u partition(s) wait for room: %s\n", s.held_partitions,
                kvs::format::hold_reason_text(s.hold_reason));
  }
  if (s.holder_pid != 0) {
    const std::string who = s.holder_pid > 0 ? "reader process " + std::to_string(s.holder_pid)
                                             : std::string("a reader kvsd cannot identify");
    std::printf("held back       %s has held %s back from reuse for %.0f s\n", who.c_str(),
                human_bytes(s.holder_bytes).c_str(), age_s(s.holder_since_unix_ns));
  }
  std::printf("backlog         %llu records not applied yet",
              static_cast<unsigned long long>(s.backlog));
  if (s.backlog > 0 && s.oldest_unapplied_unix_ns != 0) {
    std::printf(", the oldest at most %.1f s old", age_s(s.oldest_unapplied_unix_ns));
  }
  std::printf("\n");
}

// A field of a flat JSON object kvsd wrote (the "snapshot" of its STATS):
// the text after "key": up to the next comma or brace outside a string or
// array, quotes removed ("" if absent).
std::string json_field(const std::string& obj, const std::string& key) {
  const std::string tag = "\"" + key + "\":";
  size_t at = obj.find(tag);
  if (at == std::string::npos) return "";
  at += tag.size();
  std::string out;
  bool in_string = false;
  int depth = 0;
  for (size_t i = at; i < obj.size(); ++i) {
    const char ch = obj[i];
    if (in_string) {
      if (ch == '\\' && i + 1 < obj.size()) {
        out += obj[++i];
      } else if (ch == '"') {
        in_string = false;
      } else {
        out += ch;
      }
      continue;
    }
    if (ch == '"') {
      in_string = true;
      continue;
    }
    if (ch == '[') ++depth;
    if (ch == ']') --depth;
    if (depth == 0 && (ch == ',' || ch == '}')) break;
    out += ch;
  }
  return out;
}

// Table `table`'s object in kvsd's STATS (up to the next table's), or "".
std::string table_of(const std::string& server, const std::string& table) {
  const size_t t = server.find("{\"name\":\"" + table + "\"");
  if (t == std::string::npos) return "";
  const size_t next = server.find("{\"name\":\"", t + 1);
  return server.substr(t, next == std::string::npos ? std::string::npos : next - t);
}

// The partitions of the topic that kvsd does not apply (beyond
// max_partitions), from its STATS: "" if none (or kvsd is not reachable).
std::string unapplied_partitions(const std::string& server, const std::string& table,
                                 uint32_t applied) {
  const std::string obj = table_of(server, table);
  const long topic = std::strtol(json_field(obj, "topic_partitions").c_str(), nullptr, 10);
  if (topic <= static_cast<long>(applied)) return "";
  return "partitions " + std::to_string(applied) + ".." + std::to_string(topic - 1) + " of the " +
         std::to_string(topic) +
         " its topic has are NOT applied (max_partitions = " + json_field(obj, "max_partitions") +
         "; raise it and restart kvsd): their lag is unknown";
}

// The "snapshot" object of table `table` in kvsd's STATS, or "".
std::string snapshot_of(const std::string& server, const std::string& table) {
  const std::string obj = table_of(server, table);
  const size_t s = obj.find("\"snapshot\":{");
  if (s == std::string::npos) return "";
  // The object is flat: its end is the first brace outside a string.
  bool in_string = false;
  for (size_t i = s + 12; i < obj.size(); ++i) {
    if (in_string && obj[i] == '\\') {
      ++i;
    } else if (obj[i] == '"') {
      in_string = !in_string;
    } else if (!in_string && obj[i] == '}') {
      return obj.substr(s + 11, i - s - 10);
    }
  }
  return "";
}

// The snapshot line of `kvsctl stats`.
void print_snapshot(const std::string& server, const std::string& table) {
  const std::string snap = snapshot_of(server, table);
  if (snap.empty()) {
    std::printf("snapshot        none yet%s\n", server.empty() ? " (kvsd not reachable)" : "");
    return;
  }
  if (const std::string error = json_field(snap, "error"); !error.empty()) {
    const std::string newest = json_field(snap, "newest");
    std::printf("snapshot        FAILED %.0f s ago: %s; newest good one: %s\n",
                age_s(std::strtoull(json_field(snap, "failed_unix_ns").c_str(), nullptr, 10)),
                error.c_str(), newest == "null" ? "none" : newest.c_str());
    return;
  }
  std::printf(
      "snapshot        %s, taken %.0f s ago: %s entries, %s, written in %s ms; offsets %s\n",
      json_field(snap, "path").c_str(),
      age_s(std::strtoull(json_field(snap, "created_unix_ns").c_str(), nullptr, 10)),
      json_field(snap, "entries").c_str(),
      human_bytes(std::strtoull(json_field(snap, "file_bytes").c_str(), nullptr, 10)).c_str(),
      json_field(snap, "duration_ms").c_str(), json_field(snap, "next_offsets").c_str());
}

}  // namespace

int cmd_snapshot(const Target& t, const std::string& out) {
  kvs_table* tb = nullptr;
  if (int rc = open_table(t, &tb); rc != KVS_OK) return rc;
  kvs_snapshot_info info{};
  const int rc = kvs_snapshot_write(tb, out.c_str(), &info);
  kvs_close(tb);
  if (rc != KVS_OK) return fail(rc, "snapshot");
  std::printf(
      "table %s: snapshot %s written: %llu entries, %s, positions of %u partitions, in %.0f ms\n",
      t.table.c_str(), out.c_str(), static_cast<unsigned long long>(info.entries),
      human_bytes(info.file_bytes).c_str(), info.partitions,
      static_cast<double>(info.duration_ns) / 1e6);
  return 0;
}

namespace {

// kvsd's STATS answer, or "" when its socket does not answer.
std::string server_stats(const Target& t) {
  std::string server;
  kvs_client* c = nullptr;
  if (kvs_connect(t.socket.c_str(), &c) == KVS_OK) {
    char* j = nullptr;
    if (kvs_stats(c, &j) == KVS_OK) {
      server = j;
      kvs_free(j);
    }
    kvs_disconnect(c);
  }
  return server;
}

// The table's digest as two JSON fields, or the text line of `kvsctl
// stats`: 16 hex digits each (JSON numbers lose 64-bit integers).
std::string digest_json(kvs_table* tb) {
  kvs_digest d{};
  if (kvs_table_digest(tb, &d) != KVS_OK) return "\"digest\":null,\"digest_contents\":null,";
  char buf[96];
  std::snprintf(buf, sizeof buf, "\"digest\":\"%016llx\",\"digest_contents\":\"%016llx\",",
                static_cast<unsigned long long>(d.digest),
                static_cast<unsigned long long>(d.contents));
  return buf;
}

void print_digest(kvs_table* tb) {
  kvs_digest d{};
  if (kvs_table_digest(tb, &d) != KVS_OK) {
    std::printf(
        "digest          not read now: kvsd is applying records (or restarting); run again\n");
    return;
  }
  std::printf(
      "digest          %016llx (contents %016llx at the applied offsets of %u partitions)\n",
      static_cast<unsigned long long>(d.digest), static_cast<unsigned long long>(d.contents),
      d.partitions);
}

void print_stats_json(const Target& t, kvs_table* tb, const kvs_table_stats& s, bool ready,
                      uint32_t parts, const std::string& server) {
  std::printf(
      "{\"table\":%s,\"state\":\"%s\",\"entries\":%llu,\"capacity\":%llu,"
      "\"arena_used_bytes\":%llu,\"arena_bytes\":%llu,\"segment_bytes\":%llu,"
      "\"puts\":%llu,\"erases\":%llu,\"skipped\":%llu,\"writer_pid\":%d,"
      "\"writer_attaches\":%llu,\"reader_slots\":%u,\"reader_slots_used\":%u,"
      "\"readers_reading\":%u,\"held_partitions\":%u,\"hold_reason\":\"%s\","
      "\"holder_pid\":%d,\"holder_since_unix_ns\":%llu,\"holder_bytes\":%llu,"
      "\"backlog\":%llu,\"oldest_unapplied_unix_ns\":%llu,\"waiters\":%u,\"wakes\":%llu,"
      "\"change_log_entries\":%llu,\"change_log_position\":%llu,%s\"partitions\":[",
      json_escape(t.table).c_str(), ready ? "READY" : "BOOTSTRAPPING",
      static_cast<unsigned long long>(s.entries), static_cast<unsigned long long>(s.capacity),
      static_cast<unsigned long long>(s.arena_used_bytes),
      static_cast<unsigned long long>(s.arena_bytes),
      static_cast<unsigned long long>(s.segment_bytes), static_cast<unsigned long long>(s.puts),
      static_cast<unsigned long long>(s.erases), static_cast<unsigned long long>(s.skipped),
      s.writer_pid, static_cast<unsigned long long>(s.writer_attaches), s.reader_slots,
      s.reader_slots_used, s.readers_reading, s.held_partitions,
      kvs::format::hold_reason_name(s.hold_reason), s.holder_pid,
      static_cast<unsigned long long>(s.holder_since_unix_ns),
      static_cast<unsigned long long>(s.holder_bytes), static_cast<unsigned long long>(s.backlog),
      static_cast<unsigned long long>(s.oldest_unapplied_unix_ns), s.waiters,
      static_cast<unsigned long long>(s.wakes),
      static_cast<unsigned long long>(s.change_log_entries),
      static_cast<unsigned long long>(s.change_log_position), digest_json(tb).c_str());
  for (uint32_t p = 0; p < parts; ++p) {
    int64_t next = 0, hw = 0;
    (void)kvs_partition_offsets(tb, p, &next, &hw);
    std::printf("%s{\"partition\":%u,\"next_offset\":%lld,\"high_watermark\":%lld,\"lag\":%llu}",
                p ? "," : "", p, static_cast<long long>(next), static_cast<long long>(hw),
                static_cast<unsigned long long>(kvs::format::partition_lag(next, hw)));
  }
  std::printf("],\"kvsd\":%s}\n", server.empty() ? "null" : server.c_str());
}

// The "server" object of kvsd's STATS, as "name value" pairs.
void print_server_counters(const std::string& server) {
  const size_t a = server.find("\"server\":{"), b = server.find('}', a);
  if (a == std::string::npos || b == std::string::npos) return;
  std::string pairs = server.substr(a + 10, b - a - 10);
  std::string out;
  for (char ch : pairs) {
    if (ch == '"') continue;
    out += ch == ':' ? std::string(" ") : ch == ',' ? std::string(", ") : std::string(1, ch);
  }
  std::printf("kvsd counters   %s\n", out.c_str());
}

void print_changes(const kvs_table_stats& s) {
  if (s.change_log_entries > 0) {
    std::printf(
        "changes         %llu logged (ring of %llu entries); waiting or watching: %u "
        "process(es); %llu wakes\n",
        static_cast<unsigned long long>(s.change_log_position),
        static_cast<unsigned long long>(s.change_log_entries), s.waiters,
        static_cast<unsigned long long>(s.wakes));
  } else {
    std::printf("changes         no change log (change_log_entries = 0); waiting: %u process(es)\n",
                s.waiters);
  }
}

void print_stats_text(const Target& t, kvs_table* tb, const kvs_table_stats& s, bool ready,
                      uint32_t parts, const std::string& server) {
  const std::string unapplied = unapplied_partitions(server, t.table, parts);
  std::printf("table %s%s: %s%s\n", t.table.c_str(),
              t.topic.empty() ? "" : (" (topic " + t.topic + ")").c_str(),
              ready ? "READY" : "BOOTSTRAPPING",
              server.empty()      ? " (kvsd is not running: the table is not kept current)"
              : unapplied.empty() ? ""
                                  : " (not every partition of the topic is applied)");
  std::printf("entries         %llu of capacity %llu\n", static_cast<unsigned long long>(s.entries),
              static_cast<unsigned long long>(s.capacity));
  std::printf("memory          arena %s of %s used, segment %s\n",
              human_bytes(s.arena_used_bytes).c_str(), human_bytes(s.arena_bytes).c_str(),
              human_bytes(s.segment_bytes).c_str());
  std::printf(
      "readers         %u threads with a slot, %u reading now (kvsd tracks up to %u "
      "reader files)\n",
      s.reader_slots_used, s.readers_reading, s.reader_slots);
  print_pressure(s);
  std::printf("applied         %llu puts, %llu erases, %llu skipped\n",
              static_cast<unsigned long long>(s.puts), static_cast<unsigned long long>(s.erases),
              static_cast<unsigned long long>(s.skipped));
  std::printf("kvsd            pid %d, attached %llu times%s\n", s.writer_pid,
              static_cast<unsigned long long>(s.writer_attaches),
              server.empty() ? "; socket not reachable" : "");
  print_server_counters(server);
  print_snapshot(server, t.table);
  print_changes(s);
  print_digest(tb);
  if (!unapplied.empty()) std::printf("partitions      %s\n", unapplied.c_str());
  std::printf("%-10s %15s %15s %10s\n", "partition", "applied", "high_watermark", "lag");
  for (uint32_t p = 0; p < parts; ++p) {
    int64_t next = 0, hw = 0;
    (void)kvs_partition_offsets(tb, p, &next, &hw);
    std::printf("%-10u %15lld %15lld %10llu\n", p, static_cast<long long>(next),
                static_cast<long long>(hw),
                static_cast<unsigned long long>(kvs::format::partition_lag(next, hw)));
  }
}

}  // namespace

int cmd_stats(const Target& t, bool json) {
  kvs_table* tb = nullptr;
  if (int rc = open_table(t, &tb); rc != KVS_OK) return rc;
  kvs_table_stats s{};
  if (int rc = kvs_stat(tb, &s); rc != KVS_OK) {
    kvs_close(tb);
    return fail(rc, "stats");
  }
  const bool ready = kvs_state(tb) == KVS_STATE_READY;
  const uint32_t parts = kvs_partition_count(tb);
  // kvsd's own counters, when its socket answers.
  const std::string server = server_stats(t);
  if (json) {
    print_stats_json(t, tb, s, ready, parts, server);
  } else {
    print_stats_text(t, tb, s, ready, parts, server);
  }
  kvs_close(tb);
  return 0;
}

}  // namespace kvs::kvsctl
