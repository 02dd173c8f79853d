// A cold start from a snapshot (snapshots.hpp): when a table has no segment
// to resume (after a reboot, or one it cannot use), kvsd loads the newest
// usable snapshot (its own, or the seed_from file) into a new segment and
// consumes the topic from the snapshot's positions. Like a rebuild, the new
// segment takes the table's name only once it has caught up: a snapshot
// written while kvsd applied records may hold some keys at a later value
// than its positions, which the records after them set again, and readers
// must not see a key go back meanwhile. Runs on kvsd's apply thread.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "replica.hpp"
#include "writer/snapshot.hpp"

namespace kvs::daemon {

// The segment holds nothing: created now, or never given a record.
bool blank(const TableWriter& w);

// Why `info` cannot start table t, whose topic has t.partitions partitions
// with (low, high) watermarks `wms`, at `now_unix_ns`, or "" if it can:
// another topic or cluster, older than t.snapshot_max_age_s (compaction may
// have removed tombstones it needs) or created after now (its age is
// unknown), more partitions than the topic, or a
// position outside the log (retention deleted records after it, or the
// topic was re-created).
std::string why_not_usable(const Replica& t, const SnapshotInfo& info,
                           const std::vector<std::pair<int64_t, int64_t>>& wms,
                           uint64_t now_unix_ns);

// Starts t from the usable snapshot furthest along the log (its own, or
// seed_from; of equal positions, the newest): t.rebuild holds it, its
// positions, and the fingerprints to check against the log (t.verify).
// False if none is usable; each one refused is logged, saying why.
bool seed_from_snapshot(Replica& t, const std::vector<std::pair<int64_t, int64_t>>& wms);

}  // namespace kvs::daemon
