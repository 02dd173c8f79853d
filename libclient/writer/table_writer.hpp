// The single writer of a kvs table. Internal: only kvsd (and tests) link it.
//
// Thread rules: one TableWriter per table per host (an flock on the segment
// enforces it across processes), used from one thread.
//
// Crash safety: every change to shared memory is ordered so that the writer
// may die at any instruction (DESIGN.md invariants 1-3). Allocator state
// (free lists, the retire queue) lives in this process only; a writer that
// attaches to an existing segment rebuilds it from the index, treating every
// block that no slot references as retired. Attaching walks the index only;
// the walk of the arena that finds the unreferenced blocks runs a slice at a
// time in reclaim() (attach_walk_bytes each), so that a restart costs the
// index, not every page of the arena. Until it is done, new blocks come from
// the arena's unused end (or blocks carved since); unreferenced blocks, and
// the older blocks that writes replaced meanwhile, are retired only once
// the whole walk agrees with the index.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "format/index.hpp"
#include "format/layout.hpp"
#include "kvs/result.hpp"
#include "src/shm.hpp"
#include "writer/reader_roster.hpp"

namespace kvs {

struct WriterOptions {
  std::string table;  // name; the segment is shm_prefix + table
  std::string shm_prefix = "kvs.";
  std::string shm_dir;                // the segments' directory; "": /dev/shm
  uint64_t capacity = 1 << 20;        // entries the index is sized for
  uint64_t arena_bytes = 256 << 20;   // bytes for keys, values and block headers
  uint32_t partition_capacity = 256;  // Kafka partitions the header can track
  // Reader files kvsd tracks (one per reading process and segment, one more
  // per 63 threads reading at once); past it, reuse waits, as for a reader
  // it cannot see. kvsd keeps a descriptor open per file.
  uint32_t reader_slots = 1024;
  uint32_t max_key_bytes = 4096;
  uint32_t max_value_bytes = 1 << 20;
  mode_t data_mode = 0640;
  mode_t registry_mode = 0660;
  gid_t group = static_cast<gid_t>(-1);  // -1: keep the creator's group
  // How often a reader that blocks reuse is checked for being dead.
  std::chrono::milliseconds dead_reader_check{50};
  // reclaim() reads the reader registry (a pread per reader process) at most
  // this often while less than kScanBytes wait for reuse; 0: at every call.
  // kvsd uses 1 ms: reuse then waits at most that long, and a table with many
  // reader processes costs its applier a bounded number of reads per second.
  std::chrono::microseconds reader_scan_interval{0};
  // Arena bytes the attach walk covers per reclaim() (see above).
  uint64_t attach_walk_bytes = 2 << 20;
  // Entries of the change log ring (format::ChangeEntry); 0: no log. A
  // segment keeps the size it was made with; new ones (rebuilds, resizes)
  // take this one.
  uint64_t change_log_entries = 4096;
};

// How the arena walk of an attach ended; see TableWriter::take_attach_walk_report.
struct AttachWalkReport {
  bool corrupt = false;        // the arena disagrees with the index: rebuild the table
  uint64_t leaked_blocks = 0;  // unreferenced blocks found, retired for reuse
  uint64_t leaked_bytes = 0;
  std::string message;  // what was found, for the log
};

// A table's size: entries its index holds and bytes its arena has.
struct TableSize {
  uint64_t capacity = 0;
  uint64_t arena_bytes = 0;
};

enum class AttachKind {
  kCreated,   // no segment was there
  kAttached,  // an existing segment of this layout was taken over
  kReplaced,  // a segment of another layout or a corrupt one was replaced
};

struct WriterStats {
  uint64_t size = 0;
  uint64_t arena_used = 0;  // bytes carved from the arena
  uint64_t arena_bytes = 0;
  uint64_t capacity = 0;
  uint64_t free_bytes = 0;     // carved, free for reuse now
  uint64_t retired_bytes = 0;  // carved, waiting for readers to move on
  uint64_t dead_readers_recovered = 0;
  uint64_t leaked_blocks_at_attach = 0;    // unreferenced blocks the attach walk found
  uint64_t attach_walk_pending_bytes = 0;  // arena the attach walk has still to cover
  // Arena bytes the live entries' blocks take: exact once the attach walk
  // is done (live_bytes_exact), else an upper bound.
  uint64_t live_bytes = 0;
  bool live_bytes_exact = false;
  uint64_t segment_bytes = 0;
  // The reader that held reuse back at the last registry read (epoch 0:
  // none, nothing waits for readers).
  ReaderHolder holder;
};

class TableWriter {
 public:
  // Creates the table, or attaches to the one there. Errors: kBusy (another
  // writer), kInvalidArgument, kNoMemory, kPermission, kSystem; a corrupt or
  // foreign segment is replaced, not an error.
  static Result<std::unique_ptr<TableWriter>> open(const WriterOptions& options);
  ~TableWriter();
  TableWriter(const TableWriter&) = delete;
  TableWriter& operator=(const TableWriter&) = delete;

