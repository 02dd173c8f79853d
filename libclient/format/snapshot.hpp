// The snapshot file format: a table's live entries and its partitions'
// positions on disk, for cold starts without reading the whole topic. The
// one definition shared by what writes snapshots and what loads them;
// docs/format.md ("Snapshot files") explains it in prose. Any change here
// bumps kSnapshotVersion.
//
//   FileHeader                 magic, version, sizes, source, counts; checksummed
//   SnapshotPartition[P]       positions and last-record fingerprints, then
//                              one uint64_t: XXH3 of the array
//   { ChunkHeader, payload }*  entries, each chunk checksummed (XXH3)
//   Trailer                    end magic, entry and chunk counts, XXH3 over
//                              the chunks' checksums
//
// A chunk's payload is a sequence of EntryHeader, key bytes, value bytes
// (no padding). All integers are little-endian (the format is written and
// read on the same kind of host; the fingerprint below refuses others).
// Everything in a snapshot is untrusted input: a file that fails a check
// is refused with what failed, never half used.
#pragma once

#include <cstdint>
#include <type_traits>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvs::format {

inline constexpr uint64_t kSnapshotMagic = 0x31706e7373766b2eULL;     // ".kvssnp1"
inline constexpr uint64_t kSnapshotEndMagic = 0x31646e6573766b2eULL;  // ".kvsend1"
inline constexpr uint32_t kSnapshotVersion = 1;
// Entries are written in chunks of about this many bytes.
inline constexpr uint32_t kSnapshotChunkBytes = 1 << 20;
// Bounds a loader enforces before it allocates anything.
inline constexpr uint32_t kSnapshotMaxPartitions = 65536;
inline constexpr uint32_t kSnapshotMaxChunkBytes = 64 << 20;

struct FileHeader {
  uint64_t magic;  // kSnapshotMagic
  uint32_t version;
  uint32_t header_bytes;  // sizeof(FileHeader)
  uint64_t fingerprint;   // snapshot_fingerprint()
  uint64_t created_unix_ns;
  uint64_t source_cluster;  // XXH3 of the Kafka cluster id (0: not known)
  uint64_t source_topic;    // XXH3 of the topic name
  uint64_t table_hash;      // XXH3 of the table's name
  uint64_t entries;         // live entries in the chunks
  uint64_t entry_bytes;     // their keys' and values' bytes
  uint32_t partition_count;
  uint32_t reserved;
  uint64_t checksum;  // XXH3 of the bytes above
};
static_assert(sizeof(FileHeader) == 88);
static_assert(std::is_trivially_copyable_v<FileHeader>);

struct SnapshotPartition {
  int64_t next_offset;
  int64_t high_watermark;
  int64_t last_offset;  // -1: no fingerprint
  int64_t last_timestamp_ms;
  uint64_t last_key_hash;
};
static_assert(sizeof(SnapshotPartition) == 40);

struct ChunkHeader {
  uint32_t entries;
  uint32_t payload_bytes;
  uint64_t checksum;  // XXH3 of the payload
};
static_assert(sizeof(ChunkHeader) == 16);

// Before each entry's key and value in a chunk.
struct EntryHeader {
  uint32_t key_len;
  uint32_t value_len;
  uint32_t partition;  // the record's origin (format::Origin)
  uint32_t reserved;
  int64_t timestamp_ms;
};
static_assert(sizeof(EntryHeader) == 24);

struct Trailer {
  uint64_t magic;  // kSnapshotEndMagic
  uint64_t entries;
  uint64_t chunks;
  uint64_t checksum;  // XXH3 over every chunk's checksum, in order
};
static_assert(sizeof(Trailer) == 32);

// Anything that changes how the bytes above are read.
constexpr uint64_t snapshot_fingerprint() {
  uint64_t h = 1469598103934665603ULL;
  for (uint64_t v : {uint64_t{kSnapshotVersion}, uint64_t{sizeof(FileHeader)},
                     uint64_t{sizeof(SnapshotPartition)}, uint64_t{sizeof(ChunkHeader)},
                     uint64_t{sizeof(EntryHeader)}, uint64_t{sizeof(Trailer)},
                     uint64_t{XXH_VERSION_MAJOR}, uint64_t{__BYTE_ORDER__}}) {
    h = (h ^ v) * 1099511628211ULL;
  }
  return h;
}

inline uint64_t header_checksum(const FileHeader& h) {
  return XXH3_64bits(&h, offsetof(FileHeader, checksum));
}

}  // namespace kvs::format
