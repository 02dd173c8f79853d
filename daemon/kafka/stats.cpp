// librdkafka's statistics documents, kept for the metrics endpoint; see
// stats.hpp.
#include "kafka/stats.hpp"

#include <librdkafka/rdkafka.h>

#include <map>
#include <mutex>

#include "format/layout.hpp"

namespace kvs::kafka {

namespace {

std::mutex g_mu;
std::map<std::string, ClientStats>& store() {
  static auto* s = new std::map<std::string, ClientStats>();  // outlives librdkafka's threads
  return *s;
}

int on_stats(rd_kafka_t* rk, char* json, size_t len, void*) {
  ClientStats s{rd_kafka_name(rk), std::string(json, len), format::now_unix_ns()};
  std::lock_guard lock(g_mu);
  store()[s.client] = std::move(s);
  return 0;  // librdkafka frees `json`
}

}  // namespace

void keep_stats(rd_kafka_conf_s* conf) { rd_kafka_conf_set_stats_cb(conf, on_stats); }

std::vector<ClientStats> latest_stats() {
  std::lock_guard lock(g_mu);
  std::vector<ClientStats> out;
  for (const auto& [name, s] : store()) out.push_back(s);
  return out;
}

}  // namespace kvs::kafka