  // Inserts or overwrites. Errors: kTooLarge (over the configured limits),
  // kTableFull (index at capacity, or arena full even after reclaiming),
  // kBusy (the space exists but readers may still see it: retry after they
  // finish, i.e. after reclaim() frees it), kNoMemory (/dev/shm has no room
  // for more of the arena: retry once it has). Nothing changes on error.
  Result<void> put(std::string_view key, std::string_view value);
  // A hint: `key` is put or erased soon. Starts loading its index group, so
  // that applying a batch overlaps the cache misses of its keys.
  void prefetch(std::string_view key) const {
    view_.prefetch_group(format::hash_key(key.data(), key.size()));
  }
  // The second stage, a few records after prefetch(key): reads the (now
  // cached) group and prefetches the entry whose tag matches, which an
  // overwrite or erase compares its key with.
  void prefetch_entry(std::string_view key) const {
    (void)view_.first_match(format::hash_key(key.data(), key.size()));
  }
  // Erases; false if the key was absent (a tombstone for a missing key).
  Result<bool> erase(std::string_view key);

  // What apply() did with a record.
  enum class Applied {
    kApplied,     // put, or erased
    kAbsent,      // a tombstone for a key the table does not hold
    kSuperseded,  // the table's record of the key wins (format::replaces)
  };
  // Applies one Kafka record of `origin`: a put, or an erase when `value`
  // is nullopt (a tombstone). Unlike put() and erase(), the record changes
  // nothing when the table's record of the key, from another partition,
  // wins by format::replaces. A record at `offset` (>= 0) that changes the
  // table goes into the change log (published by publish_batch); a load
  // (offset -1) does not. Errors as put().
  Result<Applied> apply(std::string_view key, std::optional<std::string_view> value,
                        format::Origin origin, int64_t offset = -1);
  // Ends a batch for readers: publishes the change log's new entries, and
  // if anything was published since the last call (positions, state, log
  // entries), adds 1 to the futex word and, when a process waits (the
  // count given to wake_for is above 0), wakes the sleepers. True if it
  // woke. Nobody waiting costs no syscall.
  bool publish_batch();
  // Tells the readers of a segment of this layout that another takes its
  // place: sets `replaced` to `how` (format::kReplacedPending before the
  // successor is renamed over the name, kReplacedNamed after), then moves
  // the futex word and wakes them.
  static void flag_replaced(format::TableHeader& h, uint32_t how);
  // Adds 1 to the futex word and wakes every sleeper, whoever waits (after
  // a replacement or an attach; kvsd when its wait socket is new).
  void wake_all();
  // The number of processes that wait on this table (kvsd's wait socket
  // counts them; it must outlive this writer and its replacements). Null:
  // none ever waits.
  void wake_for(const std::atomic<uint32_t>* waiting) { waiting_ = waiting; }
  // The change log's next position (entries below it are written).
  uint64_t log_position() const { return log_pos_; }
  // Publishes that the record at `offset` of `partition` (with this
  // timestamp and key) was applied: its fingerprint (PartitionState::last_*),
  // then next_offset = offset + 1.
  void record_applied(uint32_t partition, int64_t offset, int64_t timestamp_ms,
                      std::string_view key);
  // The fingerprint of the last record applied in `partition`; offset -1
  // if none is known.
  struct LastRecord {
    int64_t offset = -1;
    int64_t timestamp_ms = 0;
    uint64_t key_hash = 0;
  };
  LastRecord last_record(uint32_t partition) const;

