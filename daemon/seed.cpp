#include "seed.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cinttypes>

#include "config/paths.hpp"
#include "growth.hpp"
#include "log.hpp"
#include "snapshots.hpp"

namespace kvs::daemon {

namespace {

// A segment for the snapshot's entries (nullopt: over max_memory_bytes).
std::optional<TableSize> size_for(const SnapshotInfo& info, const config::TableConfig& cfg) {
  // Each entry's block: its header and bytes, 8-byte aligned.
  return seed_size(info.entries,
                   info.entry_bytes + info.entries * (sizeof(format::BlockHeader) + 8), cfg);
}

struct Candidate {
  std::string path;
  SnapshotInfo info;
};

// How far along the log a snapshot is: the sum of its next offsets.
uint64_t positions(const SnapshotInfo& info) {
  uint64_t sum = 0;
  for (const auto& p : info.partitions)
    sum += static_cast<uint64_t>(std::max<int64_t>(0, p.next_offset));
  return sum;
}

// The table's own snapshots and seed_from, whose headers read, furthest
// along the log first.
std::vector<Candidate> candidates(const Replica& t) {
  std::vector<std::string> paths = list_snapshots(t.snapshot_dir);
  if (!t.cfg.seed_from.empty()) paths.push_back(t.cfg.seed_from);
  std::vector<Candidate> out;
  for (const auto& p : paths) {
    // Only files that kvsd (or root) owns and nobody else may write: a
    // snapshot decides what the table holds (config/paths.hpp).
    struct stat st {};
    if (::lstat(p.c_str(), &st) == 0) {
      const std::string why =
          S_ISLNK(st.st_mode) ? std::string("is a symbolic link") : config::why_untrusted(st);
      if (!why.empty()) {
        KVS_LOG_WARN("table %s: snapshot %s not used: it %s", t.cfg.name.c_str(), p.c_str(),
                     why.c_str());
        continue;
      }
    }
    auto head = read_snapshot_header(p, t.cfg.name);
    if (!head) {
      KVS_LOG_WARN("table %s: snapshot ignored: %s", t.cfg.name.c_str(),
                   head.error().message.c_str());
      continue;
    }
    out.push_back(Candidate{p, std::move(*head)});
  }
  // The furthest along the log first: a clock decides nothing a position
  // can (a host whose clock ran ahead dates its snapshots in the future).
  std::stable_sort(out.begin(), out.end(), [](const Candidate& a, const Candidate& b) {
    const uint64_t pa = positions(a.info), pb = positions(b.info);
    if (pa != pb) return pa > pb;
    return a.info.created_unix_ns > b.info.created_unix_ns;
  });
  return out;
}

// Loads `c` into a new segment for t; false (logged) if it does not load.
bool load(Replica& t, const Candidate& c, const std::vector<std::pair<int64_t, int64_t>>& wms) {
  const auto start = clock::now();
  const auto size = size_for(c.info, t.cfg);
  if (!size) {
    KVS_LOG_WARN(
        "table %s: snapshot %s not used: its %llu entries need a segment larger than "
        "max_memory_bytes = %llu",
        t.cfg.name.c_str(), c.path.c_str(), static_cast<unsigned long long>(c.info.entries),
        static_cast<unsigned long long>(t.cfg.max_memory_bytes));
    return false;
  }
  auto r = t.writer->begin_replacement(*size);
  if (!r) {
    KVS_LOG_ERROR("table %s: a segment for snapshot %s: %s", t.cfg.name.c_str(), c.path.c_str(),
                  r.error().message.c_str());
    return false;
  }
  TableWriter& w = **r;
  const auto n = static_cast<uint32_t>(t.partition_count());
  auto loaded = load_snapshot(c.path, t.cfg.name, w);
  // The snapshot's partitions, and those the topic gained since.
  Result<void> counted = loaded ? w.set_partition_count(n) : Result<void>{};
  if (!loaded || !counted) {
    // The new segment goes with r.
    KVS_LOG_WARN("table %s: snapshot not used: %s", t.cfg.name.c_str(),
                 (loaded ? counted.error() : loaded.error()).message.c_str());
    return false;
  }
  w.set_source(t.source_cluster, t.source_topic);
  w.set_state(format::TableState::kBootstrapping);
  for (uint32_t p = 0; p < n; ++p) {
    const auto [lo, hi] = wms[p];
    // Partitions the topic gained since are read from their start.
    if (p >= c.info.partitions.size()) w.set_next_offset(p, lo);
    w.set_high_watermark(p, hi);
  }
  const WriterStats loaded_stats = w.stats();
  enter_seeded(t, std::move(*r),
               Replica::Seed{c.path, start, loaded_stats.size, loaded_stats.live_bytes});
  t.tombstones.clear();
  t.applied = t.skipped = 0;
  uint64_t behind = 0;
  for (uint32_t p = 0; p < n; ++p) {
    behind += static_cast<uint64_t>(std::max<int64_t>(0, wms[p].second - w.next_offset(p)));
  }
  KVS_LOG_INFO("table %s: cold start from snapshot %s (taken %s, %" PRIu64
               " entries, %.1f MiB), loaded in %.0f ms; consuming the %" PRIu64
               " offsets after its positions from topic %s",
               t.cfg.name.c_str(), c.path.c_str(), log::utc_time(c.info.created_unix_ns).c_str(),
               c.info.entries, static_cast<double>(c.info.file_bytes) / (1 << 20),
               std::chrono::duration<double, std::milli>(clock::now() - start).count(), behind,
               t.cfg.topic.c_str());
  return true;
}

}  // namespace

bool blank(const TableWriter& w) {
  const format::TableHeader& h = w.header();
  if (w.stats().size != 0 || h.puts.load(std::memory_order_relaxed) != 0 ||
      h.erases.load(std::memory_order_relaxed) != 0) {
    return false;
  }
  const uint32_t n =
      std::min(h.partition_count.load(std::memory_order_relaxed), h.partition_capacity);
  for (uint32_t p = 0; p < n; ++p) {
    if (w.next_offset(p) > 0) return false;
  }
  return true;
}

std::string why_not_usable(const Replica& t, const SnapshotInfo& info,
                           const std::vector<std::pair<int64_t, int64_t>>& wms,
                           uint64_t now_unix_ns) {
  if (info.source_topic != t.source_topic) {
    return "it is a snapshot of another topic than " + t.cfg.topic;
  }
  if (info.source_cluster != 0 && t.source_cluster != 0 &&
      info.source_cluster != t.source_cluster) {
    return "it is a snapshot of another Kafka cluster (the cluster id differs)";
  }
  if (info.source_cluster == 0 && t.source_cluster != 0) {
    return "it does not record its Kafka cluster, so it cannot be shown to be of this one";
  }
  if (info.created_unix_ns > now_unix_ns + kSnapshotClockSlack_s * 1000000000) {
    return "it was created at " + log::utc_time(info.created_unix_ns) + ", after now (" +
           log::utc_time(now_unix_ns) +
           "): a clock ran ahead, so its age, which must be below snapshot_max_age_s, is unknown";
  }
  const uint64_t age_s =
      now_unix_ns > info.created_unix_ns ? (now_unix_ns - info.created_unix_ns) / 1000000000 : 0;
  if (t.snapshot_max_age_s != 0 && age_s > t.snapshot_max_age_s) {
    return "it is " + std::to_string(age_s) +
           " s old, more than snapshot_max_age_s = " + std::to_string(t.snapshot_max_age_s) +
           " (compaction may have removed tombstones of keys it holds)";
  }
  if (info.partitions.size() > static_cast<size_t>(t.partition_count())) {
    return "it has " + std::to_string(info.partitions.size()) + " partitions and topic " +
           t.cfg.topic + " " + std::to_string(t.partition_count()) + " (was the topic re-created?)";
  }
  for (size_t p = 0; p < info.partitions.size(); ++p) {
    const int64_t next = info.partitions[p].next_offset;
    const auto [lo, hi] = wms[p];
    const std::string where = t.cfg.topic + "[" + std::to_string(p) + "]";
    if (next > hi) {
      return "its offset " + std::to_string(next) + " of " + where + " is past the log's end (" +
             std::to_string(hi) + "): was the topic re-created?";
    }
    if (next < lo) {
      return "the log of " + where + " now starts at offset " + std::to_string(lo) +
             ", after the snapshot's " + std::to_string(next) +
             ": retention deleted records the snapshot does not have";
    }
  }
  return "";
}

bool seed_from_snapshot(Replica& t, const std::vector<std::pair<int64_t, int64_t>>& wms) {
  // Every one that cannot be used is named, also behind one that can: a
  // bad file in the state directory is worth an operator's look.
  std::vector<Candidate> usable;
  for (Candidate& c : candidates(t)) {
    if (const std::string why = why_not_usable(t, c.info, wms, format::now_unix_ns());
        !why.empty()) {
      KVS_LOG_WARN("table %s: snapshot %s (taken %s) not used: %s", t.cfg.name.c_str(),
                   c.path.c_str(), log::utc_time(c.info.created_unix_ns).c_str(), why.c_str());
      continue;
    }
    usable.push_back(std::move(c));
  }
  for (const Candidate& c : usable) {
    if (load(t, c, wms)) return true;
  }
  return false;
}

}  // namespace kvs::daemon
