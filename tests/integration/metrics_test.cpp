// kvsd's /metrics endpoint, end to end: Debian's real Prometheus scrapes
// the real kvsd on the mock cluster and its queries give what kvsctl stats
// shows; promtool accepts the live page; the endpoint answers bad and
// hostile requests with a clear status and bounded threads while writes go
// on; an address kvsd cannot listen on leaves it serving without /metrics.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "support/http.hpp"
#include "support/kvsd_fixture.hpp"
#include "support/producer.hpp"

namespace kvs {
namespace {

class MetricsTest : public KvsdTest {
 protected:
  void SetUp() override {
    KvsdTest::SetUp();
    port_ = test::free_port();
    ASSERT_GT(port_, 0);
    metrics_listen_ = "127.0.0.1:" + std::to_string(port_);
  }
  struct Run {
    int exit_code;
    std::string out;
  };
  Run run(const std::string& cmd) {
    const std::string out = (dir_ / "cmd.out").string();
    const int st = std::system((cmd + " > '" + out + "' 2>&1 < /dev/null").c_str());
    return {WIFEXITED(st) ? WEXITSTATUS(st) : 128, test::slurp(out)};
  }
  // A field of kvsctl stats --json: the text after "key": up to , or }.
  static std::string json_number(const std::string& json, const std::string& key, size_t from = 0) {
    const size_t at = json.find("\"" + key + "\":", from);
    if (at == std::string::npos) return "absent";
    const size_t v = at + key.size() + 3;
    return json.substr(v, json.find_first_of(",}", v) - v);
  }
  static long rss_kib_of(pid_t pid) {
    const std::string s = test::slurp("/proc/" + std::to_string(pid) + "/status");
    const size_t at = s.find("VmRSS:");
    return at == std::string::npos ? -1 : std::atol(s.c_str() + at + 6);
  }
  static int threads_of(pid_t pid) {
    const std::string s = test::slurp("/proc/" + std::to_string(pid) + "/status");
    const size_t at = s.find("Threads:");
    return at == std::string::npos ? -1 : std::atoi(s.c_str() + at + 8);
  }
  int port_ = 0;
};

// Table t: 1024 keys fill it and max_memory_bytes stops its growth, so
// partition 0 holds 11 records back: a lag that stays while Prometheus
// scrapes.
TEST_F(MetricsTest, PrometheusScrapesKvsdAndItsQueriesGiveWhatKvsctlStatsShows) {
  if (::access("/usr/bin/prometheus", X_OK) != 0)
    GTEST_SKIP() << "Debian's prometheus is not installed (scripts/install-deps.sh installs it)";
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  test::Producer p(kafka_.bootstrap());
  for (int i = 0; i < 1024; ++i) p.send(topic_, 0, "k" + std::to_string(i), "v");
  for (int i = 0; i < 11; ++i) p.send(topic_, 0, "waits" + std::to_string(i), "v");
  for (int i = 0; i < 5; ++i) p.send(topic_, 1, "k" + std::to_string(i), "w");
  ASSERT_TRUE(p.flush());
  const uint64_t limit = format::geometry(1024, 256, 4 << 20, 65536).segment_bytes;
  const std::string config = write_config();
  {
    std::string text = test::slurp(config);
    const std::string sizes = "capacity = 65536\nmemory_limit_bytes = 33554432\n";
    const size_t at = text.find(sizes);
    ASSERT_NE(at, std::string::npos) << text;
    text.replace(at, sizes.size(),
                 "capacity = 1024\nmemory_limit_bytes = 4194304\nmax_memory_bytes = " +
                     std::to_string(limit) + "\n");
    std::ofstream(config) << text;
  }
  auto kvsd = start_kvsd(config);
  Table t = open_table();
  auto held = [&](uint32_t partitions, uint64_t backlog) {
    return test::wait_until(
        [&] {
          kvs_table_stats s{};
          return kvs_stat(t.native(), &s) == KVS_OK && s.held_partitions == partitions &&
                 s.backlog == backlog;
        },
        30s);
  };
  ASSERT_TRUE(held(1, 11)) << log();
  // One write acknowledged by Kafka (not VISIBLE: its partition may wait).
  std::optional<Client> c;
  ASSERT_TRUE(test::wait_until([&] {
    auto r = Client::connect(socket_path());
    if (r) c.emplace(std::move(*r));
    return r.has_value();
  })) << log();
  auto tok = c->put("t", "written", "through kvsd");
  ASSERT_TRUE(tok) << tok.error().message;
  // Its key is new: it waits for room too, in partition 0 behind the
  // others or alone in partition 1.
  const bool in_p0 = tok->partition == 0;
  ASSERT_TRUE(held(in_p0 ? 1 : 2, 12)) << log();
  const std::string kvsctl = "'" + test::helper("../kvsctl") + "' --config '" + config + "' ";
  const Run stats = run(kvsctl + "stats --json");
  ASSERT_EQ(stats.exit_code, 0) << stats.out;
  const std::string entries = json_number(stats.out, "entries");
  const std::string lag0 = json_number(stats.out, "lag", stats.out.find("\"partition\":0"));
  const std::string lag1 = json_number(stats.out, "lag", stats.out.find("\"partition\":1"));
  EXPECT_EQ(entries, "1024");
  EXPECT_EQ(lag0, in_p0 ? "12" : "11");
  EXPECT_EQ(lag1, in_p0 ? "0" : "1");

  // The live page passes promtool.
  const test::HttpReply page = test::http_get(port_, "/metrics");
  ASSERT_EQ(page.status, 200) << page.head;
  std::ofstream((dir_ / "page.txt").string()) << page.body;
  const Run lint = run("promtool check metrics < '" + (dir_ / "page.txt").string() + "'");
  EXPECT_EQ(lint.exit_code, 0) << lint.out;

  // Prometheus scrapes it every 200 ms; its API answers queries.
  const int prom_port = test::free_port();
  std::ofstream((dir_ / "prometheus.yml").string())
      << "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
      << "scrape_configs:\n  - job_name: kvsd\n    static_configs:\n"
      << "      - targets: ['127.0.0.1:" << port_ << "']\n";
  test::Child prometheus(
      {"/usr/bin/prometheus", "--config.file=" + (dir_ / "prometheus.yml").string(),
       "--storage.tsdb.path=" + (dir_ / "tsdb").string(),
       "--web.listen-address=127.0.0.1:" + std::to_string(prom_port), "--log.level=warn"},
      (dir_ / "prometheus.log").string());
  auto query = [&](const std::string& promql) {
    std::string q;
    for (char c : promql) {
      if (std::isalnum(static_cast<unsigned char>(c)) || c == '_') {
        q += c;
      } else {
        char hex[4];
        std::snprintf(hex, sizeof hex, "%%%02X", static_cast<unsigned char>(c));
        q += hex;
      }
    }
    const test::HttpReply r = test::http_get(prom_port, "/api/v1/query?query=" + q, 2s);
    // {"status":"success","data":{"resultType":"vector","result":[{...,"value":[t,"v"]}]}}
    const size_t at = r.body.find("\"value\":[");
    if (at == std::string::npos) return std::string("none: ") + r.body;
    const size_t v = r.body.find(",\"", at) + 2;
    return r.body.substr(v, r.body.find('"', v) - v);
  };
  std::string got;
  EXPECT_TRUE(test::wait_until(
      [&] { return (got = query("kvs_table_entries{table=\"t\"}")) == entries; }, 60s))
      << got << "\n"
      << test::slurp((dir_ / "prometheus.log").string());
  EXPECT_EQ(query("kvs_partition_lag_records{table=\"t\",partition=\"0\"}"), lag0);
  EXPECT_EQ(query("kvs_partition_lag_records{table=\"t\",partition=\"1\"}"), lag1);
  EXPECT_EQ(query("sum(kvs_partition_lag_records{table=\"t\"})"),
            json_number(stats.out, "backlog"));
  EXPECT_EQ(query("kvs_table_hold_reason_info{table=\"t\",reason=\"limit\"}"), "1");
  EXPECT_EQ(query("kvs_table_ready{table=\"t\"}"), "0");
  EXPECT_EQ(query("up{job=\"kvsd\"}"), "1");
  EXPECT_EQ(query("kvsd_writes_acknowledged_total"), "1");
  EXPECT_EQ(query("kvsd_write_acknowledged_seconds_count"), "1");
  EXPECT_EQ(query("kvsd_write_failures_total{code=\"KVS_ETIMEDOUT\"}"), "0");
  EXPECT_EQ(query("kvs_table_records_applied_total{table=\"t\"}"), "1029");
  EXPECT_EQ(query("kvs_table_held_partitions{table=\"t\"}"), in_p0 ? "1" : "2");
  prometheus.kill(SIGTERM);
  EXPECT_EQ(prometheus.wait_for(30s), 0);
}

// Bad methods and paths, malformed, oversized and slow requests each get
// a clear status or are closed in bounded time; 300 connections that send
// nothing leave kvsd's threads as they were and a VISIBLE write as fast
// as before, and once they go, /metrics answers again.
TEST_F(MetricsTest, BadAndHostileRequestsGetAClearStatusAndNeverSlowWrites) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  EXPECT_NE(log().find("serving Prometheus metrics on http://" + metrics_listen_ +
                       "/metrics (loopback only)"),
            std::string::npos)
      << log();
  auto r = test::http_get(port_, "/");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, "kvsd serves /metrics only\n");
  r = test::http_raw(port_, "DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(r.status, 405);
  EXPECT_NE(r.head.find("Allow: GET, HEAD"), std::string::npos) << r.head;
  EXPECT_EQ(r.body, "/metrics answers GET and HEAD, not DELETE\n");
  r = test::http_raw(port_, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body.empty());
  EXPECT_EQ(test::http_raw(port_, "GARBAGE\r\n\r\n").status, 400);
  // Past max_request_size (16 KiB): refused at once.
  r = test::http_raw(port_,
                     "GET /metrics HTTP/1.1\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n");
  EXPECT_EQ(r.status, 400);
  // Half a request: closed after request_timeout_ms (5 s).
  const auto slow_start = std::chrono::steady_clock::now();
  r = test::http_raw(port_, "GET /metrics HTTP/1.1\r\n", 20s);
  EXPECT_LT(std::chrono::steady_clock::now() - slow_start, 15s);
  EXPECT_NE(r.status, 200);

  auto c = Client::connect(socket_path());
  ASSERT_TRUE(c) << c.error().message;
  auto timed_put = [&](const std::string& key) {
    const auto start = std::chrono::steady_clock::now();
    auto w = c->put("t", key, "v", WriteOptions{10000ms, true});
    EXPECT_TRUE(w) << w.error().message;
    return std::chrono::steady_clock::now() - start;
  };
  (void)timed_put("warm");
  const int threads = threads_of(kvsd->pid());
  const long rss_before = rss_kib_of(kvsd->pid());
  std::vector<int> flood;
  for (int i = 0; i < 300; ++i) {
    const int fd = test::tcp_connect(port_, 20ms);
    if (fd >= 0) flood.push_back(fd);
  }
  // The endpoint takes a bounded number (its backlog, queue and workers).
  EXPECT_GE(flood.size(), 64u);
  EXPECT_LT(flood.size(), 300u);
  for (int i = 0; i < 20; ++i) {
    EXPECT_LT(timed_put("during" + std::to_string(i)), 2s) << "a write waited for the flood";
  }
  EXPECT_EQ(threads_of(kvsd->pid()), threads) << "the flood made kvsd start threads";
  // Each connection the endpoint took holds a socket and a small buffer.
  EXPECT_LT(rss_kib_of(kvsd->pid()) - rss_before, 16 * 1024) << "KiB more during the flood";
  for (int fd : flood) ::close(fd);
  std::string page;
  EXPECT_TRUE(test::wait_until(
      [&] {
        const auto got = test::http_get(port_, "/metrics", 5s);
        page = got.body;
        return got.status == 200;
      },
      60s));
  EXPECT_NE(page.find("kvsd_writes_acknowledged_total "), std::string::npos) << page;
  EXPECT_EQ(kvsd->running(), true);
}

// An address kvsd cannot listen on (here: taken) is logged; kvsd serves
// its tables and writes without /metrics.
TEST_F(MetricsTest, AnAddressInUseLeavesKvsdServingWithoutMetrics) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port_));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  auto c = Client::connect(socket_path());
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_TRUE(c->put("t", "still", "served", WriteOptions{10000ms, true}));
  EXPECT_EQ(*t.get_copy("still"), "served");
  EXPECT_NE(log().find("metrics_listen: cannot listen on " + metrics_listen_), std::string::npos)
      << log();
  EXPECT_NE(log().find("/metrics is off"), std::string::npos) << log();
  ::close(fd);
}