  // Publishes partition progress. Call after the records up to next_offset
  // were put/erased: readers that see the offset see those records.
  Result<void> set_partition_count(uint32_t count);
  void set_next_offset(uint32_t partition, int64_t next_offset);
  void set_high_watermark(uint32_t partition, int64_t high_watermark);
  int64_t next_offset(uint32_t partition) const;
  int64_t high_watermark(uint32_t partition) const;
  // Sets a partition's position and last-record fingerprint as a snapshot
  // recorded them (the records below next_offset are in the table).
  void restore_partition(uint32_t partition, int64_t next_offset, int64_t high_watermark,
                         LastRecord last);
  // Calls fn(key, value, origin) for every entry (the writer's thread
  // only: entries change with every put).
  void for_each_entry(
      const std::function<void(std::string_view, std::string_view, format::Origin)>& fn) const;
  void set_state(format::TableState state);
  // Counts a record that could not be applied (kvs_stats and kvsctl show it).
  void count_skipped();
  // What readers and kvsctl see of kvsd's pressure: how many partitions
  // wait for room and why, and the timestamp of the oldest record not
  // applied yet (0: none known).
  void set_hold(uint32_t held_partitions, format::HoldReason reason);
  void set_oldest_unapplied(uint64_t unix_ns);

  // Ends a batch: frees what no reader can still see (advancing the epoch
  // and reading the registry, when reader_scan_interval has passed or much
  // waits); walks the next slice of the arena while an attach walk is
  // pending; every second, removes dead readers' files and publishes reader
  // counts. Returns the bytes still waiting for readers.
  uint64_t reclaim();
  // reclaim()'s registry read and frees now, whatever reader_scan_interval
  // says (for put() when it needs room, and benchmarks).
  uint64_t reclaim_now() { return scan_and_free(std::chrono::steady_clock::now()); }
  // Once, when the attach walk has ended: what it found. A corrupt arena
  // keeps every unreferenced block out of use (leaked, never handed out
  // twice); the caller should rebuild the table.
  std::optional<AttachWalkReport> take_attach_walk_report();
  // Removes the registry files of reader processes that died (inside a read
  // or not). reclaim() calls it every second; returns the files removed.
  uint32_t sweep_dead_readers();
  // Threads inside a read of segment `incarnation` of this table (one
  // replaced since, that they keep mapped), as the registry says; 1 when
  // kvsd cannot tell.
  uint32_t readers_inside(uint64_t incarnation) { return roster_->reading(incarnation); }
  // The registry holds entries kvsd has not taken in yet (a flood of
  // them): growing past the readers would not escape them.
  bool registry_backlogged() const { return roster_->backlogged(); }

  // The hashes of the Kafka cluster id and topic the data comes from (0:
  // unknown); see TableHeader::source_cluster.
  void set_source(uint64_t cluster_hash, uint64_t topic_hash);
  uint64_t source_cluster() const;
  uint64_t source_topic() const;

  // Rebuilding, when the segment can no longer follow the topic (its offsets
  // left the log, or it was filled from another topic): a new, empty segment
  // for the same table under a temporary name, with this writer's registry
  // and lock, of `size` (default: the options'). Readers keep reading this
  // segment meanwhile. A replacement never published removes its segment
  // when it is destroyed. Errors as open().
  Result<std::unique_ptr<TableWriter>> begin_replacement(std::optional<TableSize> size = {});
  // Resizing (growth, or shrinking a table that once spiked): a replacement
  // of `size` (see begin_replacement) with this segment's partition
  // positions, source, state and counters, that takes this segment's live
  // entries over while records are applied to it. From here on records go
  // to the new writer, which applies each as if it held every entry already
  // (an entry not copied yet is copied first); this writer is not written
  // again and must outlive the copy. copy_step() copies; once copying() is
  // false, publish_replacement() swaps the new segment in. Errors as
  // begin_replacement, kInvalidArgument if `size` cannot hold this
  // table's entries, and kCorrupt if the arena walk of an attach (finished
  // here) found the arena off (take_attach_walk_report says more).
  Result<std::unique_ptr<TableWriter>> begin_resize(TableSize size);
  // Copies entries from the source of begin_resize, at most `max_groups` of
  // its index groups' worth. True once every entry is copied. Errors:
  // kCorrupt (the source's index), kNoMemory (/dev/shm full); the
  // replacement is then unusable.
  Result<bool> copy_step(uint64_t max_groups);
  // Copies every entry still to copy (copy_step to its end); errors as it.
  Result<void> copy_rest();
  bool copying() const { return copy_.from != nullptr; }
  TableSize size() const { return {header_->capacity, header_->arena_bytes}; }
  // Gives `next` (from begin_replacement) the table's name, then tells the
  // readers of this segment to move to it. This writer is done afterwards.
  Result<void> publish_replacement(TableWriter& next);

