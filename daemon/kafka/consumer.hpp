// kvsd's Kafka consumer: every partition of every table's topic, assigned
// directly (each host holds whole tables: no consumer group, no committed
// offsets; positions live in the table segments). read_committed, with
// partition EOF events so that READY can be judged across compacted gaps,
// control records and empty partitions.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kvs/result.hpp"

struct rd_kafka_s;
struct rd_kafka_queue_s;
struct rd_kafka_message_s;

namespace kvs::kafka {

struct PartitionStart {
  std::string topic;
  int32_t partition;
  int64_t offset;  // exact offset, or -2 for "the beginning"
};

class Consumer {
 public:
  // `properties` go to librdkafka as they are (the [kafka] section); kvsd's
  // own settings override theirs. Errors name the offending property.
  static Result<Consumer> create(
      const std::vector<std::pair<std::string, std::string>>& properties);
  Consumer(Consumer&& o) noexcept;
  Consumer& operator=(Consumer&&) = delete;
  ~Consumer();  // close(kDestroyLimit)
  // Closes the consumer and destroys librdkafka's handle, waiting at most
  // `limit` (kafka/shutdown.hpp). False if librdkafka did not end in time.
  bool close(std::chrono::milliseconds limit);

  // Serves what librdkafka queues for the handle besides records (its
  // statistics callback: kafka/stats.hpp). The apply thread calls it once
  // a second; it never blocks.
  void serve_events();

  // Partition count of `topic`, from a metadata request that never creates
  // it (thread-safe). Errors: kNotFound (the topic does not exist),
  // kTimeout (no broker answered within timeout_ms).
  Result<int32_t> partition_count(const std::string& topic, int timeout_ms);
  // Low and high watermarks of partitions 0..partitions-1, asked of every
  // leader at once (two ListOffsets requests per broker, not two per
  // partition). Errors: kTimeout (a broker did not answer, or a partition's
  // leader is not known yet), kKafka (a partition's error, named).
  Result<std::vector<std::pair<int64_t, int64_t>>> watermarks(const std::string& topic,
                                                              int32_t partitions, int timeout_ms);
  // The high watermark of the last fetch response (no request); -1 if none.
  int64_t cached_high_watermark(const std::string& topic, int32_t partition);
  Result<void> assign(const std::vector<PartitionStart>& starts);
  // Moves the given partitions (already assigned) back to the beginning of
  // their logs. Messages fetched before it are dropped by librdkafka.
  Result<void> reassign_from_beginning(const std::string& topic, int32_t partitions);
  // Stops fetching one partition (its fetched, unconsumed messages are
  // dropped), until start_partition() starts it again at `offset`: a
  // partition whose next record must wait costs no memory meanwhile.
  Result<void> stop_partition(const std::string& topic, int32_t partition);
  Result<void> start_partition(const std::string& topic, int32_t partition, int64_t offset);
  // Creates `topic` with cleanup.policy=compact (replication_factor -1: the
  // broker's default). A topic that exists already is not an error. Errors:
  // kUnsupported (the cluster has no CreateTopics), kPermission, kTimeout,
  // kSystem.
  // `configs` are set on the new topic besides cleanup.policy=compact.
  Result<void> create_topic(const std::string& topic, int32_t partitions,
                            int32_t replication_factor,
                            const std::map<std::string, std::string>& configs, int timeout_ms);
  // Asks for the configs `names` of `topics` without waiting;
  // poll_topic_configs() returns the answers once they are there (the
  // values the cluster described, or an error per topic: kUnsupported
  // without DescribeConfigs, kPermission, kTimeout).
  void request_topic_configs(const std::vector<std::string>& topics, int timeout_ms);
  using TopicConfigs = std::map<std::string, std::string>;
  std::optional<std::vector<std::pair<std::string, Result<TopicConfigs>>>> poll_topic_configs();
  // The cluster id the brokers report. Errors: kTimeout.
  Result<std::string> cluster_id(int timeout_ms);

  // Up to `max` messages (or events: err set): waits at most timeout_ms for
  // the first, then takes what is there without waiting. Each must be
  // released with release().
  size_t poll_batch(int timeout_ms, rd_kafka_message_s** out, size_t max);
  static void release(rd_kafka_message_s* m);

 private:
  Consumer() = default;
  rd_kafka_s* rk_ = nullptr;
  rd_kafka_queue_s* queue_ = nullptr;
  rd_kafka_queue_s* admin_queue_ = nullptr;  // answers to requests in flight
  std::vector<std::string> policy_topics_;
};

}  // namespace kvs::kafka
