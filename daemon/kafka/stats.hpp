// librdkafka's own statistics (statistics.interval.ms): the latest JSON
// document of each client handle, kept for the metrics endpoint. The
// callback only copies the document (it runs on the thread that polls the
// handle: the apply thread for the consumer, the server's for the
// producer); it is parsed when a scrape asks for it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct rd_kafka_conf_s;

namespace kvs::kafka {

// Makes a handle built from `conf` keep its statistics (a no-op while
// statistics.interval.ms is 0, librdkafka's default).
void keep_stats(rd_kafka_conf_s* conf);

struct ClientStats {
  std::string client;  // rd_kafka_name(): "rdkafka#consumer-1", ...
  std::string json;
  uint64_t received_unix_ns = 0;
};

// The latest document of every handle that sent one (shared: taking them
// copies no document under the lock the callback takes).
std::vector<std::shared_ptr<const ClientStats>> latest_stats();

// statistics.interval.ms for kvsd's own handles when [kafka] does not set
// it and the metrics endpoint is on.
inline constexpr const char* kStatsIntervalMs = "10000";

}  // namespace kvs::kafka