  // How the segment's partition capacity differs from the options', for a
  // log line; "" if it does not (a segment that tracks another number of
  // partitions is rebuilt). Capacity and arena are sizes a table grows
  // from: a segment of another size is resized, not rebuilt.
  std::string size_change() const;
  AttachKind attach_kind() const { return attach_kind_; }
  WriterStats stats() const;
  const format::TableHeader& header() const { return *header_; }
  const std::string& segment_name() const { return data_->name; }

 private:
  TableWriter() = default;
  Result<void> attach_existing();
  void init_new(TableSize size, uint32_t partition_capacity);
  Result<void> rebuild_allocator();
  // Walks up to `max_bytes` more of the arena; true while more is pending.
  bool continue_attach_walk(uint64_t max_bytes);
  // Creates a segment of `size` under a temporary name for this writer (not
  // renamed).
  Result<void> create_temp(const std::string& segment, TableSize size);
  // Writes an entry's block; its offset, or 0 with the error in `err`
  // (kBusy, kNoMemory, kTableFull).
  uint64_t place(std::string_view key, std::string_view value, format::Origin origin, Error* err);
  // Writes a change of `key` (whose hash_key is `hash`) into the change log
  // at log_pos_ (change_log.cpp).
  void log_change(std::string_view key, uint64_t hash, format::ChangeKind kind,
                  format::Origin origin, int64_t offset);
  // The position after the whole changes logged from `pos` on (a writer
  // that died logged them, but did not publish them; change_log.cpp).
  uint64_t whole_changes_from(uint64_t pos) const;
  // At an attach: publishes what a writer that died logged (attach.cpp).
  void recover_log();
  // Makes `next` (a resize's new segment) continue this segment's change
  // log (resize.cpp).
  void carry_log_to(TableWriter& next);
  // Publishes `word` in a free slot of the key's probe sequence; the table's
  // digest grows by `digest_delta`.
  void insert_slot(uint64_t hash, uint64_t word, uint64_t digest_delta);
  // Stores `word` into slot `slot` of group `group` (making digest_seq odd
  // when it is the first store of a record apply() applies) and moves the digest
  // by `digest_delta`, bracketed so that a writer dying at any instruction
  // leaves a digest recover_digest settles (digest.cpp).
  void store_slot(uint64_t group, int slot, uint64_t word, uint64_t digest_delta);
  // The digest share of the entry whose block starts at `offset`.
  uint64_t block_digest(uint64_t offset) const;
  // At an attach: settles a slot store a writer that died left bracketed.
  void recover_digest();
  // While copying: copies the key's entry from the source first, unless it
  // was copied or erased here already. Errors: kCorrupt, and place()'s.
  Result<void> copy_key(std::string_view key, uint64_t hash);
  // Copies one source entry unless the key is here or was erased here.
  Result<void> copy_entry(const format::EntryRef& e, uint64_t word);
  // While copying: true if applying a record of `need` bytes leaves room for
  // the entries still to copy (else the copy is finished first).
  bool room_beside_copy(uint64_t need) const;
  // Removes temporary segments that earlier writers left behind.
  void remove_stale_temps(const std::string& segment);

