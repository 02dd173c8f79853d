// An independent Kafka producer for tests (plain librdkafka, acks=all), to
// put records into a topic the way any application would.
#pragma once

#include <librdkafka/rdkafka.h>

#include <optional>
#include <stdexcept>
#include <string>

namespace kvs::test {

class Producer {
 public:
  explicit Producer(const std::string& bootstrap, const std::string& txn_id = "") {
    char err[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    if (!txn_id.empty())
      rd_kafka_conf_set(conf, "transactional.id", txn_id.c_str(), err, sizeof err);
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof err);
    rd_kafka_conf_set(conf, "acks", "all", err, sizeof err);
    rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err);
    rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (rk_ == nullptr) throw std::runtime_error(err);
  }
  Producer(Producer&& o) noexcept : rk_(o.rk_) { o.rk_ = nullptr; }
  ~Producer() {
    if (rk_ == nullptr) return;
    rd_kafka_flush(rk_, 10000);
    rd_kafka_destroy(rk_);
  }
  // A transactional producer (transactional.id = txn_id).
  static Producer transactional(const std::string& bootstrap, const std::string& txn_id) {
    return Producer(bootstrap, txn_id);
  }
  bool init_transactions() { return ok(rd_kafka_init_transactions(rk_, 30000)); }
  bool begin() { return ok(rd_kafka_begin_transaction(rk_)); }
  bool commit() { return ok(rd_kafka_commit_transaction(rk_, 30000)); }
  bool abort() { return ok(rd_kafka_abort_transaction(rk_, 30000)); }

  // value nullopt: a tombstone.
  void send(const std::string& topic, int partition, const std::string& key,
            const std::optional<std::string>& value) {
    void* v = value ? const_cast<char*>(value->data()) : nullptr;
    const size_t vlen = value ? value->size() : 0;
    rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk_, topic.c_str(), nullptr);
    // rd_kafka_produce, not producev: the latter's macros are GNU extensions.
    while (rd_kafka_produce(rkt, partition, RD_KAFKA_MSG_F_COPY, v, vlen, key.data(), key.size(),
                            nullptr) != 0) {
      const rd_kafka_resp_err_t e = rd_kafka_last_error();
      if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        rd_kafka_topic_destroy(rkt);
        throw std::runtime_error(rd_kafka_err2str(e));
      }
      rd_kafka_poll(rk_, 10);
    }
    rd_kafka_topic_destroy(rkt);
  }
  // A record with the Kafka timestamp `timestamp_ms` (value nullopt: a
  // tombstone), as a producer whose clock says so would write it.
  void send_at(const std::string& topic, int partition, const std::string& key,
               const std::optional<std::string>& value, int64_t timestamp_ms) {
    rd_kafka_vu_t vus[6];
    vus[0].vtype = RD_KAFKA_VTYPE_TOPIC;
    vus[0].u.cstr = topic.c_str();
    vus[1].vtype = RD_KAFKA_VTYPE_PARTITION;
    vus[1].u.i32 = partition;
    vus[2].vtype = RD_KAFKA_VTYPE_KEY;
    vus[2].u.mem = {const_cast<char*>(key.data()), key.size()};
    vus[3].vtype = RD_KAFKA_VTYPE_VALUE;
    vus[3].u.mem = {value ? const_cast<char*>(value->data()) : nullptr, value ? value->size() : 0};
    vus[4].vtype = RD_KAFKA_VTYPE_TIMESTAMP;
    vus[4].u.i64 = timestamp_ms;
    vus[5].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
    vus[5].u.i = RD_KAFKA_MSG_F_COPY;
    for (;;) {
      rd_kafka_error_t* e = rd_kafka_produceva(rk_, vus, 6);
      if (e == nullptr) return;
      const rd_kafka_resp_err_t code = rd_kafka_error_code(e);
      rd_kafka_error_destroy(e);
      if (code != RD_KAFKA_RESP_ERR__QUEUE_FULL) throw std::runtime_error(rd_kafka_err2str(code));
      rd_kafka_poll(rk_, 10);
    }
  }
  // True if every record was delivered within timeout_ms.
  bool flush(int timeout_ms = 30000) {
    return rd_kafka_flush(rk_, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR;
  }

 private:
  static bool ok(rd_kafka_error_t* e) {
    if (e == nullptr) return true;
    rd_kafka_error_destroy(e);
    return false;
  }
  rd_kafka_t* rk_ = nullptr;
};

}  // namespace kvs::test
