// The Kafka cluster an integration test runs against: the cluster named by
// KVS_TEST_BOOTSTRAP if set (a real Apache Kafka), else librdkafka's mock
// cluster in a process of its own (kvs_mock_kafka), reached over TCP.
#pragma once

#include <librdkafka/rdkafka.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "support/test_support.hpp"

namespace kvs::test {

class KafkaCluster {
 public:
  // `mock_helper`: path of kvs_mock_kafka (default: next to this program).
  explicit KafkaCluster(const std::string& mock_helper = helper("kvs_mock_kafka"))
      : mock_helper_(mock_helper) {
    if (const char* b = std::getenv("KVS_TEST_BOOTSTRAP"); b && *b) {
      bootstrap_ = b;
      return;
    }
    start_mock({});
  }
  ~KafkaCluster() {
    if (mock_) {
      mock_->close_stdin();
      mock_->wait();
    }
  }

  const std::string& bootstrap() const { return bootstrap_; }
  bool is_mock() const { return mock_ != nullptr; }
  // The mock cluster's process; 0 with an external cluster.
  pid_t mock_pid() const { return mock_ ? mock_->pid() : 0; }

  // A topic name no other test run uses.
  static std::string unique_topic(const std::string& base) {
    std::random_device rd;
    return "kvs-test-" + base + "-" + std::to_string(rd() % 1000000);
  }

