// librdkafka's mock cluster, for `kvsd --embedded-kafka` and for tests (which
// run it in a process of its own: tests/support/mock_kafka_main.cpp). Clients
// reach it over TCP like any cluster; nothing else in kvsd knows it is a mock.
//
// Limits of librdkafka 2.0.2's mock: about 5 MB kept per partition (older
// records are dropped silently), no CreateTopics (topics come from
// create_topic() or auto-creation), no log compaction, and no transaction
// markers (aborted records are not filtered for read_committed consumers).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kvs/result.hpp"

struct rd_kafka_s;
struct rd_kafka_mock_cluster_s;

namespace kvs::kafka {

class EmbeddedKafka {
 public:
  // Starts `brokers` brokers on loopback ports chosen by the kernel.
  // Errors: kSystem.
  static Result<std::unique_ptr<EmbeddedKafka>> start(int brokers);
  ~EmbeddedKafka();
  EmbeddedKafka(const EmbeddedKafka&) = delete;
  EmbeddedKafka& operator=(const EmbeddedKafka&) = delete;

  // "127.0.0.1:port,..."
  const std::string& bootstrap_servers() const { return bootstrap_; }
  // Errors: kInvalidArgument (bad name or count), kSystem.
  Result<void> create_topic(const std::string& topic, int partitions, int replication = 1);
  // Broker ids are 1..brokers.
  Result<void> set_broker_down(int32_t broker_id, bool down);
  // The next `count` requests of API `api_key` (e.g. 0 = Produce) fail with
  // librdkafka error code `error`.
  Result<void> push_request_errors(int16_t api_key, int count, int error);

 private:
  EmbeddedKafka() = default;
  rd_kafka_s* host_ = nullptr;  // the client handle the mock cluster lives in
  rd_kafka_mock_cluster_s* cluster_ = nullptr;
  std::string bootstrap_;
};

}  // namespace kvs::kafka
