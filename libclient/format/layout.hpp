// The kvs table format: the one definition shared by the writer (kvsd) and
// every reader (libkvs). docs/format.md explains it in prose; any change here
// that changes bytes in shared memory bumps kLayoutVersion and goes into
// CHANGELOG.md.
//
// Data segment (/dev/shm/<prefix><table>), every offset from its start:
//
//   TableHeader            7 cache lines; immutable geometry, the reader-hot
//                          line (epoch), the writer-hot line (counters),
//                          readers and pressure, notification, the digest
//   PartitionState[P]      applied offset + high watermark per partition
//   ChangeEntry[L]         the change log: a ring of the latest changes
//   Group[G]               the index: 64-byte groups of 7 slots + control
//   arena                  variable-size entry blocks, 8-byte aligned
//
// Reader registry (/dev/shm/<prefix><table>.readers/): a directory that kvsd
// owns, in which each reader process keeps its own file (ReaderFileHeader,
// then ReaderSlot[kReaderFileSlots], each on its own cache line).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvs::format {

inline constexpr uint64_t kTableMagic = 0x3162617473766b2eULL;       // ".kvstab1"
inline constexpr uint64_t kReaderFileMagic = 0x3272647273766b2eULL;  // ".kvsrdr2"
inline constexpr uint32_t kLayoutVersion = 5;
inline constexpr size_t kCacheLine = 64;

// Times in the segment and the registry: nanoseconds since the Unix epoch.
inline uint64_t now_unix_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// ---------------------------------------------------------------- slot word
// A slot is one 64-bit word: tag (16 high bits of it) | block offset in
// 8-byte units (48 low bits). 0 means empty. Publishing or clearing an entry
// is a single release store of this word.
inline constexpr int kTagShift = 48;
inline constexpr uint64_t kOffsetMask = (uint64_t{1} << kTagShift) - 1;
inline constexpr uint64_t kBlockAlign = 8;

constexpr uint64_t make_slot(uint16_t tag, uint64_t block_offset) {
  return (uint64_t{tag} << kTagShift) | (block_offset / kBlockAlign);
}
constexpr uint16_t slot_tag(uint64_t slot) { return uint16_t(slot >> kTagShift); }
constexpr uint64_t slot_offset(uint64_t slot) { return (slot & kOffsetMask) * kBlockAlign; }

// ---------------------------------------------------------------- the index
// 7 slots and a control word fill one cache line, so a lookup whose key is
// absent touches one line. `overflow` counts the keys whose home group is
// this one or an earlier one in their probe sequence but which live past this
// group (F14's outbound overflow count): a probe stops at the first group that
// lacks the key and has overflow == 0, so erasing can clear a slot to empty
// and no tombstones accumulate.
inline constexpr int kSlotsPerGroup = 7;

struct alignas(kCacheLine) Group {
  std::atomic<uint64_t> slots[kSlotsPerGroup];
  std::atomic<uint32_t> overflow;
  uint32_t reserved;
};
static_assert(sizeof(Group) == kCacheLine);
static_assert(alignof(Group) == kCacheLine);
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

// Groups are sized so that `capacity` entries fill at most this share of the
// slots: probe sequences stay short (almost always the home group).
inline constexpr double kMaxSlotLoad = 0.8;

// ---------------------------------------------------------------- the arena
// An entry block: header, key bytes, value bytes, padding to 8 bytes.
// `block_bytes` is set when the block is first carved from the arena and never
// changes, so the arena can be walked block by block from its start to
// `arena_used`; readers never read it. A block is immutable while published.
// `partition` and `timestamp_ms` say which Kafka record the entry came from
// (see Origin).
struct BlockHeader {
  uint32_t block_bytes;
  uint32_t key_len;
  uint32_t value_len;
  uint32_t partition;
  int64_t timestamp_ms;  // the record's Kafka timestamp; 0 if it had none
};
static_assert(sizeof(BlockHeader) == 24);
static_assert(std::is_trivially_copyable_v<BlockHeader>);

