// Reads a whole topic with a plain librdkafka consumer (no kvs code): what
// Kafka really holds, for checks of duplicates and losses.
#pragma once

#include <librdkafka/rdkafka.h>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvs::test {

struct Record {
  int32_t partition;
  int64_t offset;
  std::string key;
  std::optional<std::string> value;  // nullopt: tombstone
};

// Every record of every partition up to the high watermarks at the call.
inline std::vector<Record> read_topic(const std::string& bootstrap, const std::string& topic,
                                      int partitions) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof err);
  rd_kafka_conf_set(conf, "group.id", "kvs-test-reader", err, sizeof err);
  rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof err);
  rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (rk == nullptr) throw std::runtime_error(err);
  std::vector<int64_t> high(partitions);
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p) {
    int64_t lo = 0;
    if (rd_kafka_query_watermark_offsets(rk, topic.c_str(), p, &lo, &high[p], 10000) != 0) {
      throw std::runtime_error("read_topic: no watermarks for " + topic);
    }
    rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(rk, list);
  rd_kafka_topic_partition_list_destroy(list);
  std::vector<Record> out;
  std::vector<bool> done(partitions);
  int left = partitions;
  for (int p = 0; p < partitions; ++p) {
    if (high[p] == 0) {
      done[p] = true;
      --left;
    }
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (left > 0 && std::chrono::steady_clock::now() < deadline) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk, 100);
    if (m == nullptr) continue;
    const int p = m->partition;
    if (!m->err && p >= 0 && p < partitions && m->offset < high[p]) {
      Record r{p, m->offset,
               m->key ? std::string(static_cast<const char*>(m->key), m->key_len) : "",
               std::nullopt};
      if (m->payload) r.value = std::string(static_cast<const char*>(m->payload), m->len);
      out.push_back(std::move(r));
    }
    const bool at_end = (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF && m->offset >= high[p]) ||
                        (!m->err && m->offset + 1 >= high[p]);
    if (p >= 0 && p < partitions && at_end && !done[p]) {
      done[p] = true;
      --left;
    }
    rd_kafka_message_destroy(m);
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  if (left > 0) throw std::runtime_error("read_topic: " + topic + " not read to its end in 60 s");
  return out;
}

}  // namespace kvs::test
