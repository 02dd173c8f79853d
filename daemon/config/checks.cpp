// kvsd.toml's checks across keys, once every key is read (parse() in
// config.cpp): what no single key's range says (brokers named, absolute
// paths, modes that would expose a table, groups that exist, topic names,
// the metrics endpoint's address, each table's sizes against each other,
// names and topics used twice).
#include "config/checks.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <set>
#include <string>

#include "format/layout.hpp"
#include "src/shm.hpp"

namespace kvs::config {

namespace {

// Kafka's rule for topic names: 1..249 of [a-zA-Z0-9._-], not "." or "..".
std::string why_not_topic_name(const std::string& topic) {
  if (topic.size() > 249) return "longer than Kafka's 249 characters";
  if (topic == "." || topic == "..") return "not a topic name Kafka allows";
  for (unsigned char ch : topic) {
    if (!std::isalnum(ch) && ch != '.' && ch != '_' && ch != '-') {
      return "holds a character Kafka does not allow in a topic name (only letters, digits, "
             "'.', '_' and '-')";
    }
  }
  return "";
}

// Modes that would expose a table: a data segment anyone but kvsd may write
// (readers refuse it anyway), or that kvsd could not reopen after a restart;
// a registry or a socket that every local user may write.
Result<void> check_modes(const Config& c) {
  auto bad = [&](const char* key, mode_t m, const char* why) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(m));
    return make_error(Errc::kInvalidArgument,
                      c.at(std::string("kvsd.") + key) + " = \"" + mode + "\": " + why);
  };
  if (c.data_mode & (S_IWGRP | S_IWOTH)) {
    return bad("data_mode", c.data_mode,
               "lets others than kvsd write the table; readers refuse such a table (use 0640)");
  }
  if ((c.data_mode & 0600) != 0600) {
    return bad("data_mode", c.data_mode, "kvsd needs to read and write its tables (use 0640)");
  }
  if (c.registry_mode & S_IWOTH) {
    return bad("registry_mode", c.registry_mode,
               "lets every local user register as a reader; give the readers a group (0660)");
  }
  if (c.socket_mode & S_IWOTH) {
    return bad("socket_mode", c.socket_mode,
               "lets every local user write to the tables; give the writers a group (0660)");
  }
  return {};
}

// Why `a` is not an address the metrics endpoint can listen on
// ("IPv4:port" or "[IPv6]:port", port 1..65535; "" is none), or "".
std::string why_not_listen_address(const std::string& a) {
  if (a.empty()) return "";
  const size_t colon = a.rfind(':');
  const std::string usage = "is not an address: write IPv4:port or [IPv6]:port, or \"\" for none";
  if (colon == std::string::npos || colon == 0 || colon + 1 == a.size()) return usage;
  const std::string host = a.substr(0, colon), port = a.substr(colon + 1);
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
      std::stoi(port) < 1 || std::stoi(port) > 65535) {
    return "has port \"" + port + "\": it must be 1..65535";
  }
  unsigned char buf[sizeof(in6_addr)];
  const bool v6 = host.size() > 2 && host.front() == '[' && host.back() == ']';
  if (v6 ? ::inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), buf) == 1
         : ::inet_pton(AF_INET, host.c_str(), buf) == 1) {
    return "";
  }
  return "has host \"" + host + "\": it must be an IPv4 address or an IPv6 one in brackets";
}

// Checks across the keys of [kvsd] and [kafka].
Result<void> check_daemon(const Config& c, const std::string& source) {
  auto whole = [&](const std::string& what) {
    return make_error(Errc::kInvalidArgument, source + ": " + what);
  };
  auto at = [&](const std::string& key, const std::string& what) {
    return make_error(Errc::kInvalidArgument, c.at(key) + " = " + what);
  };
  if (c.tables.empty()) return whole("no [[table]]: declare at least one table to serve");
  const bool has_brokers = std::any_of(c.kafka.begin(), c.kafka.end(), [](const auto& kv) {
    return (kv.first == "bootstrap.servers" || kv.first == "metadata.broker.list") &&
           !kv.second.empty();
  });
  if (!has_brokers) {
    return whole(
        "no [kafka] \"bootstrap.servers\": name the Kafka cluster's brokers in [kafka] (with "
        "--embedded-kafka, any value: kvsd replaces it)");
  }
  if (c.log_level != "debug" && c.log_level != "info" && c.log_level != "warning" &&
      c.log_level != "error") {
    return at("kvsd.log_level", "\"" + c.log_level + "\", must be debug, info, warning or error");
  }
  if (c.shm_dir.empty() || c.shm_dir[0] != '/') {
    return at("kvsd.shm_dir", "\"" + c.shm_dir + "\" must be an absolute path");
  }
  if (c.socket_path.empty() || c.socket_path[0] != '/') {
    return at("kvsd.socket_path", "\"" + c.socket_path + "\" must be an absolute path");
  }
  if (c.snapshot_interval_s > 0 && c.state_dir.empty()) {
    return at("kvsd.state_dir",
              "\"\": name the directory of the snapshots, or set snapshot_interval_s = 0");
  }
  if (!c.state_dir.empty() && c.state_dir[0] != '/') {
    return at("kvsd.state_dir", "\"" + c.state_dir + "\" must be an absolute path");
  }
  if (const std::string why = why_not_listen_address(c.metrics_listen); !why.empty()) {
    return at("kvsd.metrics_listen", "\"" + c.metrics_listen + "\" " + why);
  }
  if (auto ok = check_modes(c); !ok) return std::move(ok).error();
  for (const char* key : {"shm_group", "socket_group"}) {
    const std::string& group = std::string(key) == "shm_group" ? c.shm_group : c.socket_group;
    if (auto gid = resolve_group(group, key); !gid) {
      return make_error(Errc::kInvalidArgument,
                        c.location(std::string("kvsd.") + key) + ": " + gid.error().message);
    }
  }
  return {};
}

