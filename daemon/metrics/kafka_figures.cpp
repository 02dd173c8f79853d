// librdkafka's statistics on the metrics page: per client handle, how old
// its latest document is; per broker it talks to, whether it is up, its
// round trip and its request errors. The documents are parsed here, at
// scrape time, with nlohmann::json (Debian's nlohmann-json3-dev); a
// document that does not parse is counted, never fatal.
#include <nlohmann/json.hpp>

#include "metrics/exposition.hpp"

namespace kvs::daemon::metrics {

namespace {

struct Broker {
  std::string client, name;
  bool up = false;
  double rtt_avg_s = 0, rtt_p99_s = 0;
  uint64_t errors = 0, timeouts = 0, disconnects = 0;
};

uint64_t number(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<uint64_t>() : 0;
}

// The brokers of one document; false if it does not parse.
bool brokers_of(const kafka::ClientStats& s, std::vector<Broker>* out) {
  const nlohmann::json doc = nlohmann::json::parse(s.json, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) return false;
  auto brokers = doc.find("brokers");
  if (brokers == doc.end() || !brokers->is_object()) return true;
  for (const auto& [name, b] : brokers->items()) {
    if (!b.is_object()) continue;
    // librdkafka's internal and logical brokers are not servers.
    const std::string source = b.value("source", "");
    if (source == "internal" || source == "logical") continue;
    Broker br{s.client, name, b.value("state", "") == "UP"};
    if (auto rtt = b.find("rtt"); rtt != b.end() && rtt->is_object()) {
      br.rtt_avg_s = static_cast<double>(number(*rtt, "avg")) / 1e6;  // microseconds
      br.rtt_p99_s = static_cast<double>(number(*rtt, "p99")) / 1e6;
    }
    br.errors = number(b, "txerrs") + number(b, "rxerrs");
    br.timeouts = number(b, "req_timeouts");
    br.disconnects = number(b, "disconnects");
    out->push_back(std::move(br));
  }
  return true;
}

}  // namespace

void kafka_figures(Writer& w, const std::vector<std::shared_ptr<const kafka::ClientStats>>& stats,
                   uint64_t now) {
  std::vector<Broker> brokers;
  uint64_t unreadable = 0;
  w.family("kvsd_kafka_stats_age_seconds", "gauge",
           "Age of the latest statistics document of each librdkafka client of kvsd "
           "(statistics.interval.ms).");
  for (const auto& ptr : stats) {
    const kafka::ClientStats& s = *ptr;
    const double age =
        s.received_unix_ns < now ? static_cast<double>(now - s.received_unix_ns) / 1e9 : 0.0;
    w.sample("kvsd_kafka_stats_age_seconds", {"client", s.client}, age);
    if (!brokers_of(s, &brokers)) ++unreadable;
  }
  w.family("kvsd_kafka_stats_unreadable", "gauge",
           "Latest statistics documents that did not parse as JSON.");
  w.sample("kvsd_kafka_stats_unreadable", {}, unreadable);
  auto each = [&](const char* name, const char* type, const char* help, auto value) {
    w.family(name, type, help);
    for (const Broker& b : brokers)
      w.sample(name, {"client", b.client, "broker", b.name}, value(b));
  };
  each("kvsd_kafka_broker_up", "gauge", "1 if the client's connection to the broker is up.",
       [](const Broker& b) { return uint64_t{b.up}; });
  each("kvsd_kafka_broker_rtt_average_seconds", "gauge",
       "Average round trip of requests to the broker over the last statistics interval.",
       [](const Broker& b) { return b.rtt_avg_s; });
  each("kvsd_kafka_broker_rtt_p99_seconds", "gauge",
       "99th percentile round trip of requests to the broker over the last interval.",
       [](const Broker& b) { return b.rtt_p99_s; });
  each("kvsd_kafka_broker_request_errors_total", "counter",
       "Requests to the broker that failed to be sent or whose response failed.",
       [](const Broker& b) { return b.errors; });
  each("kvsd_kafka_broker_request_timeouts_total", "counter",
       "Requests to the broker that timed out.", [](const Broker& b) { return b.timeouts; });
  each("kvsd_kafka_broker_disconnects_total", "counter", "Connections to the broker that broke.",
       [](const Broker& b) { return b.disconnects; });
}

}  // namespace kvs::daemon::metrics