constexpr uint64_t block_bytes_for(uint64_t key_len, uint64_t value_len) {
  return (sizeof(BlockHeader) + key_len + value_len + kBlockAlign - 1) & ~(kBlockAlign - 1);
}

// Where a record of a key comes from. A key normally lives in one
// partition, whose later offset always wins. Once partitions are added to
// a topic, the partitioner sends a key elsewhere and the key has live
// records in two partitions; hosts apply partitions in different
// interleavings, so every host keeps the same record only by a rule on the
// records themselves: the later Kafka timestamp wins, and of equal
// timestamps the higher partition (docs/format.md, "Keys in two partitions").
struct Origin {
  int64_t timestamp_ms = 0;
  uint32_t partition = 0;
};

// True if a record from `incoming` replaces the table's record from `stored`.
constexpr bool replaces(const Origin& incoming, const Origin& stored) {
  if (incoming.partition == stored.partition) return true;  // a later offset
  if (incoming.timestamp_ms != stored.timestamp_ms)
    return incoming.timestamp_ms > stored.timestamp_ms;
  return incoming.partition > stored.partition;
}

// ---------------------------------------------------------------- header
enum class TableState : uint32_t { kBootstrapping = 1, kReady = 2 };

// One cache line per partition. `last_*` identify the last record kvsd
// applied (offset -1: none, or being updated): at a restart kvsd reads the
// record at that offset again and compares, so that a topic deleted and
// re-created while it was down is noticed even when the new log has passed
// the recorded offsets. For the writer only; readers need not read them.
struct alignas(kCacheLine) PartitionState {
  std::atomic<int64_t> next_offset;     // one past the last applied offset
  std::atomic<int64_t> high_watermark;  // last one kvsd saw, >= next_offset
  std::atomic<int64_t> last_offset;
  std::atomic<int64_t> last_timestamp_ms;
  std::atomic<uint64_t> last_key_hash;  // hash_key of its key (tombstones too)
  uint64_t reserved[3];
};
static_assert(sizeof(PartitionState) == kCacheLine);

// A partition's lag: its high watermark minus its next offset, 0 if not
// above. Without overflow whatever the segment holds (readers and kvsctl
// read segments they do not trust).
inline uint64_t partition_lag(int64_t next_offset, int64_t high_watermark) {
  return high_watermark > next_offset
             ? static_cast<uint64_t>(high_watermark) - static_cast<uint64_t>(next_offset)
             : 0;
}