// librdkafka's statistics reach the page: the consumer and the producer
// each show the mock cluster's broker up, with its round trip.
TEST_F(MetricsTest, LibrdkafkasStatisticsShowTheBrokersKvsdTalksTo) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  const std::string config = write_config();
  {
    std::string text = test::slurp(config);
    const size_t at = text.find("[kafka]\n");
    ASSERT_NE(at, std::string::npos);
    text.insert(at + 8, "\"statistics.interval.ms\" = 200\n");
    std::ofstream(config) << text;
  }
  auto kvsd = start_kvsd(config);
  Table t = open_ready();
  std::string page;
  // A broker of the client's is up (it connects to the ones it needs).
  auto up_for = [&](const std::string& client) {
    const std::string series = "kvsd_kafka_broker_up{client=\"rdkafka#" + client;
    for (size_t at = page.find(series); at != std::string::npos; at = page.find(series, at + 1)) {
      if (page.compare(page.find('}', at) + 1, 3, " 1\n") == 0) return true;
    }
    return false;
  };
  EXPECT_TRUE(test::wait_until(
      [&] {
        page = test::http_get(port_, "/metrics", 5s).body;
        return up_for("consumer") && up_for("producer");
      },
      30s))
      << page;
  EXPECT_NE(page.find("kvsd_kafka_broker_rtt_average_seconds{client=\"rdkafka#consumer"),
            std::string::npos);
  EXPECT_NE(page.find("kvsd_kafka_stats_unreadable 0\n"), std::string::npos) << page;
}

}  // namespace
}  // namespace kvs
