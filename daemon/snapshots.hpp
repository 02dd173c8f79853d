// kvsd's snapshots on disk: where each table's live in the state directory,
// the thread that writes them every snapshot_interval_s (and at a clean
// stop), and what the last one was, for kvsctl stats. Loading one at a cold
// start is the replica's (replica.cpp: seed_from_snapshot).
//
// A table's snapshots are <state_dir>/<shm_prefix><table>/<unix ns>.snapshot
// (the name sorts by age); the newest two are kept, so that a damaged newest
// one leaves another to start from. kvsd writes them as a reader of its own
// table (kvs_snapshot_write): the apply thread never waits for a snapshot.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "kvs/kvs.hpp"

namespace kvs::daemon {

// Makes the calling thread (the one that writes snapshots) run only when a
// CPU has nothing else to do (SCHED_IDLE): ingest and the write server come
// first, and a snapshot takes longer on a busy host. A walk held off the
// CPU inside one of its 1 MiB chunks holds memory back from reuse meanwhile,
// which a table outgrows after a second, as it does any stuck reader.
void lower_priority();

// How far past kvsd's clock a snapshot's creation time may lie (clocks of
// hosts that share seed_from files disagree a little). A snapshot created
// later than that comes from a clock that ran ahead: its age cannot be
// known, so it is never started from and never kept.
constexpr uint64_t kSnapshotClockSlack_s = 60;

// Where table `table`'s snapshots live.
std::string snapshot_dir(const config::Config& cfg, const std::string& table);
// The snapshot files in `dir`, by name (their creation time when kvsd
// wrote them), newest first; none if it does not exist.
std::vector<std::string> list_snapshots(const std::string& dir);
// Removes every snapshot of table `table` in `dir` but `keep` and the one
// created last before it (by the time in its header, not its name) that is
// not from the future; logs what it removes and why. Returns how many.
size_t prune_snapshots(const std::string& dir, const std::string& table, const std::string& keep,
                       uint64_t now_unix_ns);
// Removes what writers that died left in `dir` (".tmp." files); their count.
size_t sweep_temporaries(const std::string& dir);

// The last snapshot of each table, as JSON for kvsctl stats. Thread-safe.
// A table's snapshots in numbers, for the metrics endpoint.
struct SnapshotFigures {
  uint64_t created_unix_ns = 0;  // of the last one written (0: none yet)
  uint64_t entries = 0;
  uint64_t file_bytes = 0;
  double duration_s = 0;
  uint64_t failures = 0;  // since kvsd started
};

class SnapshotStatus {
 public:
  // A snapshot written (`f` its figures), or one that failed (`f` null).
  void set(const std::string& table, std::string json, const SnapshotFigures* f);
  std::string json(const std::string& table) const;  // "null": none yet
  SnapshotFigures figures(const std::string& table) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::string> by_table_;
  std::map<std::string, SnapshotFigures> figures_;
};

// Writes each READY table's snapshot every snapshot_interval_s from a
// thread of its own; write_all() writes them at once (at a clean stop).
// Failures (a full disk) are logged and shown in the status; the newest
// good snapshot stays.
class Snapshotter {
 public:
  // enabled = false: never writes (as snapshot_interval_s = 0).
  Snapshotter(const config::Config& cfg, SnapshotStatus& status, bool enabled = true);
  ~Snapshotter();  // stops the thread (after the snapshot under way, if any)
  Snapshotter(const Snapshotter&) = delete;
  Snapshotter& operator=(const Snapshotter&) = delete;

  // Starts the periodic thread (not with snapshot_interval_s = 0).
  void start();
  // Stops the thread, then writes every READY table's snapshot now.
  void write_all();

 private:
  struct Target {
    std::string name, dir;
    std::unique_ptr<Table> table;  // opened at its first snapshot
  };
  void loop();
  void write_one(Target& t);
  void stop();

  const config::Config& cfg_;
  SnapshotStatus& status_;
  const bool enabled_;
  std::vector<Target> targets_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace kvs::daemon
