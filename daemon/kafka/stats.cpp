// librdkafka's statistics documents, kept for the metrics endpoint; see
// stats.hpp.
#include "kafka/stats.hpp"

#include <librdkafka/rdkafka.h>

#include <map>
#include <mutex>
#include <utility>

#include "format/layout.hpp"

namespace kvs::kafka {

namespace {

std::mutex g_mu;
using Store = std::map<std::string, std::shared_ptr<const ClientStats>>;
Store& store() {
  static auto* s = new Store();  // outlives librdkafka's threads
  return *s;
}

int on_stats(rd_kafka_t* rk, char* json, size_t len, void*) {
  auto s = std::make_shared<const ClientStats>(
      ClientStats{rd_kafka_name(rk), std::string(json, len), format::now_unix_ns()});
  std::shared_ptr<const ClientStats> old;  // freed outside the lock
  std::lock_guard lock(g_mu);
  old = std::exchange(store()[s->client], s);
  return 0;  // librdkafka frees `json`
}

}  // namespace

void keep_stats(rd_kafka_conf_s* conf) { rd_kafka_conf_set_stats_cb(conf, on_stats); }

std::vector<std::shared_ptr<const ClientStats>> latest_stats() {
  std::lock_guard lock(g_mu);
  std::vector<std::shared_ptr<const ClientStats>> out;
  for (const auto& [name, s] : store()) out.push_back(s);
  return out;
}

}  // namespace kvs::kafka
