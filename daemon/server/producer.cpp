#include "server/producer.hpp"

#include <algorithm>
#include <utility>

#include "kafka/properties.hpp"
#include "kafka/rdkafka_log.hpp"
#include "kafka/shutdown.hpp"
#include "kafka/stats.hpp"
#include "log.hpp"

namespace kvs::daemon::server {

Errc errc_of(rd_kafka_resp_err_t e) {
  switch (e) {
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
      return Errc::kTimeout;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
      return Errc::kTooLarge;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
      return Errc::kPermission;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
      return Errc::kQueueFull;
    default:
      return Errc::kKafka;
  }
}

Producer::~Producer() {
  if (tables_ != nullptr) {
    for (auto& t : *tables_) {
      if (t->rkt) rd_kafka_topic_destroy(t->rkt);
      t->rkt = nullptr;
    }
  }
  kafka::destroy_within(std::exchange(rk_, nullptr), kafka::kDestroyLimit, "producer");
}

void Producer::on_delivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
  static_cast<Producer*>(opaque)->sink_.delivered(m);
}

void Producer::on_error(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
  auto* p = static_cast<Producer*>(opaque);
  p->last_kafka_error_ = reason;
  p->last_kafka_error_at_ = clock::now();
  char fatal[512];
  if (err == RD_KAFKA_RESP_ERR__FATAL &&
      rd_kafka_fatal_error(rk, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    KVS_LOG_ERROR("Kafka producer: fatal error: %s; writes fail until kvsd restarts", fatal);
    return;
  }
  if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
    KVS_LOG_WARN("Kafka producer: %s; writes wait up to write_timeout_ms", reason);
  } else {
    KVS_LOG_DEBUG("Kafka producer: %s", reason);
  }
}

// Consumer-only keys of [kafka] would make the producer log a warning each.
static bool consumer_only(const std::string& k) {
  return k == "isolation.level" || k.rfind("queued.", 0) == 0 || k.rfind("fetch.", 0) == 0 ||
         k == "enable.partition.eof" || k == "auto.offset.reset" || k == "group.id" ||
         k.rfind("enable.auto.", 0) == 0 || k == "auto.commit.interval.ms" ||
         k == "session.timeout.ms" || k == "max.poll.interval.ms";
}

Result<void> Producer::create(const std::vector<std::pair<std::string, std::string>>& kafka,
                              uint32_t max_frame_bytes, std::vector<std::unique_ptr<Table>>& tables,
                              int wake_fd) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  kafka::route_rdkafka_logs(conf);
  kafka::keep_stats(conf);
  auto set = [&](const std::string& k, const std::string& v, const char* where) -> Result<void> {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      return make_error(Errc::kInvalidArgument,
                        std::string(where) + k + " = \"" + v + "\": " + err);
    }
    return {};
  };
  // Defaults that [kafka] may override: a socket write is usually waited
  // for, so batch briefly; leave room for the largest record a table allows.
  const std::pair<std::string, std::string> defaults[] = {
      {"linger.ms", "1"},
      {"message.max.bytes", std::to_string(std::max<uint32_t>(max_frame_bytes, 1000000))},
      {"queue.buffering.max.kbytes", "65536"},
      {"reconnect.backoff.max.ms", "1000"},  // as the consumer's (kafka/consumer.cpp)
  };
  Result<void> ok;
  for (const auto& [k, v] : defaults) {
    if (ok) ok = set(k, v, "librdkafka ");
  }
  for (const auto& [k, v] : kafka) {
    if (ok && !consumer_only(k)) ok = set(k, v, "[kafka] ");
  }
  // The contract, whatever [kafka] says: durable, never duplicated by a
  // retry, partitioned as Java's default partitioner does.
  for (const auto& o : kafka::producer_overrides(cfg_.write_timeout_ms)) {
    if (ok) ok = set(o.key, o.value, "librdkafka ");
  }
  if (!ok) {
    rd_kafka_conf_destroy(conf);
    return ok;
  }
  rd_kafka_conf_set_opaque(conf, this);
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_error_cb(conf, on_error);
  rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (rk_ == nullptr) {
    rd_kafka_conf_destroy(conf);
    return make_error(Errc::kInvalidArgument, std::string("[kafka] (producer): ") + err);
  }
  // Delivery reports land on the main queue; librdkafka writes a byte to
  // wake_fd when it becomes non-empty, which wakes epoll.
  rd_kafka_queue_t* mq = rd_kafka_queue_get_main(rk_);
  rd_kafka_queue_io_event_enable(mq, wake_fd, "1", 1);
  rd_kafka_queue_destroy(mq);
  tables_ = &tables;
  for (auto& t : tables) t->rkt = rd_kafka_topic_new(rk_, t->topic.c_str(), nullptr);
  return {};
}