  // Creates a topic (compacted unless `policy` says otherwise): on the mock
  // through its command channel (its 2.0.2 version has no CreateTopics, nor
  // topic configs), on a real cluster with CreateTopics.
  bool create_topic(const std::string& topic, int partitions,
                    const std::string& policy = "compact") {
    if (mock_) return command("create " + topic + " " + std::to_string(partitions));
    char err[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap_.c_str(), err, sizeof err);
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (rk == nullptr) return false;
    rd_kafka_NewTopic_t* nt = rd_kafka_NewTopic_new(topic.c_str(), partitions, -1, err, sizeof err);
    rd_kafka_NewTopic_set_config(nt, "cleanup.policy", policy.c_str());
    rd_kafka_queue_t* q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, &nt, 1, nullptr, q);
    rd_kafka_event_t* ev = rd_kafka_queue_poll(q, 30000);
    bool ok = false;
    if (ev != nullptr) {
      size_t n = 0;
      const rd_kafka_topic_result_t** res =
          rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
      ok = n == 1 && rd_kafka_topic_result_error(res[0]) == RD_KAFKA_RESP_ERR_NO_ERROR;
      rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_destroy(rk);
    return ok;
  }
  // Whether the cluster has `topic`, asked in a way that creates nothing
  // (metadata of every topic): 1 yes, 0 no, -1 no answer.
  int topic_exists(const std::string& topic) {
    char err[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap_.c_str(), err, sizeof err);
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (rk == nullptr) return -1;
    const rd_kafka_metadata_t* md = nullptr;
    int found = -1;
    if (rd_kafka_metadata(rk, 1, nullptr, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      found = 0;
      for (int i = 0; i < md->topic_cnt; ++i) {
        if (topic == md->topics[i].topic && md->topics[i].err == RD_KAFKA_RESP_ERR_NO_ERROR)
          found = 1;
      }
      rd_kafka_metadata_destroy(md);
    }
    rd_kafka_destroy(rk);
    return found;
  }
  // (low, high) watermarks of a partition, or (-1, -1) if no broker answers.
  std::pair<int64_t, int64_t> watermarks(const std::string& topic, int partition) {
    char err[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap_.c_str(), err, sizeof err);
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (rk == nullptr) return {-1, -1};
    int64_t lo = -1, hi = -1;
    if (rd_kafka_query_watermark_offsets(rk, topic.c_str(), partition, &lo, &hi, 10000) !=
        RD_KAFKA_RESP_ERR_NO_ERROR) {
      lo = hi = -1;
    }
    rd_kafka_destroy(rk);
    return {lo, hi};
  }
  // Raises the topic's partition count to `total` (CreatePartitions). The
  // mock cluster cannot: false there.
  bool add_partitions(const std::string& topic, int total) {
    if (mock_) return false;
    char err[512];
    rd_kafka_NewPartitions_t* np =
        rd_kafka_NewPartitions_new(topic.c_str(), static_cast<size_t>(total), err, sizeof err);
    if (np == nullptr) return false;
    const bool ok = admin([&](rd_kafka_t* rk, rd_kafka_queue_t* q) {
      rd_kafka_CreatePartitions(rk, &np, 1, nullptr, q);
    });
    rd_kafka_NewPartitions_destroy(np);
    return ok;
  }
  // Deletes the topic (DeleteTopics). The mock cluster cannot: false there.
  bool delete_topic(const std::string& topic) {
    if (mock_) return false;
    rd_kafka_DeleteTopic_t* dt = rd_kafka_DeleteTopic_new(topic.c_str());
    const bool ok = admin([&](rd_kafka_t* rk, rd_kafka_queue_t* q) {
      rd_kafka_DeleteTopics(rk, &dt, 1, nullptr, q);
    });
    rd_kafka_DeleteTopic_destroy(dt);
    return ok;
  }
  // Mock only: stops the mock cluster and starts another on the same ports
  // with `topic` of `partitions` partitions and nothing else. To a client
  // it is the same brokers whose topic was deleted and re-created (the
  // cluster id differs). False on a real cluster, or if the ports are
  // taken meanwhile.
  bool restart_with_topic(const std::string& topic, int partitions) {
    if (!mock_) return false;
    std::string ports;
    for (size_t at = 0; at < bootstrap_.size();) {
      const size_t colon = bootstrap_.find(':', at);
      const size_t comma = std::min(bootstrap_.find(',', at), bootstrap_.size());
      if (colon == std::string::npos || colon > comma) return false;
      ports += (ports.empty() ? "" : ",") + bootstrap_.substr(colon + 1, comma - colon - 1);
      at = comma + 1;
    }
    const std::string was = bootstrap_;
    mock_->close_stdin();
    mock_->wait();
    start_mock({"--ports", ports, "--topic", topic + ":" + std::to_string(partitions)});
    return bootstrap_ == was;
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
  // Runs one admin request (`send` issues it on the queue) and waits for
  // its answer: true if no topic in it failed.
  template <class Send>
  bool admin(Send send) {
    char err[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap_.c_str(), err, sizeof err);
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (rk == nullptr) return false;
    rd_kafka_queue_t* q = rd_kafka_queue_new(rk);
    send(rk, q);
    rd_kafka_event_t* ev = rd_kafka_queue_poll(q, 30000);
    bool ok = ev != nullptr && rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR_NO_ERROR;
    if (ev != nullptr) {
      size_t n = 0;
      const rd_kafka_topic_result_t** res = nullptr;
      if (const auto* r = rd_kafka_event_CreatePartitions_result(ev)) {
        res = rd_kafka_CreatePartitions_result_topics(r, &n);
      } else if (const auto* d = rd_kafka_event_DeleteTopics_result(ev)) {
        res = rd_kafka_DeleteTopics_result_topics(d, &n);
      }
      for (size_t i = 0; i < n; ++i)
        ok = ok && rd_kafka_topic_result_error(res[i]) == RD_KAFKA_RESP_ERR_NO_ERROR;
      rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
    return ok;
  }
  void start_mock(const std::vector<std::string>& args) {
    std::vector<std::string> argv{mock_helper_};
    argv.insert(argv.end(), args.begin(), args.end());
    mock_ = std::make_unique<Child>(argv);
    const std::string line = mock_->read_line();
    if (line.rfind("bootstrap ", 0) != 0) throw std::runtime_error("kvs_mock_kafka: " + line);
    bootstrap_ = line.substr(10);
  }
  bool command(const std::string& c) {
    mock_->write_line(c);
    return mock_->read_line() == "ok";
  }
  std::string mock_helper_;
  std::string bootstrap_;
  std::unique_ptr<Child> mock_;
};

}  // namespace kvs::test
