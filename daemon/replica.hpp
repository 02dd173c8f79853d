// One table's replica in kvsd: its segments and the phase that says which
// of them records go to, its partitions as it follows them, READY, and the
// records that wait for room, with the functions that change its phase
// (phase.cpp), apply consumed records to it (replica.cpp), follow its topic
// (following.cpp) and report on it (readiness.cpp). Everything here runs
// on kvsd's apply thread (run() in kvsd.cpp), which owns the replicas.
#pragma once

#include <librdkafka/rdkafka.h>
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "kafka/consumer.hpp"
#include "kafka/watermark_poller.hpp"
#include "tombstones.hpp"
#include "writer/table_writer.hpp"

namespace kvs::daemon {

// Set by SIGTERM and SIGINT (kvsd.cpp): waits in here end when it is.
extern volatile sig_atomic_t g_stop;

using clock = std::chrono::steady_clock;

// A record that needs room its table does not have (index at capacity,
// arena full, or reuse waiting for a reader): it waits, copied here, while
// its partition is not fetched; the table's other partitions and the other
// tables go on. Records behind it in its partition wait with it (they are
// fetched again when it is applied), so a partition is applied in order.
struct Held {
  int64_t offset = -1;  // -1: nothing waits
  int64_t timestamp_ms = 0;
  bool tombstone = false;
  std::string key, value;
  format::HoldReason reason = format::HoldReason::kNone;
  clock::time_point since{}, next_try{};
  std::chrono::milliseconds backoff{1};
};

// One partition of the topic as the table follows it.
struct PartitionTrack {
  int64_t target = 0;    // the high watermark to reach (seen at start, or a rebuild's)
  bool reached = false;  // the active segment's position has reached target
  int64_t pending = -1;  // next offset to publish after the batch (an EOF's); -1: none
  Held held;             // the record that waits for room, if any (see hold())
  // For the age of the oldest unapplied record: the Kafka timestamp of the
  // last record applied, and when kvsd last saw the partition caught up
  // with its high watermark (Unix ns; 0: not yet).
  uint64_t last_applied_ts_ns = 0;
  uint64_t caught_up_ns = 0;
  // What refresh_lag last found: the Kafka timestamp bounding the oldest
  // unapplied record's age (Unix ns; 0: none unapplied, or not known).
  uint64_t oldest_unapplied_ns = 0;
  // At a restart: the last record the segment applied, read again from the
  // topic to check that the log is the one the segment followed (offset -1:
  // nothing to check, or checked).
  TableWriter::LastRecord verify;