int32_t Producer::partition_for(const Table& t, std::string_view key) {
  static const char kEmpty[1] = {0};
  const int32_t n = t.partitions.load(std::memory_order_relaxed);
  if (n <= 0) return RD_KAFKA_PARTITION_UA;
  // librdkafka's own partitioner would use its metadata cache, which a
  // producer refreshes only every topic.metadata.refresh.interval.ms (5 min
  // by default): for that long after partitions are added, kvsd's writes
  // of a key and a Java producer's would land in different partitions.
  return rd_kafka_msg_partitioner_murmur2_random(nullptr, key.empty() ? kEmpty : key.data(),
                                                 key.size(), n, nullptr, nullptr);
}

void Producer::produce(Request& r, uint32_t index, std::string_view key,
                       std::optional<std::string_view> value) {
  // An empty key or value is still a key or value: never hand librdkafka a
  // null pointer for it (null value = tombstone).
  static const char kEmpty[1] = {0};
  if (staged_table_ != r.table) send_staged();
  staged_table_ = r.table;
  rd_kafka_message_t m{};
  m.payload = value ? const_cast<char*>(value->empty() ? kEmpty : value->data()) : nullptr;
  m.len = value ? value->size() : 0;
  m.key = const_cast<char*>(key.empty() ? kEmpty : key.data());
  m.key_len = key.size();
  m.partition = partition_for(*r.table, key);
  m._private = &r.refs[index];
  ++r.outstanding;
  staged_.push_back(m);
}

void Producer::send_staged() {
  if (staged_.empty()) return;
  // One call for the lot: librdkafka takes its topic lock and reads the
  // clocks once per call instead of once per record (per record, that was
  // about 15% of this thread at full rate). Records keep their order: when
  // the queue is full, this record and every later one of the call fail
  // with QUEUE_FULL (librdkafka stops enqueueing at the first), so parking
  // them in order keeps each partition's order.
  rd_kafka_produce_batch(staged_table_->rkt, RD_KAFKA_PARTITION_UA,
                         RD_KAFKA_MSG_F_COPY | RD_KAFKA_MSG_F_PARTITION, staged_.data(),
                         static_cast<int>(staged_.size()));
  for (const rd_kafka_message_t& m : staged_) {
    if (m.err == RD_KAFKA_RESP_ERR_NO_ERROR) continue;
    auto* ref = static_cast<MsgRef*>(m._private);
    Request& r = *ref->req;
    --r.outstanding;
    staged_failed_.push_back(&r);
    if (m.err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      // Kept until the queue has room; meanwhile no connection is read.
      parked_.push_back({{r.slot, r.seq},
                         ref->index,
                         std::string(static_cast<const char*>(m.key), m.key_len),
                         m.payload != nullptr ? std::optional<std::string>(std::string(
                                                    static_cast<const char*>(m.payload), m.len))
                                              : std::nullopt});
      ++r.parked;
      ++n_queue_full_;
      continue;
    }
    sink_.refused(r, ref->index, errc_of(m.err),
                  std::string("Kafka refused the record for ") + r.table->topic + ": " +
                      rd_kafka_err2str(m.err));
  }
  staged_.clear();
  staged_table_ = nullptr;
  for (Request* r : staged_failed_) sink_.release(*r);  // after the loop: r stays valid in it
  staged_failed_.clear();
}

bool Producer::retry_parked() {
  if (parked_.empty()) return false;
  while (!parked_.empty()) {
    Request& r = *sink_.find(parked_.front().req);  // parked requests are never freed
    Parked mine = std::move(parked_.front());
    parked_.pop_front();
    --r.parked;
    if (r.answered) {
      sink_.release(r);
      continue;
    }
    const size_t before = parked_.size();
    produce(r, mine.index, mine.key,
            mine.value ? std::optional<std::string_view>(*mine.value) : std::nullopt);
    send_staged();
    if (parked_.size() > before) {
      // Still full (send_staged() parked it at the back): keep the order and
      // try again after the next delivery reports.
      parked_.push_front(std::move(parked_.back()));
      parked_.pop_back();
      return false;
    }
    sink_.release(r);
  }
  return true;
}

void Producer::purge() {
  rd_kafka_purge(rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
  rd_kafka_poll(rk_, 0);
}

std::string Producer::no_ack_message(uint32_t timeout_ms) const {
  std::string why = "no acknowledgement from Kafka within " +
                    (timeout_ms == cfg_.write_timeout_ms ? std::string("write_timeout_ms = ")
                                                         : std::string("the request's ")) +
                    std::to_string(timeout_ms) + " ms";
  if (!last_kafka_error_.empty() &&
      clock::now() - last_kafka_error_at_ < std::chrono::milliseconds(cfg_.write_timeout_ms)) {
    why += " (brokers unreachable: " + last_kafka_error_ + ")";
  }
  return why;
}

}  // namespace kvs::daemon::server
