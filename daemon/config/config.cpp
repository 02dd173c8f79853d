#include "config/config.hpp"

#include <grp.h>
#include <sys/stat.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "config/checks.hpp"
#include "format/layout.hpp"
#include "src/shm.hpp"

namespace kvs::config {
namespace {

enum class Kind { kString, kInt, kBool, kMode, kIntList };

struct Val {
  int64_t i = 0;
  bool b = false;
  std::string s;
  std::vector<int64_t> list;
};

struct Key {
  std::string_view section;  // "kvsd" or "table"
  std::string_view name;
  Kind kind;
  std::string_view def;  // the default as TOML text; "" = required
  int64_t min, max;      // range (kInt, kMode), maximum length (kString; 0: any)
  std::string_view help;
  void (*set)(Config&, TableConfig&, const Val&);
};

// The one list of kvsd's keys. [kafka] is free-form (librdkafka's own).
const Key kKeys[] = {
    {"kvsd", "socket_path", Kind::kString, "\"/run/kvs/kvsd.sock\"", 0, 107,
     "Unix socket for writes (under 108 bytes).",
     [](Config& c, TableConfig&, const Val& v) { c.socket_path = v.s; }},
    {"kvsd", "socket_mode", Kind::kMode, "\"0660\"", 0, 0777,
     "Permissions of the socket (octal string).",
     [](Config& c, TableConfig&, const Val& v) { c.socket_mode = static_cast<mode_t>(v.i); }},
    {"kvsd", "socket_group", Kind::kString, "\"\"", 0, 64,
     "Group (name or number) of the socket, i.e. the writers; \"\" keeps kvsd's group.",
     [](Config& c, TableConfig&, const Val& v) { c.socket_group = v.s; }},
    {"kvsd", "allowed_uids", Kind::kIntList, "[]", 0, 4294967294,
     "Uids allowed to write; [] with allowed_gids [] lets every peer the socket mode admits.",
     [](Config& c, TableConfig&, const Val& v) { c.allowed_uids = v.list; }},
    {"kvsd", "allowed_gids", Kind::kIntList, "[]", 0, 4294967294,
     "Gids (primary group of the peer) allowed to write.",
     [](Config& c, TableConfig&, const Val& v) { c.allowed_gids = v.list; }},
    {"kvsd", "reader_uids", Kind::kIntList, "[]", 0, 4294967294,
     "Uids that may ask the socket for a table's descriptors (readers in containers with "
     "their own /dev/shm), besides those the segments' mode and group let read them.",
     [](Config& c, TableConfig&, const Val& v) { c.reader_uids = v.list; }},
    {"kvsd", "reader_gids", Kind::kIntList, "[]", 0, 4294967294,
     "Gids (primary or supplementary group of the peer) that may ask for a table's "
     "descriptors.",
     [](Config& c, TableConfig&, const Val& v) { c.reader_gids = v.list; }},
    {"kvsd", "shm_prefix", Kind::kString, "\"kvs.\"", 0, 40,
     "Prefix of shared-memory names: /dev/shm/<prefix><table>. Lets two kvsd run side by side.",
     [](Config& c, TableConfig&, const Val& v) { c.shm_prefix = v.s; }},
    {"kvsd", "shm_dir", Kind::kString, "\"/dev/shm\"", 1, 200,
     "Directory of the table segments and their reader registries: a tmpfs (/dev/shm, or one "
     "volume mounted into every container of a pod). Readers name the same one (KVS_SHM_DIR).",
     [](Config& c, TableConfig&, const Val& v) { c.shm_dir = v.s; }},
    {"kvsd", "shm_group", Kind::kString, "\"\"", 0, 64,
     "Group (name or number) owning the segments, i.e. the readers; \"\" keeps kvsd's group.",
     [](Config& c, TableConfig&, const Val& v) { c.shm_group = v.s; }},
    {"kvsd", "data_mode", Kind::kMode, "\"0640\"", 0, 0777,
     "Permissions of each table segment (readers need read; write is refused).",
     [](Config& c, TableConfig&, const Val& v) { c.data_mode = static_cast<mode_t>(v.i); }},
    {"kvsd", "registry_mode", Kind::kMode, "\"0660\"", 0, 0777,
     "Who may register as a reader: the registry directory gives the group (others) create rights "
     "where this mode gives write.",
     [](Config& c, TableConfig&, const Val& v) { c.registry_mode = static_cast<mode_t>(v.i); }},
    {"kvsd", "log_level", Kind::kString, "\"info\"", 0, 0, "debug, info, warning or error.",
     [](Config& c, TableConfig&, const Val& v) { c.log_level = v.s; }},
    {"kvsd", "dead_reader_check_ms", Kind::kInt, "50", 1, 60000,
     "How often a reader that holds memory back is checked for being dead.",
     [](Config& c, TableConfig&, const Val& v) {
       c.dead_reader_check_ms = static_cast<uint32_t>(v.i);
     }},
    {"kvsd", "topic_wait_s", Kind::kInt, "60", 0, 86400,
     "At start, how long kvsd retries a cluster that does not answer or that calls a topic "
     "unknown (a broker that just started does so for a moment) before it gives up.",
     [](Config& c, TableConfig&, const Val& v) { c.topic_wait_s = static_cast<uint32_t>(v.i); }},
    {"kvsd", "poll_timeout_ms", Kind::kInt, "100", 1, 10000,
     "Longest wait for Kafka records before kvsd does its housekeeping.",
     [](Config& c, TableConfig&, const Val& v) { c.poll_timeout_ms = static_cast<uint32_t>(v.i); }},
    {"kvsd", "write_timeout_ms", Kind::kInt, "30000", 100, 3600000,
     "A write Kafka has not acknowledged by then fails (librdkafka message.timeout.ms).",
     [](Config& c, TableConfig&, const Val& v) {
       c.write_timeout_ms = static_cast<uint32_t>(v.i);
     }},
    {"kvsd", "max_connections", Kind::kInt, "1024", 1, 65536,
     "Write connections served at once; more are refused with an error.",
     [](Config& c, TableConfig&, const Val& v) { c.max_connections = static_cast<uint32_t>(v.i); }},
    {"kvsd", "max_pending_per_connection", Kind::kInt, "4096", 1, 1048576,
     "Requests of one connection without a reply before kvsd stops reading it (backpressure).",
     [](Config& c, TableConfig&, const Val& v) {
       c.max_pending_per_connection = static_cast<uint32_t>(v.i);
     }},
    {"kvsd", "hello_timeout_ms", Kind::kInt, "10000", 100, 3600000,
     "A connection that has not completed its handshake (HELLO) by then is closed.",
     [](Config& c, TableConfig&, const Val& v) {
       c.hello_timeout_ms = static_cast<uint32_t>(v.i);
     }},
    {"kvsd", "frame_timeout_ms", Kind::kInt, "30000", 100, 3600000,
     "A request whose first bytes arrived must be complete by then, else its connection is "
     "closed (time in which kvsd itself does not read the connection does not count).",
     [](Config& c, TableConfig&, const Val& v) {
       c.frame_timeout_ms = static_cast<uint32_t>(v.i);
     }},
    {"kvsd", "max_unfinished_frame_bytes", Kind::kInt, "67108864", 1048576, int64_t{1} << 40,
     "Memory for requests received in part, across all connections (each may hold 64 KiB "
     "besides); a connection that needs more is not read until some is free.",
     [](Config& c, TableConfig&, const Val& v) {
       c.max_unfinished_frame_bytes = static_cast<uint64_t>(v.i);
     }},
    {"kvsd", "max_unsent_reply_bytes", Kind::kInt, "67108864", 1048576, int64_t{1} << 40,
     "Replies written but not yet read by their clients, across all connections; past it, "
     "kvsd stops reading the connections whose replies wait (at most 4 MiB each in any case).",
     [](Config& c, TableConfig&, const Val& v) {
       c.max_unsent_reply_bytes = static_cast<uint64_t>(v.i);
     }},
    {"kvsd", "metrics_listen", Kind::kString, "\"127.0.0.1:9469\"", 0, 100,
     "Address and port of the Prometheus endpoint (/metrics over HTTP): IPv4:port or "
     "[IPv6]:port. Loopback by default; \"0.0.0.0:9469\" lets every host that reaches this one "
     "read the metrics. \"\" turns the endpoint off.",
     [](Config& c, TableConfig&, const Val& v) { c.metrics_listen = v.s; }},
    {"kvsd", "state_dir", Kind::kString, "\"/var/lib/kvs\"", 0, 4000,
     "Directory of the tables' snapshots (<state_dir>/<shm_prefix><table>/), which make a "
     "start without segments (after a reboot) read only the records since the newest one. "
     "kvsd creates what is missing; the unit's StateDirectory=kvs provides /var/lib/kvs.",
     [](Config& c, TableConfig&, const Val& v) { c.state_dir = v.s; }},
    {"kvsd", "snapshot_interval_s", Kind::kInt, "600", 0, 604800,
     "How often each READY table's snapshot is written (from a thread of its own: ingest and "
     "reads go on), and at a clean stop too. 0: no snapshots.",
     [](Config& c, TableConfig&, const Val& v) {
       c.snapshot_interval_s = static_cast<uint32_t>(v.i);
     }},

    {"kvsd", "snapshot_max_age_s", Kind::kInt, "72000", 0, 31536000,
     "A snapshot older than this is not started from: compaction removes a tombstone "
     "delete.retention.ms (Kafka's default: 24 h) after it was written, and a table started from "
     "an older snapshot would keep the keys those tombstones erased. Keep it below the topics' "
     "delete.retention.ms. 0: any age.",
     [](Config& c, TableConfig&, const Val& v) {
       c.snapshot_max_age_s = static_cast<uint32_t>(v.i);
     }},

    {"table", "name", Kind::kString, "", 0, 200,
     "Table name, [A-Za-z0-9._-]; readers open it by this name. Required.",
     [](Config&, TableConfig& t, const Val& v) { t.name = v.s; }},
    {"table", "topic", Kind::kString, "", 0, 249,
     "The compacted Kafka topic the table mirrors. Required.",
     [](Config&, TableConfig& t, const Val& v) { t.topic = v.s; }},
    {"table", "capacity", Kind::kInt, "1048576", 1024, int64_t{1} << 40,
     "Entries the index starts with. A table grows online when it needs more (the index "
     "doubles), up to max_memory_bytes.",
     [](Config&, TableConfig& t, const Val& v) { t.capacity = static_cast<uint64_t>(v.i); }},
    {"table", "memory_limit_bytes", Kind::kInt, "268435456", 1 << 20, int64_t{1} << 44,
     "Bytes the arena for keys, values and entry headers (24 bytes each, 8-byte aligned) "
     "starts with. A table grows online when it needs more (the arena doubles), up to "
     "max_memory_bytes.",
     [](Config&, TableConfig& t, const Val& v) {
       t.memory_limit_bytes = static_cast<uint64_t>(v.i);
     }},
    {"table", "max_memory_bytes", Kind::kInt, "0", 0, int64_t{1} << 50,
     "Hard limit on the size of the table's segment in /dev/shm (index and arena). A record "
     "that would need a larger one waits, and its partition with it, until the limit is "
     "raised (the error is in the log, kvsctl stats and STATUS=). While a table grows, its "
     "old segment exists too, for the milliseconds of the copy. 0: no limit but /dev/shm's "
     "free space.",
     [](Config&, TableConfig& t, const Val& v) {
       t.max_memory_bytes = static_cast<uint64_t>(v.i);
     }},
    {"table", "max_key_bytes", Kind::kInt, "4096", 1, 1 << 20,
     "Longest key; longer ones are refused on write and skipped (logged) on consume.",
     [](Config&, TableConfig& t, const Val& v) { t.max_key_bytes = static_cast<uint32_t>(v.i); }},
    {"table", "max_value_bytes", Kind::kInt, "983040", 0, 1 << 30,
     "Longest value; as max_key_bytes. The default (960 KiB) leaves room for the longest key "
     "and Kafka's record overhead under a broker's default message.max.bytes (1000012); "
     "kvsd warns at start when a topic's max.message.bytes is below what a table allows.",
     [](Config&, TableConfig& t, const Val& v) { t.max_value_bytes = static_cast<uint32_t>(v.i); }},
    {"table", "reader_slots", Kind::kInt, "1024", 1, 1 << 20,
     "Reader files kvsd tracks (about one per reading process; kvsd keeps one descriptor each).",
     [](Config&, TableConfig& t, const Val& v) { t.reader_slots = static_cast<uint32_t>(v.i); }},
    {"table", "grow_past_readers", Kind::kInt, "2", 0, 64,
     "A record that has waited a second for a reader stuck inside a read makes the table grow "
     "into a new segment, leaving the old one to the reader; this many replaced segments at most "
     "may be kept mapped that way at once, after which records wait for the readers (the reader "
     "is named in the log and kvsctl stats). 0: records always wait.",
     [](Config&, TableConfig& t, const Val& v) {
       t.grow_past_readers = static_cast<uint32_t>(v.i);
     }},
    {"table", "max_partitions", Kind::kInt, "256", 1, 65536,
     "Most partitions the topic may have (the segment keeps an offset for each).",
     [](Config&, TableConfig& t, const Val& v) { t.max_partitions = static_cast<uint32_t>(v.i); }},
    {"table", "change_log_entries", Kind::kInt, "65536", 0, int64_t{1} << 26,
     "Entries of the table's change log, the ring in its segment that watchers (kvs_watch_*, "
     "kvsctl watch) read: 64 bytes each; a change takes one, plus one per 56 key bytes past 16. "
     "A watcher that falls further behind is told it lost changes. 0: no log (watches are "
     "refused). Takes effect with the table's next segment (a growth, a rebuild).",
     [](Config&, TableConfig& t, const Val& v) {
       t.change_log_entries = static_cast<uint64_t>(v.i);
     }},
    {"table", "create_topic", Kind::kBool, "false", 0, 0,
     "Create the topic (cleanup.policy=compact) if it does not exist.",
     [](Config&, TableConfig& t, const Val& v) { t.create_topic = v.b; }},
    {"table", "create_partitions", Kind::kInt, "1", 1, 65536,
     "Partitions of a topic that kvsd creates.",
     [](Config&, TableConfig& t, const Val& v) {
       t.create_partitions = static_cast<int32_t>(v.i);
     }},
    {"table", "create_replication_factor", Kind::kInt, "-1", -1, 32767,
     "Replication factor of a topic that kvsd creates; -1: the broker's default.",
     [](Config&, TableConfig& t, const Val& v) {
       t.create_replication_factor = static_cast<int32_t>(v.i);
     }},
    {"table", "create_min_insync_replicas", Kind::kInt, "2", 1, 32767,
     "min.insync.replicas of a topic kvsd creates (at most its replication factor; set only with "
     "a replication factor of 2 or more). kvsd also sets unclean.leader.election.enable=false.",
     [](Config&, TableConfig& t, const Val& v) {
       t.create_min_insync_replicas = static_cast<int32_t>(v.i);
     }},
    {"table", "seed_from", Kind::kString, "\"\"", 0, 4000,
     "A snapshot file (kvsctl snapshot, from a neighbour host) to start from when the table has "
     "no segment, if it is newer than the table's own snapshots; checked like those, and the "
     "topic is read from its start instead if it does not fit the log. \"\": none.",
     [](Config&, TableConfig& t, const Val& v) { t.seed_from = v.s; }},
};

std::string where(const std::string& source, const toml::source_region& r) {
  return source + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column);
}

Unexpected fail(const std::string& source, const toml::source_region& r, const std::string& what) {
  return make_error(Errc::kInvalidArgument, where(source, r) + ": " + what);
}

std::string suggestion(std::string_view word, const std::vector<std::string_view>& choices) {
  std::string_view best;
  size_t best_d = ~size_t{0};
  for (auto c : choices) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  if (best.empty() || best_d > std::max<size_t>(2, word.size() / 3)) return "";
  return "; did you mean '" + std::string(best) + "'?";
}

std::string_view kind_name(Kind k) {
  switch (k) {
    case Kind::kString:
      return "a string";
    case Kind::kInt:
      return "an integer";
    case Kind::kBool:
      return "true or false";
    case Kind::kMode:
      return "an octal string such as \"0640\"";
    case Kind::kIntList:
      return "an array of integers";
  }
  return "";
}

// Reads one value of `key` from `node`, checking type and range.
Result<Val> read_value(const Key& key, const toml::node& node, const std::string& source,
                       const std::string& label) {
  Val v;
  const auto bad_type = [&] {
    return fail(source, node.source(), label + " must be " + std::string(kind_name(key.kind)));
  };
  switch (key.kind) {
    case Kind::kString:
      if (!node.is_string()) return bad_type();
      v.s = node.as_string()->get();
      if (key.max > 0 && v.s.size() > static_cast<size_t>(key.max)) {
        return fail(source, node.source(),
                    label + " is " + std::to_string(v.s.size()) + " bytes long, at most " +
                        std::to_string(key.max));
      }
      return v;
    case Kind::kBool:
      if (!node.is_boolean()) return bad_type();
      v.b = node.as_boolean()->get();
      return v;
    case Kind::kInt:
      if (!node.is_integer()) return bad_type();
      v.i = node.as_integer()->get();
      break;
    case Kind::kMode:
      if (node.is_integer()) {
        v.i = node.as_integer()->get();
      } else if (node.is_string()) {
        const std::string& s = node.as_string()->get();
        if (s.empty() || s.size() > 4 || s.find_first_not_of("01234567") != std::string::npos) {
          return fail(source, node.source(), label + " = \"" + s + "\" is not an octal mode");
        }
        v.i = std::stoll(s, nullptr, 8);
      } else {
        return bad_type();
      }
      break;
    case Kind::kIntList:
      if (!node.is_array()) return bad_type();
      for (const auto& el : *node.as_array()) {
        if (!el.is_integer()) {
          return fail(source, el.source(), label + " must hold integers only");
        }
        const int64_t x = el.as_integer()->get();
        if (x < key.min || x > key.max) {
          return fail(source, el.source(),
                      label + " holds " + std::to_string(x) + ", must be " +
                          std::to_string(key.min) + ".." + std::to_string(key.max));
        }
        v.list.push_back(x);
      }
      return v;
  }
  if (v.i < key.min || v.i > key.max) {
    std::ostringstream range;
    if (key.kind == Kind::kMode) {
      range << std::oct << "0" << v.i << ", must be 0..0" << key.max;
    } else {
      range << v.i << ", must be " << key.min << ".." << key.max;
    }
    return fail(source, node.source(), label + " = " + range.str());
  }
  return v;
}

// Applies every key of `tbl` in `section`, defaults first.
Result<void> apply_section(std::string_view section, const toml::table& tbl, Config& c,
                           TableConfig& t, const std::string& source, const std::string& prefix) {
  std::vector<std::string_view> names;
  for (const auto& k : kKeys) {
    if (k.section == section) names.push_back(k.name);
  }
  for (const auto& [name, node] : tbl) {
    const Key* key = nullptr;
    for (const auto& k : kKeys) {
      if (k.section == section && k.name == name.str()) key = &k;
    }
    const std::string label = prefix + std::string(name.str());
    if (key == nullptr) {
      return fail(source, name.source(),
                  "unknown key '" + label + "'" + suggestion(name.str(), names));
    }
    auto v = read_value(*key, node, source, label);
    if (!v) return std::move(v).error();
    key->set(c, t, *v);
    c.where[label] = where(source, node.source());
  }
  // Required keys.
  for (const auto& k : kKeys) {
    if (k.section == section && k.def.empty() && !tbl.contains(k.name)) {
      return fail(source, tbl.source(),
                  "missing required key '" + prefix + std::string(k.name) + "'");
    }
  }
  return {};
}

}  // namespace

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