struct alignas(kCacheLine) TableHeader {
  // Line 0: written once at creation, before the segment gets its name.
  uint64_t magic;
  uint32_t layout_version;
  uint32_t header_bytes;   // sizeof(TableHeader)
  uint64_t fingerprint;    // layout_fingerprint() of the creator
  uint64_t segment_bytes;  // total size of the segment
  uint64_t group_count;    // G
  uint64_t groups_offset;
  uint64_t arena_offset;
  uint64_t arena_bytes;
  // Line 1: (continued) immutable.
  uint64_t capacity;            // entries the index is sized for
  uint32_t partition_capacity;  // P: PartitionState slots
  uint32_t reserved0;
  uint64_t partitions_offset;
  uint64_t created_unix_ns;
  uint64_t incarnation;  // random per creation; tells segments apart
  // Where the data comes from, for the writer only: XXH3 of the Kafka
  // cluster id and of the topic name (0: not recorded). A segment filled from
  // another cluster or topic is rebuilt rather than resumed.
  std::atomic<uint64_t> source_cluster;
  std::atomic<uint64_t> source_topic;
  uint64_t reserved1;
  // Line 2: reader-hot. Readers load `epoch` at every read_begin.
  alignas(kCacheLine) std::atomic<uint64_t> epoch;  // global reclamation epoch
  std::atomic<uint32_t> replaced;                   // kReplaced*: 0 while current
  uint32_t reserved2;
  // Line 3: writer-hot.
  alignas(kCacheLine) std::atomic<uint32_t> state;  // TableState
  std::atomic<uint32_t> partition_count;            // partitions in use (<= P)
  std::atomic<int32_t> writer_pid;
  uint32_t reserved3;
  std::atomic<uint64_t> size;        // live entries
  std::atomic<uint64_t> arena_used;  // bytes carved from the arena so far
  std::atomic<uint64_t> puts;        // counters since creation
  std::atomic<uint64_t> erases;
  std::atomic<uint64_t> writer_attaches;
  std::atomic<uint64_t> skipped;  // records kvsd could not apply (over the size limits)
  // Line 4: what kvsd last saw in the reader registry (refreshed about once a
  // second), so that monitoring needs no access to the registry.
  alignas(kCacheLine) std::atomic<uint32_t> reader_processes;  // live reader files
  std::atomic<uint32_t> reader_slots_used;                     // their threads' slots
  std::atomic<uint32_t> readers_reading;                       // slots inside a read
  std::atomic<uint32_t> reader_files_unchecked;  // files kvsd could not read (counted alive)
  std::atomic<uint64_t> reader_stats_unix_ns;    // when kvsd counted
  std::atomic<uint32_t> reader_slot_limit;       // reader_slots in kvsd.toml
  // Pressure, refreshed by kvsd as it applies. The reader process that holds
  // reuse back longest (0: none; its pid in its own namespace), since when
  // kvsd saw it do so, and the arena bytes that wait for readers.
  std::atomic<int32_t> holder_pid;
  std::atomic<uint32_t> held_partitions;  // partitions whose next record waits for room
  std::atomic<uint32_t> hold_reason;      // HoldReason of the latest hold
  std::atomic<uint64_t> holder_since_unix_ns;
  std::atomic<uint64_t> holder_bytes;
  // The Kafka timestamp of the oldest record kvsd knows it has not applied
  // (an upper bound on its age; 0: none, or not known yet).
  std::atomic<uint64_t> oldest_unapplied_unix_ns;
  // Line 5: change notification (docs/format.md, "Watching a table").
  // `changes` is the futex word readers sleep on: kvsd adds 1 after each
  // batch it published (positions, entries, the change log, the state) and
  // whenever it sets `replaced`, then wakes the sleepers with FUTEX_WAKE if
  // a process told it that it waits (`waiters`, counted by kvsd from its
  // wait socket). Nobody waiting costs kvsd no syscall.
  alignas(kCacheLine) std::atomic<uint32_t> changes;
  std::atomic<uint32_t> waiters;  // processes kvsd wakes for, for monitoring
  std::atomic<uint64_t> wakes;    // FUTEX_WAKE calls kvsd made, for monitoring
  // The change log: ChangeEntry[log_entries] at log_offset (immutable; 0
  // entries: none). Entries below position `log_head` are published.
  uint64_t log_offset;
  uint64_t log_entries;
  std::atomic<uint64_t> log_head;
  // The log's positions are one sequence across the segments of one
  // `log_lineage` (random when a segment starts a log of its own; a resize
  // carries the log on, with its latest entries): a watcher keeps its place
  // in a segment of its lineage that still holds its position, the
  // first of which is `log_start`. Set before the segment gets its name.
  uint64_t log_start;
  uint64_t log_lineage;
  uint64_t reserved4;
  // Line 6: the digest (docs/format.md, "The digest"): the sum of
  // entry_digest over the live entries, kept by kvsd as it stores slots.
  // A slot store is bracketed so that a writer dying at any instruction
  // leaves a digest the next one can settle: before the store,
  // `digest_next` (the digest after it), `digest_word` (the word stored)
  // and then `digest_slot` (1 + the slot's index) are set; after it,
  // `digest` takes `digest_next` and `digest_slot` goes back to 0. An
  // attach that finds `digest_slot` set reads the slot: it holds
  // `digest_word` only if the store was made. `digest_seq` is odd from a
  // record's first slot store until its offset is published (even again),
  // so that a reader that sees the same even value before and after its
  // loads pairs the digest with exactly the offsets it covers.
  alignas(kCacheLine) std::atomic<uint64_t> digest;
  std::atomic<uint64_t> digest_next;
  std::atomic<uint64_t> digest_word;
  std::atomic<uint64_t> digest_slot;
  std::atomic<uint32_t> digest_seq;
  uint32_t reserved5;
  uint64_t reserved6[3];
};
static_assert(sizeof(TableHeader) == 7 * kCacheLine);