// The topic of table number `index`.
Result<void> check_topic(const Config& c, const TableConfig& t, int index) {
  if (t.topic.empty()) {
    return make_error(Errc::kInvalidArgument,
                      c.at("table[" + std::to_string(index) + "].topic") +
                          " = \"\": name the Kafka topic the table mirrors");
  }
  if (const std::string why = why_not_topic_name(t.topic); !why.empty()) {
    return make_error(Errc::kInvalidArgument, c.at("table[" + std::to_string(index) + "].topic") +
                                                  " = \"" + t.topic + "\": " + why);
  }
  return {};
}

// The sizes of one table against each other; `at` names it.
Result<void> check_table_sizes(const TableConfig& t, const std::string& at) {
  if (t.change_log_entries > 0 &&
      t.change_log_entries < 4 * format::change_entries(t.max_key_bytes)) {
    return make_error(Errc::kInvalidArgument,
                      at + ": change_log_entries = " + std::to_string(t.change_log_entries) +
                          " is below 4 changes of the longest key (max_key_bytes = " +
                          std::to_string(t.max_key_bytes) + "): set it to 0 or at least " +
                          std::to_string(4 * format::change_entries(t.max_key_bytes)));
  }
  if (t.max_key_bytes + uint64_t{t.max_value_bytes} + 16 > t.memory_limit_bytes) {
    return make_error(Errc::kInvalidArgument,
                      at + ": memory_limit_bytes = " + std::to_string(t.memory_limit_bytes) +
                          " cannot hold one entry of max_key_bytes + max_value_bytes");
  }
  const uint64_t initial =
      format::geometry(t.capacity, t.max_partitions, t.memory_limit_bytes, t.change_log_entries)
          .segment_bytes;
  if (t.max_memory_bytes != 0 && t.max_memory_bytes < initial) {
    return make_error(Errc::kInvalidArgument,
                      at + ": max_memory_bytes = " + std::to_string(t.max_memory_bytes) +
                          " is below the segment that capacity, memory_limit_bytes and "
                          "max_partitions start with (" +
                          std::to_string(initial) + " bytes); raise it, or lower those");
  }
  return {};
}

// Each table, and the tables against each other (names, topics).
Result<void> check_tables(const Config& c, const std::string& source) {
  std::set<std::string> names, topics;
  int index = 0;
  for (const auto& t : c.tables) {
    if (auto ok = check_topic(c, t, index); !ok) return ok;
    ++index;
    const std::string at = source + ":" + std::to_string(t.line) + ": table '" + t.name + "'";
    // The same check libkvs and the writer make, prefix included.
    if (auto seg = shm::segment_in(c.shm_dir, c.shm_prefix, t.name); !seg) {
      return make_error(Errc::kInvalidArgument, at + ": " + seg.error().message);
    }
    if (!names.insert(t.name).second) {
      return make_error(Errc::kInvalidArgument, at + " is declared twice");
    }
    if (!topics.insert(t.topic).second) {
      return make_error(Errc::kInvalidArgument,
                        at + ": topic '" + t.topic + "' already feeds another table");
    }
    if (auto ok = check_table_sizes(t, at); !ok) return ok;
  }
  return {};
}
}  // namespace

Result<void> check_keys(const Config& c, const std::string& source) {
  if (auto ok = check_daemon(c, source); !ok) return ok;
  return check_tables(c, source);
}

}  // namespace kvs::config
