// kvsd's configuration (/etc/kvs/kvsd.toml).
//
// One table of keys (config.cpp: kKeys) with name, type, default, range and
// help text drives parsing, validation, `kvsd --help-config` and the example
// file etc/kvs/kvsd.toml. An unknown key or section is an error (with "did
// you mean" for a near miss); every error names the file, line, column and
// key. [kafka] keys are passed to librdkafka as they are.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvs/result.hpp"

namespace kvs::config {

struct TableConfig {
  std::string name;   // the table: /dev/shm/<shm_prefix><name>
  std::string topic;  // the compacted Kafka topic it mirrors
  uint64_t capacity = 1 << 20;
  uint64_t memory_limit_bytes = uint64_t{256} << 20;
  uint64_t max_memory_bytes = 0;  // the segment's hard limit; 0: none (/dev/shm's room)
  uint32_t max_key_bytes = 4096;
  uint32_t max_value_bytes = 983040;
  uint32_t reader_slots = 1024;
  // Replaced segments that readers stuck inside a read may keep mapped
  // before records wait for them instead of the table growing past them.
  uint32_t grow_past_readers = 2;
  uint32_t max_partitions = 256;
  uint64_t change_log_entries = 65536;  // the change log ring; 0: none (watches are refused)
  bool create_topic = false;
  int32_t create_partitions = 1;
  int32_t create_replication_factor = -1;  // -1: the broker's default
  int32_t create_min_insync_replicas = 2;  // set when the replication factor is >= 2
  std::string seed_from;  // a snapshot file to start from when there is no segment ("": none)
  int line = 0;           // where the [[table]] starts, for messages
};

struct Config {
  std::string source;  // file name (or "<string>") for messages
  std::string socket_path = "/run/kvs/kvsd.sock";
  mode_t socket_mode = 0660;
  std::string socket_group;           // group of the socket, i.e. the writers; "" keeps kvsd's
  std::vector<int64_t> allowed_uids;  // empty: any peer the socket mode lets in
  std::vector<int64_t> allowed_gids;
  // Who may be handed a table's descriptors over the socket, besides those
  // the segments' mode and group let read them (server/peer_access.hpp).
  std::vector<int64_t> reader_uids;
  std::vector<int64_t> reader_gids;
  std::string shm_prefix = "kvs.";
  std::string shm_dir = "/dev/shm";  // where the segments live
  std::string shm_group;             // group of the segments; "" keeps kvsd's own
  mode_t data_mode = 0640;
  mode_t registry_mode = 0660;
  std::string log_level = "info";
  uint32_t dead_reader_check_ms = 50;
  uint32_t poll_timeout_ms = 100;
  uint32_t topic_wait_s = 60;  // at start: unknown topic or silent cluster, retried this long
  uint32_t write_timeout_ms = 30000;  // librdkafka message.timeout.ms of writes
  uint32_t max_connections = 1024;
  uint32_t max_pending_per_connection = 4096;
  uint32_t hello_timeout_ms = 10000;  // a connection must complete HELLO by then
  uint32_t frame_timeout_ms = 30000;  // a frame must be complete this long after it began
  uint64_t max_unfinished_frame_bytes = 64 << 20;  // input buffered across connections
  uint64_t max_unsent_reply_bytes = 64 << 20;      // replies not yet read, across connections
  std::string state_dir = "/var/lib/kvs";          // snapshots (snapshots.hpp)
  uint32_t snapshot_interval_s = 600;              // 0: no snapshots
  uint32_t snapshot_max_age_s = 72000;             // older ones are not started from; 0: any
  std::string metrics_listen = "127.0.0.1:9469";   // /metrics for Prometheus; "": none
  std::vector<std::pair<std::string, std::string>> kafka;  // librdkafka properties
  std::vector<TableConfig> tables;
  // Where each key was set ("kvsd.shm_group", "kafka.acks", "table[0].topic"),
  // "file:line:column", for messages of checks across keys.
  std::map<std::string, std::string> where;
  std::string location(const std::string& key) const {
    auto it = where.find(key);
    return it != where.end() ? it->second : source;
  }
  std::string at(const std::string& key) const { return location(key) + ": " + key; }
};

// Errors: kInvalidArgument with "file:line:column: what, and the way out".
Result<Config> parse(std::string_view toml_text, const std::string& source_name);
// Errors: kNoTable-free: kSystem if the file cannot be read; else as parse().
Result<Config> load_file(const std::string& path);

// The commented example config (etc/kvs/kvsd.toml), generated from kKeys.
std::string example_toml();

// The gid of `group` (a name or a number) for the setting `key` of [kvsd]
// (socket_group, shm_group); "" gives -1 (keep the creator's group).
// Errors: kInvalidArgument, naming the setting.
Result<gid_t> resolve_group(const std::string& group, const char* key);
// Every key with type, default, range and help, for --help-config.
std::string describe_keys();

// Levenshtein distance, for "did you mean".
size_t edit_distance(std::string_view a, std::string_view b);

}  // namespace kvs::config