// TableHeader::replaced. Flagged before the successor takes the name (a
// writer that dies in between leaves the flag for the next one to clear),
// then marked named: a reader that finds this segment still under the name
// while the flag is pending tries again once it reads kReplacedNamed, not a
// fixed time later. Readers treat any other non-zero value as pending.
inline constexpr uint32_t kReplacedPending = 1;  // a successor is about to take the name
inline constexpr uint32_t kReplacedNamed = 2;    // a successor has the name (or it is gone)

// Why a table's partitions wait (TableHeader::hold_reason).
enum class HoldReason : uint32_t {
  kNone = 0,
  kCapacity = 1,  // the index holds `capacity` keys and the record adds one
  kMemory = 2,    // the arena (memory_limit_bytes) has no room for the record
  kReaders = 3,   // the room exists but readers may still see it
  kNoSpace = 4,   // /dev/shm (the tmpfs) has no room for more of the table
  kLimit = 5,     // growing the table would pass its max_memory_bytes
};

// Why partitions wait, for people (the log, STATUS=, errors, kvsctl); the
// value comes from a segment, so any number is answered.
inline const char* hold_reason_text(uint32_t reason) {
  switch (static_cast<HoldReason>(reason)) {
    case HoldReason::kCapacity:
      return "the table holds its capacity of keys";
    case HoldReason::kMemory:
      return "the table's arena (memory_limit_bytes) is full";
    case HoldReason::kReaders:
      return "its room waits for a reader to finish its read";
    case HoldReason::kNoSpace:
      return "/dev/shm has no room for more of the table";
    case HoldReason::kLimit:
      return "the table reached its max_memory_bytes";
    case HoldReason::kNone:
      break;
  }
  return "no room";
}

// Why partitions wait, as a short name for machines (kvsctl stats --json,
// the metrics' `reason` label); "none" for any other value.
inline const char* hold_reason_name(uint32_t reason) {
  switch (static_cast<HoldReason>(reason)) {
    case HoldReason::kCapacity:
      return "capacity";
    case HoldReason::kMemory:
      return "memory";
    case HoldReason::kReaders:
      return "readers";
    case HoldReason::kNoSpace:
      return "no_space";
    case HoldReason::kLimit:
      return "limit";
    case HoldReason::kNone:
      break;
  }
  return "none";
}
static_assert(offsetof(TableHeader, epoch) == 2 * kCacheLine);
static_assert(offsetof(TableHeader, state) == 3 * kCacheLine);
static_assert(offsetof(TableHeader, oldest_unapplied_unix_ns) == 5 * kCacheLine - 8);
static_assert(offsetof(TableHeader, changes) == 5 * kCacheLine);
static_assert(offsetof(TableHeader, digest) == 6 * kCacheLine);

// An entry's share of the digest: key and value, told apart by the key's
// length (the seed), so that "ab" + "c" and "a" + "bc" differ. The bytes are
// the key followed by the value, as a block stores them.
inline uint64_t entry_digest(const void* key_then_value, uint32_t key_len, uint32_t value_len) {
  return XXH3_64bits_withSeed(key_then_value, uint64_t{key_len} + value_len, key_len);
}

// A table's digest: its contents' digest (the sum of entry_digest over its
// entries, modulo 2^64) together with the applied offsets of its
// partitions, so that two hosts compare both with one number.
inline uint64_t table_digest(uint64_t contents, const int64_t* next_offsets, uint32_t partitions) {
  uint64_t h = XXH3_64bits_withSeed(&partitions, sizeof partitions, contents);
  return XXH3_64bits_withSeed(next_offsets, uint64_t{partitions} * sizeof(int64_t), h);
}
static_assert(sizeof(std::atomic<uint32_t>) == 4);  // the futex word