namespace {
// [kafka]: every key passes to librdkafka as text.
Result<void> read_kafka(const toml::node& node, Config& c, const std::string& source) {
  if (!node.is_table()) return fail(source, node.source(), "[kafka] must be a table");
  for (const auto& [k, v] : *node.as_table()) {
    std::string value;
    if (v.is_string()) {
      value = v.as_string()->get();
    } else if (v.is_integer()) {
      value = std::to_string(v.as_integer()->get());
    } else if (v.is_boolean()) {
      value = v.as_boolean()->get() ? "true" : "false";
    } else {
      return fail(source, v.source(),
                  "kafka." + std::string(k.str()) +
                      " must be a string, integer or boolean (librdkafka takes text)");
    }
    c.kafka.emplace_back(std::string(k.str()), value);
    c.where["kafka." + std::string(k.str())] = where(source, v.source());
  }
  return {};
}

// [[table]], each in turn.
Result<void> read_tables(const toml::node& node, Config& c, const std::string& source) {
  if (!node.is_array_of_tables()) {
    return fail(source, node.source(), "tables are declared as [[table]], not [table]");
  }
  int index = 0;
  for (const auto& el : *node.as_array()) {
    TableConfig t;
    t.line = static_cast<int>(el.source().begin.line);
    const std::string prefix = "table[" + std::to_string(index++) + "].";
    if (auto ok = apply_section("table", *el.as_table(), c, t, source, prefix); !ok) {
      return std::move(ok).error();
    }
    c.tables.push_back(std::move(t));
  }
  return {};
}

// The sections of the file, each by its reader.
Result<void> read_sections(const toml::table& root, Config& c, const std::string& source) {
  TableConfig unused;
  const std::vector<std::string_view> sections = {"kvsd", "kafka", "table"};
  for (const auto& [name, node] : root) {
    const std::string_view n = name.str();
    Result<void> ok;
    if (n == "kvsd") {
      if (!node.is_table()) return fail(source, node.source(), "[kvsd] must be a table");
      ok = apply_section("kvsd", *node.as_table(), c, unused, source, "kvsd.");
    } else if (n == "kafka") {
      ok = read_kafka(node, c, source);
    } else if (n == "table") {
      ok = read_tables(node, c, source);
    } else {
      return fail(source, name.source(),
                  "unknown section '" + std::string(n) + "'" + suggestion(n, sections));
    }
    if (!ok) return ok;
  }
  return {};
}

}  // namespace

