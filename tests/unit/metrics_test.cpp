// The metrics page (daemon/metrics/exposition.hpp) from a real table: its
// samples equal what kvs_stat and the offsets say, label values are
// escaped, and Prometheus's own promtool accepts the page.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include "metrics/exposition.hpp"
#include "support/test_support.hpp"
#include "support/writer_support.hpp"

namespace kvs {
namespace {

using daemon::SnapshotFigures;
using daemon::SnapshotStatus;
using daemon::metrics::render;
using daemon::metrics::TableSource;

// The value of the sample whose line starts with `series` + " ".
std::string sample(const std::string& page, const std::string& series) {
  const size_t at = page.find("\n" + series + " ");
  if (at == std::string::npos) return "absent";
  const size_t from = at + series.size() + 2;
  return page.substr(from, page.find('\n', from) - from);
}

class MetricsPageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriterOptions o;
    o.table = "t";
    o.shm_prefix = shm_.prefix();
    o.capacity = 1024;
    o.arena_bytes = 1 << 20;
    o.reader_slots = 16;
    o.max_key_bytes = 256;
    o.max_value_bytes = 4096;
    writer_ = test::open_writer(o);
    ASSERT_TRUE(writer_);
    ASSERT_TRUE(writer_->set_partition_count(2));
    for (int i = 0; i < 40; ++i) {
      const uint32_t p = i % 2;
      const std::string key = "k" + std::to_string(i);
      ASSERT_TRUE(writer_->apply(key, std::string_view("v"), format::Origin{1, p}, i / 2));
      writer_->record_applied(p, i / 2, 1, key);
    }
    ASSERT_TRUE(writer_->erase("k0"));
    writer_->set_high_watermark(1, 50);
    kvs_open_options opts{shm_.prefix().c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
    ASSERT_EQ(kvs_open("t", &opts, &table_), KVS_OK) << kvs_last_error();
  }
  void TearDown() override { kvs_close(table_); }

