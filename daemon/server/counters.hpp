// The write server's counters as its thread publishes them for other
// threads (the metrics endpoint): plain numbers gathered by the server's
// thread after each turn of its loop, stored relaxed into atomics, so
// that a reader never takes a lock the server's thread could wait on.
#pragma once

#include <atomic>
#include <cstdint>

namespace kvs::daemon::server {

struct Counters {
  uint64_t connections = 0;  // open now
  uint64_t requests = 0;     // frames read since start
  uint64_t writes_acked = 0;
  uint64_t write_errors = 0;
  uint64_t protocol_errors = 0;
  uint64_t refused_connections = 0;
  uint64_t timed_out_connections = 0;
  uint64_t unfinished_frame_bytes = 0;    // frame memory in use
  uint64_t waiting_for_frame_memory = 0;  // connections not read until some is free
  uint64_t unsent_reply_bytes = 0;
  uint64_t pending = 0;  // requests without an answer
  uint64_t queue_full_waits = 0;
  uint64_t producer_queue = 0;  // records librdkafka has not delivered yet
};

inline constexpr uint64_t Counters::*kCounterFields[] = {&Counters::connections,
                                                         &Counters::requests,
                                                         &Counters::writes_acked,
                                                         &Counters::write_errors,
                                                         &Counters::protocol_errors,
                                                         &Counters::refused_connections,
                                                         &Counters::timed_out_connections,
                                                         &Counters::unfinished_frame_bytes,
                                                         &Counters::waiting_for_frame_memory,
                                                         &Counters::unsent_reply_bytes,
                                                         &Counters::pending,
                                                         &Counters::queue_full_waits,
                                                         &Counters::producer_queue};
static_assert(sizeof(kCounterFields) / sizeof(kCounterFields[0]) ==
              sizeof(Counters) / sizeof(uint64_t));

class PublishedCounters {
 public:
  void publish(const Counters& c) {
    size_t i = 0;
    for (auto f : kCounterFields) words_[i++].store(c.*f, std::memory_order_relaxed);
  }
  Counters load() const {
    Counters c;
    size_t i = 0;
    for (auto f : kCounterFields) c.*f = words_[i++].load(std::memory_order_relaxed);
    return c;
  }

 private:
  std::atomic<uint64_t> words_[sizeof(kCounterFields) / sizeof(kCounterFields[0])]{};
};

// Write latency, from the request's arrival to its answer, as Prometheus's
// buckets. Written by the server's thread alone (a load and a store per
// field, no read-modify-write), read by any thread: the count is the sum of
// the buckets as read, so the two always agree.
class LatencyHistogram {
 public:
  static constexpr double kBounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                       0.1,    0.25,  0.5,    1,     2.5,  5,     10};
  static constexpr size_t kBuckets = sizeof(kBounds) / sizeof(kBounds[0]) + 1;  // + +Inf

  void observe(uint64_t ns) {
    const double s = static_cast<double>(ns) / 1e9;
    size_t b = 0;
    while (b + 1 < kBuckets && s > kBounds[b]) ++b;
    bump(counts_[b], 1);
    bump(sum_ns_, ns);
  }
  struct Snapshot {
    uint64_t counts[kBuckets] = {};  // per bucket, not cumulative
    uint64_t count = 0;
    double sum_s = 0;
  };
  Snapshot load() const {
    Snapshot s;
    for (size_t b = 0; b < kBuckets; ++b) {
      s.counts[b] = counts_[b].load(std::memory_order_relaxed);
      s.count += s.counts[b];
    }
    s.sum_s = static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
    return s;
  }

 private:
  static void bump(std::atomic<uint64_t>& a, uint64_t by) {
    a.store(a.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }
  std::atomic<uint64_t> counts_[kBuckets]{};
  std::atomic<uint64_t> sum_ns_{0};
};

// What writes came to: failures by libkvs error code (KVS_E*, negative),
// and the latency of writes answered with success, acknowledged by Kafka
// (`acked`) or, with VISIBLE, applied by this host's table too (`visible`).
struct WriteStats {
  static constexpr int kCodes = 32;  // KVS_E* codes are -1..-31
  void count_error(int code) {
    const int i = code < 0 && code > -kCodes ? -code : 0;  // 0: a code of no name
    errors_[i].store(errors_[i].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  uint64_t errors(int code) const {
    const int i = code < 0 && code > -kCodes ? -code : 0;
    return errors_[i].load(std::memory_order_relaxed);
  }
  LatencyHistogram acked, visible;

 private:
  std::atomic<uint64_t> errors_[kCodes]{};
};

}  // namespace kvs::daemon::server
