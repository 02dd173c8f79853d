// Loading snapshot files (libclient/format/snapshot.hpp) into a new table.
// Internal: only kvsd (and tests) link it; any reader writes them
// (kvs_snapshot_write, libclient/src/snapshot_write.cpp).
//
// A loader checks every checksum before it trusts a byte, and refuses a
// file of another format version, another host's byte order or another
// table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "format/snapshot.hpp"
#include "kvs/result.hpp"
#include "writer/table_writer.hpp"

namespace kvs {

struct SnapshotInfo {
  std::string path;
  uint64_t created_unix_ns = 0;
  uint64_t source_cluster = 0, source_topic = 0;
  uint64_t entries = 0;
  uint64_t entry_bytes = 0;  // keys and values
  uint64_t file_bytes = 0;
  std::vector<format::SnapshotPartition> partitions;
};

// Reads and checks the header and partitions of the snapshot at `path`
// (enough to size a table for it), without reading the entries. Errors:
// kNoTable (no file), kCorrupt naming the file and what is wrong, kSystem.
Result<SnapshotInfo> read_snapshot_header(const std::string& path, const std::string& table);

// Loads the snapshot at `path` into `into`, an empty table of at least
// info.entries entries: each entry with its origin, then the partitions'
// positions and fingerprints and the source. Every chunk is checked before
// any of its entries is applied. Errors: as read_snapshot_header, and the
// writer's (kTableFull, kTooLarge); `into` then holds part of the entries
// and must be discarded.
Result<SnapshotInfo> load_snapshot(const std::string& path, const std::string& table,
                                   TableWriter& into);

}  // namespace kvs
