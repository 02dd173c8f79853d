// What kvsd's apply thread knows of its tables and nobody else can read
// from a segment (rebuilds, growths, records applied, the age of each
// partition's oldest unapplied record), published once a second for the
// metrics endpoint: relaxed atomics written by the apply thread alone,
// so that a scrape never waits for it, nor it for a scrape.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace kvs::daemon::metrics {

struct TableBoard {
  explicit TableBoard(uint32_t max_partitions) : oldest_unapplied_ns(max_partitions) {}
  std::atomic<uint64_t> records_applied{0};  // since kvsd started, never going back
  std::atomic<uint64_t> rebuilds{0};
  std::atomic<uint64_t> growths{0};
  std::atomic<uint32_t> partitions{0};  // entries of oldest_unapplied_ns in use
  // Per partition: Kafka timestamp (Unix ns) bounding the oldest unapplied
  // record's age; 0: none unapplied, or not known.
  std::vector<std::atomic<uint64_t>> oldest_unapplied_ns;
};

// One board per table of the config, in its order.
using Board = std::vector<std::unique_ptr<TableBoard>>;

inline void store(std::atomic<uint64_t>& a, uint64_t v) { a.store(v, std::memory_order_relaxed); }

}  // namespace kvs::daemon::metrics