  // The partition is fetched again: what was fetched (a held record, a
  // position an EOF taught) is forgotten.
  void forget_fetched() {
    held = Held{};
    pending = -1;
  }
};

// What a table is doing, which says the segment records go to (active()).
// The transitions are in phase.cpp, and nowhere else.
enum class Phase {
  kBootstrapping,  // `writer` is filled from the topic; readers see it BOOTSTRAPPING
  kReady,          // `writer` follows the topic; readers see it READY
  kGrowing,        // `grow` takes `writer`'s entries over while records go to it
  kRebuilding,     // `rebuild` is filled from the beginning of the topic
  kSeeded,         // `rebuild` was loaded from a snapshot and catches up from its positions
};
// A replacement is filled from the topic (records go to `rebuild`).
inline bool replacing(Phase p) { return p == Phase::kRebuilding || p == Phase::kSeeded; }

struct Replica {
  config::TableConfig cfg;
  Phase phase = Phase::kBootstrapping;
  std::unique_ptr<TableWriter> writer;  // the segment readers read
  // kRebuilding, kSeeded: the replacement being filled. Readers keep
  // `writer`'s data until it is current and takes the table's name.
  std::unique_ptr<TableWriter> rebuild;
  // kGrowing: a larger segment that takes `writer`'s entries over
  // (growth.hpp). Readers keep `writer`'s data until the copy is complete
  // and it takes the table's name.
  std::unique_ptr<TableWriter> grow;
  // The segment records go to.
  TableWriter& active();
  // `writer` turned READY once (a rebuild or growth keeps it so).
  bool ready = false;
  // The partitions the table follows (their number is partition_count()).
  std::vector<PartitionTrack> parts;
  int32_t partition_count() const { return static_cast<int32_t>(parts.size()); }
  struct Growth {
    TableSize from;  // the size grown from
    clock::time_point since{};
    uint64_t entries = 0;  // the source's entries
    uint64_t applied = 0;  // Replica::applied when it began
  } growth;
  bool at_limit = false;  // max_memory_bytes left no larger segment
  // Segments this table replaced (their incarnations), as long as readers
  // may still read them: those readers stuck inside a read keep mapped
  // count against cfg.grow_past_readers.
  std::vector<uint64_t> replaced;
  clock::time_point next_grow_error_log{};
  bool resize_checked = false;      // resize_if_due ran
  std::string snapshot_dir;         // the table's snapshots (snapshots.hpp)
  uint64_t snapshot_max_age_s = 0;  // older snapshots are not started from (0: any)
  // The snapshot `rebuild` was loaded from (seed.hpp); path "": none.
  struct Seed {
    std::string path;
    clock::time_point since{};
    uint64_t entries = 0, live_bytes = 0;  // what it loaded
  } seed;
  uint64_t source_cluster = 0;  // XXH3 of the cluster id (0: unknown)
  uint64_t source_topic = 0;    // XXH3 of the topic name
  bool skip_batch = false;      // rest of this batch predates a seek
  uint64_t applied = 0;         // since the current segment's bootstrap (progress, STATUS=)
  uint64_t applied_total = 0;   // since kvsd started, never going back (metrics)
  uint64_t skipped = 0;
  uint64_t rebuilds = 0;  // replacements published since kvsd started
  uint64_t growths = 0;   // larger segments published since kvsd started
  uint32_t n_held = 0;    // partitions whose held record waits
  format::HoldReason hold_reason = format::HoldReason::kNone;  // of the latest hold
  clock::time_point next_hold_log{};
  uint64_t holds_unlogged = 0;
  // Tombstones that may have to win over a record of their key arriving
  // later from another partition (tables with several partitions only).
  Tombstones tombstones;
  bool unverified_logged = false;  // a check_log found its record compacted
  // Partitions the topic has beyond max_partitions (0: none), logged once.
  int32_t refused_partitions = 0;
  // The reader last named in the log for holding memory back.
  ReaderHolder logged_holder;
  clock::time_point next_holder_log{};
};

// ---- Phase transitions (phase.cpp)

// Drops a growth or a rebuild under way (their segments are removed);
// the table rests: kReady if it was READY, else kBootstrapping.
void drop_replacements(Replica& t);
// kRebuilding: records go to `w`, a replacement filled from the beginning
// of the topic. kSeeded: `w` holds a snapshot's entries (`seed` says which).
void enter_rebuild(Replica& t, std::unique_ptr<TableWriter> w);
void enter_seeded(Replica& t, std::unique_ptr<TableWriter> w, Replica::Seed seed);
// A rebuild's segment grew: `w` (a copy of it, larger) takes its place.
void replace_rebuild(Replica& t, std::unique_ptr<TableWriter> w);
// kGrowing: records go to `w`, which takes `writer`'s entries over.
void enter_growth(Replica& t, std::unique_ptr<TableWriter> w);
// The growth's copy is complete: its segment takes the table's name and
// readers move to it; the table rests. Errors: the writer's (the phase
// is unchanged).
Result<void> publish_growth_segment(Replica& t);
// The growth is given up: its segment is removed; the table rests.
void leave_growth(Replica& t);
// The rebuilt (or seeded) segment is current: it is marked READY, takes
// the table's name, readers move to it, and the table rests (become_ready
// follows if it was not READY). Errors: the writer's.
Result<void> publish_rebuild(Replica& t);
// The table, current for the first time, turns READY.
void become_ready(Replica& t);

// ---- Start

// Attaches to the table's segment, or creates it. `fresh`: the data source
// starts empty (an embedded cluster): an existing segment is flagged
// replaced, so that its open readers move to the new one, and removed.
Result<Replica> open_replica(const config::Config& cfg, const config::TableConfig& tc, gid_t gid,
                             bool fresh);

// The partitions the table follows, the high watermarks to reach and where
// each partition starts (appended to `starts`). A segment that cannot
// resume (its offsets left the log, another topic or cluster, another
// size) or cannot hold the topic's partitions is rebuilt from the
// beginning of the topic. Errors: kInvalidArgument (above max_partitions),
// Kafka's.
Result<void> open_partitions(Replica& t, kafka::Consumer& c, int32_t n,
                             std::vector<kafka::PartitionStart>& starts);
// Starts filling a new segment for `t` from the beginning of its topic.
// `seek`: the partitions are assigned already and must go back.
Result<void> start_rebuild(Replica& t, kafka::Consumer& c, const std::string& why, bool seek);

// The first record or EOF of a partition whose last applied record is to
// be checked (PartitionTrack::verify). kApply: go on with m as usual;
// kDone: m is handled; kFailed: kvsd cannot go on.
enum class LogCheck { kApply, kDone, kFailed };
LogCheck check_log(Replica& t, kafka::Consumer& c, const rd_kafka_message_t* m);

// Follows the partitions the topic gained while kvsd ran (`n` in all now)
// from their beginning, in the same segment (its partition capacity is
// max_partitions). Above max_partitions the new partitions are refused,
// loudly. False if kvsd cannot go on.
bool follow_new_partitions(Replica& t, kafka::Consumer& c, kafka::WatermarkPoller& poller,
                           int32_t n);
// The topic has `n` partitions now, fewer than the table follows: it was
// deleted and re-created. The partitions that are gone are no longer
// fetched, and the table is rebuilt from the new topic (readers keep the
// old data until the new segment has caught up). False if kvsd cannot go
// on.
bool follow_fewer_partitions(Replica& t, kafka::Consumer& c, kafka::WatermarkPoller& poller,
                             int32_t n);

// ---- Applying records

// Applies one consumed message (a record or an event) of t's topic; the
// caller releases it. False if kvsd cannot go on.
bool apply_message(Replica& t, kafka::Consumer& c, rd_kafka_message_t* m);
// After each batch: publishes the positions partition EOFs taught, frees
// what readers no longer see, and starts a rebuild if the attach walk found
// the arena off. False if kvsd cannot go on.
bool end_batch(Replica& t, kafka::Consumer& c);

int64_t timestamp_ms(const rd_kafka_message_t* m);  // the record's Kafka timestamp; 0: none
inline uint64_t ms_to_ns(int64_t ms) { return ms > 0 ? static_cast<uint64_t>(ms) * 1000000 : 0; }
// The table has no room for the record (it must wait, never be skipped).
bool needs_room(Errc code);
// Applies the record at `offset` of `origin` to t's active segment: a put,
// or an erase when payload is null (a tombstone), by the rule of
// format::replaces.
Result<void> apply_to(Replica& t, std::string_view key, const char* payload, size_t len,
                      format::Origin origin, int64_t offset);
void note_skipped(Replica& t, int32_t p, int64_t offset, const Error& e);
// Record m needs room the table does not have: it waits in t.held and its
// partition is not fetched until it is applied. False if the partition
// could not be paused (kvsd cannot go on).
bool hold(Replica& t, kafka::Consumer& c, const rd_kafka_message_t* m, const Error& e);
// Applies the held records that are due and fetches their partitions again
// from the record after. False if kvsd cannot go on.
bool retry_holds(Replica& t, kafka::Consumer& c, clock::time_point now);
// The earliest time a held record of any table is due (or `limit`).
clock::time_point next_hold_try(const std::vector<Replica>& tables, clock::time_point limit);
// A rebuild starts every partition of the table over: nothing waits.
void drop_holds(Replica& t, kafka::Consumer& c);

// ---- READY and swaps

enum class ReadyChange { kNone, kReady, kRebuilt, kFailed };
// Once every partition reached its target: a rebuilt segment takes the
// table's name (readers move to it), and the table turns READY.
ReadyChange check_ready(Replica& t);

// ---- Reporting

// "reader process 123 (file) has held 1.0 MiB back from reuse since T".
std::string describe_holder(const ReaderHolder& h, uint64_t bytes);
// Names, in the log, the reader that has held memory back for 3 s, then
// every minute while it does.
void report_holder(Replica& t, clock::time_point now);
// Publishes the high watermarks and the timestamp of the oldest record not
// applied yet.
void refresh_lag(Replica& t, kafka::Consumer& c, const kafka::WatermarkPoller& poller);
// "BOOTSTRAPPING: N records, P%" (or REBUILDING once all were READY), over
// the tables not current yet.
std::string progress_status(const std::vector<Replica>& tables, bool all_ready);
// What STATUS= adds about tables under pressure ("" if none).
std::string pressure_status(const std::vector<Replica>& tables);

}  // namespace kvs::daemon
