// The server's Kafka producer: librdkafka's producer (acks=all, idempotent,
// murmur2), the records of the frames being handled (staged, handed over in
// one call), the records that found its queue full (parked, in order, until
// it has room) and its delivery reports.
//
// Owns: the rd_kafka_t and the tables' topic handles, the staged and the
// parked records, the producer's error state. May not touch: connections
// (reading stops while records are parked because Connections asks
// has_parked()) or the request pool (outcomes go to the Sink).
#pragma once

#include <librdkafka/rdkafka.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.hpp"
#include "kvs/result.hpp"
#include "server/request.hpp"

namespace kvs::daemon::server {

class Producer {
 public:
  // What becomes of produced records: Requests implements it.
  struct Sink {
    virtual ~Sink() = default;
    // A delivery report (ok or not).
    virtual void delivered(const rd_kafka_message_t* m) = 0;
    // librdkafka refused the record at once (not for a full queue).
    virtual void refused(Request& r, uint32_t index, Errc code, const std::string& why) = 0;
    // The request may be freed if nothing else holds it.
    virtual void release(Request& r) = 0;
    virtual Request* find(ReqRef ref) = 0;
  };

  Producer(const config::Config& cfg, Sink& sink) : cfg_(cfg), sink_(sink) {}
  ~Producer();
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  // Creates the producer from the [kafka] properties with kvsd's overrides,
  // topic handles for `tables`, and has librdkafka write a byte to
  // `wake_fd` when delivery reports are queued. Errors: kInvalidArgument.
  Result<void> create(const std::vector<std::pair<std::string, std::string>>& kafka,
                      uint32_t max_frame_bytes, std::vector<std::unique_ptr<Table>>& tables,
                      int wake_fd);

  // The partition a record of `key` goes to: Java's default partitioner
  // (murmur2) over the topic's partition count as kvsd last learnt it, or
  // RD_KAFKA_PARTITION_UA while that is not known (librdkafka decides).
  static int32_t partition_for(const Table& t, std::string_view key);
  // Stages operation `index` of r (value nullopt: a tombstone); the key and
  // value must stay valid until send_staged().
  void produce(Request& r, uint32_t index, std::string_view key,
               std::optional<std::string_view> value);
  // Hands the staged records to librdkafka in one call.
  void send_staged();
  // Produces parked records again, in order, while the queue takes them;
  // true if it sent the last one (connections may be read again).
  bool retry_parked();
  bool has_parked() const { return !parked_.empty(); }
  // Serves the delivery reports that are due.
  void poll() { rd_kafka_poll(rk_, 0); }
  // At stop: drops what is not acknowledged yet (their reports arrive here).
  void purge();

  // "no acknowledgement from Kafka within ..." with the brokers' state.
  std::string no_ack_message(uint32_t timeout_ms) const;
  uint64_t queue_full_waits() const { return n_queue_full_; }
  int queue_length() const { return rd_kafka_outq_len(rk_); }

 private:
  static void on_delivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque);
  static void on_error(rd_kafka_t* rk, int err, const char* reason, void* opaque);

  // An operation waiting for producer queue space; owns its bytes.
  struct Parked {
    ReqRef req;
    uint32_t index;
    std::string key;
    std::optional<std::string> value;
  };

  const config::Config& cfg_;
  Sink& sink_;
  rd_kafka_t* rk_ = nullptr;
  std::vector<std::unique_ptr<Table>>* tables_ = nullptr;
  std::deque<Parked> parked_;
  // Records of the frames handled since the last send_staged(), all for
  // staged_table_. Their keys and values point into the connection's input
  // buffer: send_staged() runs before that buffer changes.
  std::vector<rd_kafka_message_t> staged_;
  Table* staged_table_ = nullptr;
  std::vector<Request*> staged_failed_;
  uint64_t n_queue_full_ = 0;     // records that found the queue full and waited
  std::string last_kafka_error_;  // from on_error: why brokers are unreachable
  clock::time_point last_kafka_error_at_;
};

// The Errc a librdkafka error code means to a client.
Errc errc_of(rd_kafka_resp_err_t e);

}  // namespace kvs::daemon::server
