// The Kafka cluster an integration test runs against: the cluster named by
// KVS_TEST_BOOTSTRAP if set (a real Apache Kafka), else librdkafka's mock
// cluster in a process of its own (kvs_mock_kafka), reached over TCP.
#pragma once

#include <cstdlib>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "support/test_support.hpp"

namespace kvs::test {

class KafkaCluster {
 public:
  KafkaCluster() {
    if (const char* b = std::getenv("KVS_TEST_BOOTSTRAP"); b && *b) {
      bootstrap_ = b;
      return;
    }
    mock_ = std::make_unique<Child>(std::vector<std::string>{helper("kvs_mock_kafka")});
    const std::string line = mock_->read_line();
    if (line.rfind("bootstrap ", 0) != 0) throw std::runtime_error("kvs_mock_kafka: " + line);
    bootstrap_ = line.substr(10);
  }
  ~KafkaCluster() {
    if (mock_) {
      mock_->close_stdin();
      mock_->wait();
    }
  }

  const std::string& bootstrap() const { return bootstrap_; }
  bool is_mock() const { return mock_ != nullptr; }

  // A topic name no other test run uses.
  static std::string unique_topic(const std::string& base) {
    std::random_device rd;
    return "kvs-test-" + base + "-" + std::to_string(rd() % 1000000);
  }

  // Creates a topic. On the mock through its command channel; on a real
  // cluster through kcat-independent admin tooling is not available here, so
  // tests rely on the broker's auto-creation or on kvsd's create_topic.
  bool create_topic(const std::string& topic, int partitions) {
    if (!mock_) return false;
    return command("create " + topic + " " + std::to_string(partitions));
  }
  // Fault injection: mock only (tests skip otherwise).
  bool set_broker_down(int broker, bool down) {
    return mock_ && command((down ? "down " : "up ") + std::to_string(broker));
  }
  bool push_request_errors(int api_key, int count, int code) {
    return mock_ && command("errors " + std::to_string(api_key) + " " + std::to_string(count) +
                            " " + std::to_string(code));
  }

 private:
  bool command(const std::string& c) {
    mock_->write_line(c);
    return mock_->read_line() == "ok";
  }
  std::string bootstrap_;
  std::unique_ptr<Child> mock_;
};

}  // namespace kvs::test