// ---------------------------------------------------------------- change log
// A ring of the latest changes kvsd applied, in the order it applied them
// (so in offset order per partition). A change takes one entry, plus one
// per 56 key bytes past the first 16. The entry at position p (slot
// p % log_entries) is a seqlock of its own: word 0 holds p + 1 once the
// entry is whole, 0 while kvsd writes it; a watcher that reads p + 1 before
// and after copying the words has a whole entry of position p, and one that
// reads anything else was overtaken (the change is lost to it).
//
// First entry: [0] p + 1, [1] key hash (hash_key), [2] Kafka offset,
// [3] Kafka timestamp ms, [4] partition | kind << 32, [5] key length,
// [6..7] the first 16 key bytes. Continuation: [0] p + 1, [1..7] 56 key bytes.
enum class ChangeKind : uint32_t { kPut = 1, kErase = 2 };

struct alignas(kCacheLine) ChangeEntry {
  std::atomic<uint64_t> w[8];
};
static_assert(sizeof(ChangeEntry) == kCacheLine);
inline constexpr uint64_t kChangeInlineKeyBytes = 16;
inline constexpr uint64_t kChangeMoreKeyBytes = 56;
inline constexpr uint64_t kMaxLogEntries = uint64_t{1} << 26;

// Entries a change of a key of `key_len` bytes takes.
constexpr uint64_t change_entries(uint64_t key_len) {
  return key_len <= kChangeInlineKeyBytes
             ? 1
             : 1 + (key_len - kChangeInlineKeyBytes + kChangeMoreKeyBytes - 1) /
                       kChangeMoreKeyBytes;
}

// ---------------------------------------------------------------- registry
// Each reader process keeps one file per segment it reads (more when over
// kReaderFileSlots threads read at once) in the table's registry directory:
// only its owner can write or shrink it, so a reader can never touch another
// reader's announcements. The owner holds an OFD write lock on the whole file
// for as long as it lives: the kernel drops it when the process dies, in any
// pid namespace and without /proc, so kvsd tests liveness with F_OFD_GETLK.
// The header is written before the file gets its final name ("r.<hex>",
// renamed from "t.<hex>") and never changes afterwards.
inline constexpr uint32_t kReaderFileSlots = 63;

struct alignas(kCacheLine) ReaderFileHeader {
  uint64_t magic;  // kReaderFileMagic
  uint32_t layout_version;
  uint32_t slot_count;  // kReaderFileSlots
  uint64_t fingerprint;
  uint64_t incarnation;       // of the data segment whose epochs the slots announce
  int32_t pid;                // in the reader's own pid namespace: for people, not for liveness
  uint32_t slots_handed_out;  // the owner's count (atomic stores), for monitoring only
  uint64_t created_unix_ns;
  uint64_t reserved[2];
};
static_assert(sizeof(ReaderFileHeader) == kCacheLine);
static_assert(std::is_trivially_copyable_v<ReaderFileHeader>);

// A slot belongs to one thread of the file's process. `epoch` is 0 when the
// thread is not inside a read, else the global epoch it announced.
struct alignas(kCacheLine) ReaderSlot {
  std::atomic<uint64_t> epoch;
  uint64_t reserved[7];
};
static_assert(sizeof(ReaderSlot) == kCacheLine);

inline constexpr uint64_t kReaderFileBytes =
    sizeof(ReaderFileHeader) + uint64_t{kReaderFileSlots} * sizeof(ReaderSlot);
static_assert(kReaderFileBytes == 4096);