  // put() and erase() from `origin`, or whatever the table holds (nullopt).
  // A change they make is logged at `log_offset` (>= 0; origin set) before
  // the store that makes it.
  Result<Applied> put_from(std::string_view key, std::string_view value,
                           std::optional<format::Origin> origin, int64_t log_offset = -1);
  Result<Applied> erase_from(std::string_view key, std::optional<format::Origin> origin,
                             int64_t log_offset = -1);
  // The origin of the entry whose slot word is `word`.
  format::Origin origin_of(uint64_t word) const;
  // Backs the segment's bytes [0, end) with tmpfs pages (posix_fallocate),
  // so that no write there can meet a full /dev/shm as a SIGBUS. False (and
  // no_space_ says why) if /dev/shm has no room.
  bool back_until(uint64_t end);
  // At an attach: backs the header, partitions and index; the carved arena
  // counts as backed (its blocks were written).
  Result<void> back_segment();
  // Returns a block offset of at least `bytes`, or 0.
  uint64_t allocate(uint64_t bytes);
  void retire(uint64_t offset);
  void free_block(uint64_t offset);
  uint32_t block_bytes(uint64_t offset) const;
  void full_fence();
  void advance_epoch();
  // Frees what no reader can still see: advances the epoch, reads the
  // registry. reclaim() calls it when due; put() when it needs room.
  uint64_t scan_and_free(std::chrono::steady_clock::time_point now);
  void publish_reader_counts();
  // Records and publishes who holds reuse back after a registry read.
  void publish_holder();

  WriterOptions opts_;
  std::unique_ptr<shm::Mapping> data_;
  std::shared_ptr<ReaderRoster> roster_;  // shared with a replacement; the writer lock
  std::string segment_;                   // the table's segment name
  format::TableHeader* header_ = nullptr;
  format::Group* groups_ = nullptr;
  format::PartitionState* partitions_ = nullptr;
  format::ChangeEntry* log_ = nullptr;
  uint64_t log_pos_ = 0;  // the next change's position (TableHeader::log_head trails it)
  bool dirty_ = false;    // published something since publish_batch
  const std::atomic<uint32_t>* waiting_ = nullptr;  // see wake_for
  format::TableView view_;
  uint8_t* base_ = nullptr;
  AttachKind attach_kind_ = AttachKind::kCreated;
  uint64_t backed_end_ = 0;  // segment bytes known to be backed
  std::string no_space_;     // why backing more of the arena failed ("": it did not)

  // Allocator state, private to this process (rebuilt on attach).
  std::map<uint32_t, std::vector<uint64_t>> free_;  // block_bytes -> offsets
  uint64_t free_bytes_ = 0;
  struct Retired {
    uint64_t offset;
    uint64_t epoch;
  };
  std::deque<Retired> retired_;
  uint64_t retired_bytes_ = 0;
  ReaderHolder holder_;  // see WriterStats::holder
  std::chrono::steady_clock::time_point next_dead_check_{};
  std::chrono::steady_clock::time_point next_sweep_{};
  std::chrono::steady_clock::time_point next_scan_{};
  uint64_t leaked_at_attach_ = 0;
  // Bytes of the live entries' blocks: those this writer published since it
  // attached minus those it retired since, plus (once the attach walk is
  // done) those live at the attach.
  bool applying_ = false;  // inside apply(): its stores are a record's (digest.cpp)
  int64_t live_delta_ = 0;
  uint64_t live_at_attach_ = 0;
  bool live_exact_ = true;
  // A resize's copy (begin_resize): the source, the next of its groups to
  // copy, upper bounds of what is left to copy, and the keys erased here
  // meanwhile (a source entry of such a key is not copied).
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Copy {
    const TableWriter* from = nullptr;
    uint64_t next_group = 0;
    uint64_t keys_left = 0;
    uint64_t bytes_left = 0;
    std::unordered_set<std::string, StringHash, std::equal_to<>> erased;
  } copy_;
  struct AttachWalk {
    // One bit per kBlockAlign unit of the arena: a slot referenced the block
    // starting there when this writer attached.
    std::vector<uint64_t> live;
    uint64_t pos = 0, end = 0;     // arena offsets still to walk
    std::vector<uint64_t> leaked;  // unreferenced blocks found so far
    uint64_t leaked_bytes = 0;
    // Blocks carved before the attach that this writer retired meanwhile:
    // their sizes are trusted only once the walk has checked the chain.
    std::vector<uint64_t> held;
    uint64_t live_bytes = 0;  // of the blocks live at attach, walked so far
    bool pending() const { return pos < end; }
  } walk_;
  std::optional<AttachWalkReport> walk_report_;
  // Blocks below this arena offset were carved before the attach and are
  // not reused until a walk has checked their sizes: the whole carved
  // arena at attach, 0 once the walk agreed with the index. After a walk
  // that did not, replaced blocks there stay leaked (kvsd rebuilds).
  uint64_t unchecked_end_ = 0;
};

}  // namespace kvs
