#include "kafka/properties.hpp"

#include <librdkafka/rdkafka.h>

namespace kvs::kafka {

const std::vector<Override>& consumer_overrides() {
  static const std::vector<Override> o = {
      {"isolation.level", "read_committed", "aborted records never reach the table"},
      {"enable.partition.eof", "true", "READY across compacted gaps and control records"},
      {"enable.auto.commit", "false", "positions live in the segment"},
      {"enable.auto.offset.store", "false", "positions live in the segment"},
      {"auto.offset.reset", "error", "a lost offset is a rebuild, never a skip"},
      {"group.id", "kvsd", "required by librdkafka; kvsd never joins the group"},
  };
  return o;
}

std::vector<Override> producer_overrides(uint32_t write_timeout_ms) {
  return {
      {"enable.idempotence", "true", "a retry never duplicates a write"},
      {"acks", "all", "a write is acknowledged once every in-sync replica has it"},
      {"partitioner", "murmur2_random", "keys land where Java's producers put them"},
      {"message.timeout.ms", std::to_string(write_timeout_ms), "set write_timeout_ms instead"},
      {"allow.auto.create.topics", "false",
       "a write never creates a table's topic (a broker would make it uncompacted)"},
  };
}

namespace {
// librdkafka's aliases of the keys above, and values that mean the same.
std::string canonical_key(const std::string& k) {
  if (k == "request.required.acks") return "acks";
  if (k == "delivery.timeout.ms") return "message.timeout.ms";
  return k;
}
bool same_value(const std::string& key, const std::string& a, const std::string& b) {
  if (key == "acks") return (a == "all" || a == "-1") && (b == "all" || b == "-1");
  return a == b;
}
}  // namespace

Result<std::vector<std::string>> check_properties(const config::Config& c) {
  std::vector<std::string> warnings;
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  Result<std::vector<std::string>> out = std::vector<std::string>{};
  for (const auto& [k, v] : c.kafka) {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      out = make_error(Errc::kInvalidArgument,
                       c.at("kafka." + k) + " = \"" + v + "\": librdkafka: " + err);
      break;
    }
    std::vector<Override> all = consumer_overrides();
    for (auto& o : producer_overrides(c.write_timeout_ms)) all.push_back(o);
    for (const auto& o : all) {
      if (canonical_key(k) == o.key && !same_value(o.key, v, o.value)) {
        out->push_back(c.at("kafka." + k) + " = \"" + v + "\" is overridden: kvsd uses " + o.key +
                       "=" + o.value + " (" + o.why + ")");
      }
    }
  }
  rd_kafka_conf_destroy(conf);
  return out;
}

}  // namespace kvs::kafka
