#include "kafka/embedded_kafka.hpp"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <vector>

#include "kafka/rdkafka_log.hpp"

namespace kvs::kafka {

Result<std::unique_ptr<EmbeddedKafka>> EmbeddedKafka::start(int brokers) {
  if (brokers < 1 || brokers > 16) {
    return make_error(Errc::kInvalidArgument,
                      "embedded Kafka: brokers = " + std::to_string(brokers) + ", must be 1..16");
  }
  std::unique_ptr<EmbeddedKafka> k(new EmbeddedKafka());
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  kafka::route_rdkafka_logs(conf);
  // The host handle never connects anywhere: it only owns the mock cluster.
  rd_kafka_conf_set(conf, "bootstrap.servers", "", err, sizeof err);
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
  k->host_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (k->host_ == nullptr) {
    rd_kafka_conf_destroy(conf);
    return make_error(Errc::kSystem, std::string("embedded Kafka: rd_kafka_new: ") + err);
  }
  k->cluster_ = rd_kafka_mock_cluster_new(k->host_, brokers);
  if (k->cluster_ == nullptr) {
    return make_error(Errc::kSystem, "embedded Kafka: could not start the mock cluster");
  }
  // Metadata up to v4, as brokers since 0.11 answer it: a client's
  // allow.auto.create.topics is then honoured. With the v0-v2 the mock
  // offers by default, it creates (4 partitions, not compacted) every topic
  // any client asks about, as a broker with auto.create.topics.enable does.
  rd_kafka_mock_set_apiversion(k->cluster_, /*Metadata*/ 3, 0, 4);
  k->bootstrap_ = rd_kafka_mock_cluster_bootstraps(k->cluster_);
  return k;
}

EmbeddedKafka::~EmbeddedKafka() {
  if (cluster_) rd_kafka_mock_cluster_destroy(cluster_);
  if (host_) rd_kafka_destroy(host_);
}

Result<void> EmbeddedKafka::create_topic(const std::string& topic, int partitions,
                                         int replication) {
  if (topic.empty() || partitions < 1) {
    return make_error(Errc::kInvalidArgument, "embedded Kafka: topic '" + topic + "' with " +
                                                  std::to_string(partitions) + " partitions");
  }
  const rd_kafka_resp_err_t e =
      rd_kafka_mock_topic_create(cluster_, topic.c_str(), partitions, replication);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return make_error(Errc::kSystem,
                      "embedded Kafka: creating topic '" + topic + "': " + rd_kafka_err2str(e));
  }
  return {};
}

Result<void> EmbeddedKafka::set_broker_down(int32_t broker_id, bool down) {
  const rd_kafka_resp_err_t e = down ? rd_kafka_mock_broker_set_down(cluster_, broker_id)
                                     : rd_kafka_mock_broker_set_up(cluster_, broker_id);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return make_error(
        Errc::kInvalidArgument,
        "embedded Kafka: broker " + std::to_string(broker_id) + ": " + rd_kafka_err2str(e));
  }
  return {};
}

Result<void> EmbeddedKafka::push_request_errors(int16_t api_key, int count, int error) {
  std::vector<rd_kafka_resp_err_t> errs(static_cast<size_t>(count),
                                        static_cast<rd_kafka_resp_err_t>(error));
  rd_kafka_mock_push_request_errors_array(cluster_, api_key, errs.size(), errs.data());
  return {};
}

}  // namespace kvs::kafka
