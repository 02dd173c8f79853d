// Refreshes the high watermarks of the partitions kvsd follows, and the
// topics' partition counts (partitions added while kvsd runs), on a thread
// of its own: the lag kvsd publishes stays true whatever its apply loop is
// doing, and for partitions it does not fetch (a partition whose next record
// waits for room). Fetch responses carry fresher watermarks for the
// partitions being fetched; kvsd publishes the larger of the two.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kafka/consumer.hpp"

namespace kvs::kafka {

class WatermarkPoller {
 public:
  // Asks every `interval`; each request waits at most `timeout`.
  WatermarkPoller(Consumer& consumer, std::chrono::milliseconds interval,
                  std::chrono::milliseconds timeout);
  ~WatermarkPoller();  // stops the thread (waits for a request in flight)
  WatermarkPoller(const WatermarkPoller&) = delete;
  WatermarkPoller& operator=(const WatermarkPoller&) = delete;

  // Follows `partitions` partitions of `topic` from now on.
  void follow(const std::string& topic, int32_t partitions);
  // The latest high watermark the thread learnt; -1 if none yet.
  int64_t high_watermark(const std::string& topic, int32_t partition) const;
  // The topic's partition count the thread last learnt; -1 if none yet.
  int32_t partition_count(const std::string& topic) const;

 private:
  void run();

  Consumer& consumer_;
  const std::chrono::milliseconds interval_, timeout_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool changed_ = false;                            // follow() was called: ask now
  std::map<std::string, int32_t> topics_;           // guarded by mu_
  std::map<std::string, std::vector<int64_t>> hw_;  // guarded by mu_
  std::map<std::string, int32_t> counts_;           // guarded by mu_
  std::thread thread_;
};

}  // namespace kvs::kafka