  test::ShmScope shm_;
  std::unique_ptr<TableWriter> writer_;
  kvs_table* table_ = nullptr;
};

TEST_F(MetricsPageTest, SamplesEqualTheSegmentsFigures) {
  daemon::server::Counters counters;
  counters.writes_acked = 7;
  counters.connections = 3;
  daemon::server::WriteStats writes;
  writes.count_error(KVS_ETIMEDOUT);
  writes.count_error(KVS_ETIMEDOUT);
  writes.count_error(KVS_EKAFKA);
  writes.acked.observe(300'000);           // 0.3 ms
  writes.acked.observe(40'000'000);        // 40 ms
  writes.visible.observe(20'000'000'000);  // 20 s: only +Inf
  daemon::metrics::Board board;
  board.push_back(std::make_unique<daemon::metrics::TableBoard>(4));
  board[0]->records_applied = 41;
  board[0]->rebuilds = 2;
  board[0]->partitions = 2;
  board[0]->oldest_unapplied_ns[1] = format::now_unix_ns() - 3'000'000'000ull;
  const std::string page = render({TableSource{"t", "topic", 123, table_}},
                                  {counters, &writes, &board, nullptr, {}, "9.9.9"});
  kvs_table_stats s{};
  ASSERT_EQ(kvs_stat(table_, &s), KVS_OK);
  EXPECT_EQ(sample(page, "kvs_table_entries{table=\"t\"}"), std::to_string(s.entries)) << page;
  EXPECT_EQ(s.entries, 39u);
  EXPECT_EQ(sample(page, "kvs_table_puts_total{table=\"t\"}"), "40");
  EXPECT_EQ(sample(page, "kvs_table_erases_total{table=\"t\"}"), "1");
  EXPECT_EQ(sample(page, "kvs_table_max_memory_bytes{table=\"t\"}"), "123");
  EXPECT_EQ(sample(page, "kvs_table_ready{table=\"t\"}"), "0");
  EXPECT_EQ(sample(page, "kvs_partition_applied_offset{table=\"t\",partition=\"1\"}"), "20");
  EXPECT_EQ(sample(page, "kvs_partition_lag_records{table=\"t\",partition=\"1\"}"), "30");
  EXPECT_EQ(sample(page, "kvs_partition_lag_records{table=\"t\",partition=\"0\"}"), "0");
  EXPECT_EQ(sample(page, "kvs_table_backlog_records{table=\"t\"}"), "30");
  EXPECT_EQ(sample(page, "kvsd_writes_acknowledged_total"), "7");
  EXPECT_EQ(sample(page, "kvsd_connections"), "3");
  EXPECT_EQ(sample(page, "kvsd_info{version=\"9.9.9\"}"), "1");
  kvs_digest d{};
  ASSERT_EQ(kvs_table_digest(table_, &d), KVS_OK);
  EXPECT_EQ(sample(page, "kvs_table_digest_upper_half{table=\"t\"}"),
            std::to_string(d.digest >> 32));
  EXPECT_EQ(sample(page, "kvs_table_digest_lower_half{table=\"t\"}"),
            std::to_string(d.digest & 0xffffffffu));
  // No snapshot yet: no age to show; the failure counter is there.
  EXPECT_EQ(sample(page, "kvs_table_snapshot_age_seconds{table=\"t\"}"), "absent");
  EXPECT_EQ(sample(page, "kvs_table_snapshot_failures_total{table=\"t\"}"), "0");
  // From the apply thread's board.
  EXPECT_EQ(sample(page, "kvs_table_records_applied_total{table=\"t\"}"), "41");
  EXPECT_EQ(sample(page, "kvs_table_rebuilds_total{table=\"t\"}"), "2");
  EXPECT_EQ(sample(page, "kvs_table_growths_total{table=\"t\"}"), "0");
  const double age = std::stod(
      sample(page, "kvs_partition_oldest_unapplied_age_seconds{table=\"t\",partition=\"1\"}"));
  EXPECT_GE(age, 3.0);
  EXPECT_LT(age, 60.0);
  EXPECT_EQ(sample(page, "kvs_partition_oldest_unapplied_age_seconds{table=\"t\",partition=\"0\"}"),
            "0");
  // Writes: failures by code, latency histograms (cumulative buckets).
  EXPECT_EQ(sample(page, "kvsd_write_failures_total{code=\"KVS_ETIMEDOUT\"}"), "2");
  EXPECT_EQ(sample(page, "kvsd_write_failures_total{code=\"KVS_EKAFKA\"}"), "1");
  EXPECT_EQ(sample(page, "kvsd_write_failures_total{code=\"KVS_EQUEUE\"}"), "0");
  EXPECT_EQ(sample(page, "kvsd_write_acknowledged_seconds_bucket{le=\"0.0005\"}"), "1");
  EXPECT_EQ(sample(page, "kvsd_write_acknowledged_seconds_bucket{le=\"0.025\"}"), "1");
  EXPECT_EQ(sample(page, "kvsd_write_acknowledged_seconds_bucket{le=\"0.05\"}"), "2");
  EXPECT_EQ(sample(page, "kvsd_write_acknowledged_seconds_bucket{le=\"+Inf\"}"), "2");
  EXPECT_EQ(sample(page, "kvsd_write_acknowledged_seconds_count"), "2");
  EXPECT_EQ(sample(page, "kvsd_write_acknowledged_seconds_sum"), "0.0403");
  EXPECT_EQ(sample(page, "kvsd_write_visible_seconds_bucket{le=\"10\"}"), "0");
  EXPECT_EQ(sample(page, "kvsd_write_visible_seconds_bucket{le=\"+Inf\"}"), "1");
}

TEST_F(MetricsPageTest, LabelValuesAreEscapedAndATableNotThereYetIsLeftOut) {
  EXPECT_EQ(daemon::metrics::escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  const std::string page =
      render({TableSource{"later", "x", 0, nullptr}}, {{}, nullptr, nullptr, nullptr, {}, "1"});
  EXPECT_EQ(sample(page, "kvs_table_entries{table=\"later\"}"), "absent") << page;
  EXPECT_EQ(page.find("kvs_partition_lag_records{table=\"later\""), std::string::npos) << page;
  EXPECT_NE(page.find("# TYPE kvs_table_entries gauge"), std::string::npos);
}

// librdkafka's statistics documents (the fields of its STATISTICS.md):
// brokers that are servers become samples; one that does not parse is
// counted, not fatal.
TEST(MetricsKafkaStatsTest, BrokersOfEachClientAreShownAndUnreadableDocumentsCounted) {
  const std::string doc = R"({"name":"rdkafka#consumer-1","type":"consumer","brokers":{
    "127.0.0.1:9092/1":{"name":"127.0.0.1:9092/1","nodeid":1,"source":"learned","state":"UP",
      "txerrs":2,"rxerrs":1,"req_timeouts":4,"disconnects":5,
      "rtt":{"min":100,"max":9000,"avg":1500,"p50":1200,"p99":8000}},
    ":0/internal":{"name":":0/internal","nodeid":-1,"source":"internal","state":"UP"},
    "127.0.0.1:9093/2":{"name":"127.0.0.1:9093/2","nodeid":2,"source":"learned","state":"DOWN"}}})";
  const uint64_t now = format::now_unix_ns();
  std::vector<std::shared_ptr<const kafka::ClientStats>> stats = {
      std::make_shared<const kafka::ClientStats>(
          kafka::ClientStats{"rdkafka#consumer-1", doc, now - 2'000'000'000}),
      std::make_shared<const kafka::ClientStats>(
          kafka::ClientStats{"rdkafka#producer-2", "{not json", now})};
  daemon::metrics::Writer w;
  daemon::metrics::kafka_figures(w, stats, now);
  const std::string page = w.take();
  const std::string b1 = "{client=\"rdkafka#consumer-1\",broker=\"127.0.0.1:9092/1\"}";
  EXPECT_EQ(sample(page, "kvsd_kafka_broker_up" + b1), "1") << page;
  EXPECT_EQ(sample(page, "kvsd_kafka_broker_rtt_average_seconds" + b1), "0.0015");
  EXPECT_EQ(sample(page, "kvsd_kafka_broker_rtt_p99_seconds" + b1), "0.008");
  EXPECT_EQ(sample(page, "kvsd_kafka_broker_request_errors_total" + b1), "3");
  EXPECT_EQ(sample(page, "kvsd_kafka_broker_request_timeouts_total" + b1), "4");
  EXPECT_EQ(sample(page, "kvsd_kafka_broker_disconnects_total" + b1), "5");
  EXPECT_EQ(sample(page,
                   "kvsd_kafka_broker_up{client=\"rdkafka#consumer-1\",broker=\"127.0.0.1:"
                   "9093/2\"}"),
            "0");
  EXPECT_EQ(page.find(":0/internal"), std::string::npos);
  EXPECT_EQ(sample(page, "kvsd_kafka_stats_age_seconds{client=\"rdkafka#consumer-1\"}"), "2");
  EXPECT_EQ(sample(page, "kvsd_kafka_stats_unreadable"), "1");
}

// What the page reads is written by other threads as it renders: the
// server thread's counters and write statistics, the apply thread's board,
// the writer's segment. Run under ThreadSanitizer in CI; here the page
// stays whole and its counters never go back.
TEST_F(MetricsPageTest, RenderingWhileEveryPublisherWritesIsRaceFreeAndMonotonic) {
  daemon::server::PublishedCounters published;
  daemon::server::WriteStats writes;
  daemon::metrics::Board board;
  board.push_back(std::make_unique<daemon::metrics::TableBoard>(2));
  std::atomic<bool> stop{false};
  std::thread server([&] {
    daemon::server::Counters c;
    for (uint64_t i = 1; !stop.load(); ++i) {
      c.writes_acked = i;
      published.publish(c);
      writes.acked.observe(i * 1000);
      if (i % 7 == 0) writes.count_error(KVS_ETIMEDOUT);
    }
  });
  std::thread apply([&] {
    for (uint64_t i = 1; !stop.load(); ++i) {
      daemon::metrics::store(board[0]->records_applied, i);
      daemon::metrics::store(board[0]->oldest_unapplied_ns[1], i);
      board[0]->partitions.store(2, std::memory_order_relaxed);
      // The arena is not reclaimed here: a few thousand puts fit it.
      if (i <= 5000) {
        ASSERT_TRUE(writer_->put("k" + std::to_string(i % 50), std::to_string(i)));
      }
    }
  });
  uint64_t last_count = 0, last_acked = 0;
  // 200 pages, and more until the publishers have been seen (they may
  // not have run yet), within 10 s.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (int round = 0; round < 200 || (last_count == 0 && std::chrono::steady_clock::now() < until);
       ++round) {
    const std::string page = render({TableSource{"t", "topic", 0, table_}},
                                    {published.load(), &writes, &board, nullptr, {}, "1"});
    const uint64_t count = std::stoull(sample(page, "kvsd_write_acknowledged_seconds_count"));
    const uint64_t acked = std::stoull(sample(page, "kvsd_writes_acknowledged_total"));
    EXPECT_EQ(sample(page, "kvsd_write_acknowledged_seconds_bucket{le=\"+Inf\"}"),
              std::to_string(count));
    EXPECT_GE(count, last_count);
    EXPECT_GE(acked, last_acked);
    last_count = count;
    last_acked = acked;
  }
  stop = true;
  server.join();
  apply.join();
  EXPECT_GT(last_count, 0u);
}

// Prometheus's promtool (Debian's prometheus package) lints the page:
// names, types, units, HELP, and that every sample parses.
TEST_F(MetricsPageTest, PromtoolAcceptsThePage) {
  if (std::system("command -v promtool > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "promtool is not installed (Debian package prometheus)";
  SnapshotStatus snaps;
  const SnapshotFigures f{format::now_unix_ns(), 39, 4096, 0.01, 0};
  snaps.set("t", "{}", &f);
  snaps.set("t", "{\"error\":\"disk full\"}", nullptr);
  daemon::server::WriteStats writes;
  writes.acked.observe(1'000'000);
  writes.count_error(KVS_EQUEUE);
  daemon::metrics::Board board;
  board.push_back(std::make_unique<daemon::metrics::TableBoard>(2));
  const std::string page =
      render({TableSource{"t", "topic", 0, table_}}, {{}, &writes, &board, &snaps, {}, "0.1.0"});
  EXPECT_EQ(sample(page, "kvs_table_snapshot_bytes{table=\"t\"}"), "4096");
  EXPECT_EQ(sample(page, "kvs_table_snapshot_failures_total{table=\"t\"}"), "1");
  const std::string base = "/tmp/kvs-metrics-" + std::to_string(::getpid());
  const std::string path = base + ".txt", out = base + ".out";
  std::ofstream(path) << page;
  const int st =
      std::system(("promtool check metrics < '" + path + "' > '" + out + "' 2>&1").c_str());
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << test::slurp(out) << page;
  std::remove(path.c_str());
  std::remove(out.c_str());
}

}  // namespace
}  // namespace kvs