// Anything that changes how the bytes above are read. Compared on attach in
// addition to the version number, so that a build with other struct sizes
// (another compiler, a patched constant) is refused instead of misread.
constexpr uint64_t layout_fingerprint() {
  uint64_t h = 1469598103934665603ULL;
  for (uint64_t v :
       {uint64_t{kLayoutVersion}, uint64_t{sizeof(TableHeader)}, uint64_t{sizeof(Group)},
        uint64_t{kSlotsPerGroup}, uint64_t{sizeof(BlockHeader)}, uint64_t{kBlockAlign},
        uint64_t{kTagShift}, uint64_t{sizeof(PartitionState)}, uint64_t{sizeof(ReaderSlot)},
        uint64_t{sizeof(ReaderFileHeader)}, uint64_t{kReaderFileSlots},
        uint64_t{offsetof(TableHeader, epoch)}, uint64_t{offsetof(TableHeader, state)},
        uint64_t{offsetof(TableHeader, changes)}, uint64_t{offsetof(TableHeader, digest)},
        uint64_t{sizeof(ChangeEntry)}, uint64_t{kChangeInlineKeyBytes},
        uint64_t{XXH_VERSION_MAJOR}}) {
    h = (h ^ v) * 1099511628211ULL;
  }
  return h;
}

// ---------------------------------------------------------------- hashing
// XXH3-64 with seed 0: stable across xxHash releases since 0.8.0.
// The home group uses the high bits (multiply-shift over G, no power-of-two
// constraint); the tag uses the low 16 bits.
inline uint64_t hash_key(const void* key, size_t len) { return XXH3_64bits(key, len); }

inline uint64_t home_group(uint64_t hash, uint64_t group_count) {
  __extension__ using u128 = unsigned __int128;
  return uint64_t((static_cast<u128>(hash) * group_count) >> 64);
}
inline uint16_t hash_tag(uint64_t hash) { return uint16_t(hash); }

// The bounds of a table's geometry. The writer refuses options outside them
// and readers refuse headers outside them, so that the sizes computed below
// never overflow 64 bits (DESIGN.md invariant 5).
inline constexpr uint64_t kMaxCapacity = uint64_t{1} << 40;
inline constexpr uint32_t kMaxPartitions = 65536;
inline constexpr uint64_t kMinArenaBytes = 4096;
inline constexpr uint64_t kMaxArenaBytes = (kOffsetMask * kBlockAlign) / 2;  // 2^50

// Groups for a table of `capacity` (1..kMaxCapacity) entries.
inline uint64_t groups_for_capacity(uint64_t capacity) {
  uint64_t slots = uint64_t(double(capacity) / kMaxSlotLoad) + 1;
  uint64_t groups = (slots + kSlotsPerGroup - 1) / kSlotsPerGroup;
  return groups < 2 ? 2 : groups;
}

inline constexpr uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

struct Geometry {
  uint64_t partitions_offset, log_offset, groups_offset, group_count, arena_offset, arena_bytes,
      segment_bytes;
};

inline bool geometry_in_bounds(uint64_t capacity, uint32_t partition_capacity, uint64_t arena_bytes,
                               uint64_t log_entries) {
  return capacity >= 1 && capacity <= kMaxCapacity && partition_capacity >= 1 &&
         partition_capacity <= kMaxPartitions && arena_bytes >= kMinArenaBytes &&
         arena_bytes <= kMaxArenaBytes && log_entries <= kMaxLogEntries;
}

// Within geometry_in_bounds every term is below 2^51, so nothing overflows.
inline Geometry geometry(uint64_t capacity, uint32_t partition_capacity, uint64_t arena_bytes,
                         uint64_t log_entries) {
  Geometry g{};
  g.partitions_offset = sizeof(TableHeader);
  g.log_offset =
      align_up(g.partitions_offset + uint64_t{partition_capacity} * sizeof(PartitionState), 4096);
  g.groups_offset = align_up(g.log_offset + log_entries * sizeof(ChangeEntry), 4096);
  g.group_count = groups_for_capacity(capacity);
  g.arena_offset = align_up(g.groups_offset + g.group_count * sizeof(Group), 4096);
  g.arena_bytes = align_up(arena_bytes, 4096);
  g.segment_bytes = g.arena_offset + g.arena_bytes;
  return g;
}

}  // namespace kvs::format