Result<Config> parse(std::string_view text, const std::string& source) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    return fail(source, e.source(), std::string(e.description()));
  }
  Config c;
  c.source = source;
  if (auto ok = read_sections(root, c, source); !ok) return std::move(ok).error();
  if (auto ok = check_keys(c, source); !ok) return std::move(ok).error();
  return c;
}

Result<Config> load_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_error(Errc::kSystem, path + ": cannot read the config file (" +
                                         std::string(std::strerror(errno)) +
                                         "); pass another with --config PATH");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

namespace {
void wrap_comment(std::ostringstream& out, std::string_view text) {
  std::string line = "#";
  std::istringstream words{std::string(text)};
  std::string w;
  while (words >> w) {
    if (line.size() + 1 + w.size() > 78) {
      out << line << "\n";
      line = "#";
    }
    line += " " + w;
  }
  out << line << "\n";
}
}  // namespace

std::string example_toml() {
  std::ostringstream out;
  out << "# kvsd configuration: /etc/kvs/kvsd.toml (or kvsd --config PATH).\n"
         "# Generated from the key table in daemon/config/config.cpp; every key is shown\n"
         "# with its default. Unknown keys are errors. Check a file with\n"
         "#   kvsd --check-config --config PATH\n\n"
         "[kvsd]\n";
  for (const auto& k : kKeys) {
    if (k.section != "kvsd") continue;
    wrap_comment(out, k.help);
    out << "# " << k.name << " = " << k.def << "\n\n";
  }
  out << "[kafka]\n"
         "# Every key here goes to librdkafka as it is: bootstrap.servers (required),\n"
         "# security.protocol, sasl.*, ssl.*, timeouts. Values are strings; an integer or a\n"
         "# boolean is passed as its text. kvsd sets isolation.level=read_committed for\n"
         "# consuming and enable.idempotence=true, acks=all and allow.auto.create.topics=false\n"
         "# for producing.\n"
         "\"bootstrap.servers\" = \"localhost:9092\"\n\n"
         "[[table]]\n";
  for (const auto& k : kKeys) {
    if (k.section != "table") continue;
    wrap_comment(out, k.help);
    if (k.name == "name") {
      out << "name = \"flags\"\n\n";
    } else if (k.name == "topic") {
      out << "topic = \"flags\"\n\n";
    } else {
      out << "# " << k.name << " = " << k.def << "\n\n";
    }
  }
  return out.str();
}

std::string describe_keys() {
  std::ostringstream out;
  for (const auto& k : kKeys) {
    out << (k.section == "kvsd" ? "[kvsd] " : "[[table]] ") << k.name << "  (" << kind_name(k.kind)
        << ", default " << (k.def.empty() ? "required" : k.def);
    if (k.kind == Kind::kInt) out << ", " << k.min << ".." << k.max;
    out << ")\n    " << k.help << "\n";
  }
  out << "[kafka] any librdkafka property, as a string, integer or boolean\n";
  return out.str();
}

Result<gid_t> resolve_group(const std::string& group, const char* key) {
  if (group.empty()) return static_cast<gid_t>(-1);
  if (group.find_first_not_of("0123456789") == std::string::npos) {
    // (gid_t)-1 means "no change" to chown: the largest usable gid is below.
    errno = 0;
    const unsigned long long g = std::strtoull(group.c_str(), nullptr, 10);
    if (errno == ERANGE || g >= 0xFFFFFFFFull) {
      return make_error(Errc::kInvalidArgument, std::string("kvsd.") + key + " = \"" + group +
                                                    "\": not a group id (0..4294967294)");
    }
    return static_cast<gid_t>(g);
  }
  if (const struct group* gr = ::getgrnam(group.c_str())) return gr->gr_gid;
  return make_error(Errc::kInvalidArgument, std::string("kvsd.") + key + " = \"" + group +
                                                "\": no such group; create it or use a number");
}

}  // namespace kvs::config
