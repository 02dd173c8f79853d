// What Prometheus's scrapes cost kvsd's apply path: kvsd bootstraps the
// same topic from the mock cluster (its own process) with nobody scraping
// and with a scraper GETting /metrics every 100 ms, alternated.
//
//   kvs_metrics_bench [--records N] [--partitions P] [--rounds R] [--scrape-ms MS]
//
// Prints, per pair, records/s both ways and their ratio (target >= 0.97x),
// kvsd's CPU per record (all threads, to READY=1) both ways, and the
// scrapes' time (p50 and max) and page size.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"
#include "support/http.hpp"
#include "support/kafka_cluster.hpp"
#include "support/test_support.hpp"

namespace {

using namespace kvs::bench;
using kvs::test::Child;

struct Scrapes {
  std::vector<double> ms;
  size_t bytes = 0;
  int failed = 0;
};

// GETs /metrics every `every` until `stop`.
void scrape_loop(int port, std::chrono::milliseconds every, const std::atomic<bool>& stop,
                 Scrapes* out) {
  while (!stop.load()) {
    const auto t0 = clock_type::now();
    const auto r = kvs::test::http_get(port, "/metrics", std::chrono::seconds(5));
    if (r.status == 200) {
      out->ms.push_back(seconds_since(t0) * 1e3);
      out->bytes = r.body.size();
    } else {
      ++out->failed;
    }
    std::this_thread::sleep_until(t0 + every);
  }
}

struct Options {
  long records = 1000000;
  int partitions = 32;
  int rounds = 5;
  int scrape_ms = 100;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--records") {
      o.records = std::stol(argv[i + 1]);
    } else if (a == "--partitions") {
      o.partitions = std::stoi(argv[i + 1]);
    } else if (a == "--rounds") {
      o.rounds = std::stoi(argv[i + 1]);
    } else if (a == "--scrape-ms") {
      o.scrape_ms = std::stoi(argv[i + 1]);
    } else {
      die("usage: kvs_metrics_bench [--records N] [--partitions P] [--rounds R] [--scrape-ms MS]");
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("kvs-metrics-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  kvs::test::KafkaCluster kafka(kvs::test::helper("../tests/kvs_mock_kafka"));
  const std::string topic = kvs::test::KafkaCluster::unique_topic("metrics");
  if (!kafka.create_topic(topic, o.partitions)) die("cannot create topic " + topic);
  produce(kafka.bootstrap(), topic, o.partitions, o.records);
  for (int p = 0; p < o.partitions; ++p) {
    if (kafka.watermarks(topic, p).first != 0) die("the mock dropped records: use more partitions");
  }
  kvs::test::ShmScope shm;
  const int port = kvs::test::free_port();
  const std::string config = (dir / "kvsd.toml").string();
  std::ofstream(config) << "[kvsd]\nsocket_path = \"" << (dir / "s.sock").string()
                        << "\"\nshm_prefix = \"" << shm.prefix() << "\"\nlog_level = \"warning\"\n"
                        << "snapshot_interval_s = 0\nmetrics_listen = \"127.0.0.1:" << port
                        << "\"\n[kafka]\n\"bootstrap.servers\" = \"" << kafka.bootstrap() << "\"\n"
                        << "[[table]]\nname = \"bench\"\ntopic = \"" << topic << "\"\n"
                        << "capacity = " << o.records + o.records / 8 + 1024 << "\n"
                        << "memory_limit_bytes = " << (o.records * 160 + (64 << 20)) << "\n";
  NotifySocket notify((dir / "notify.sock").string());
  ::setenv("NOTIFY_SOCKET", notify.path().c_str(), 1);
  const std::string kvsd = kvs::test::helper("../kvsd");

  // One cold bootstrap: seconds to READY=1 and kvsd's CPU seconds.
  auto bootstrap = [&](bool scraped, Scrapes* scrapes) {
    std::filesystem::remove("/dev/shm/" + shm.prefix() + "bench");
    std::atomic<bool> stop{false};
    const auto t0 = clock_type::now();
    Child running({kvsd, "--config", config});
    std::thread scraper;
    if (scraped) {
      scraper = std::thread(scrape_loop, port, std::chrono::milliseconds(o.scrape_ms),
                            std::cref(stop), scrapes);
    }
    if (!notify.wait_ready(std::chrono::seconds(300))) die("kvsd never sent READY=1");
    const double s = seconds_since(t0);
    const double cpu = cpu_seconds_of(running.pid());
    stop = true;
    if (scraper.joinable()) scraper.join();
    running.kill(SIGTERM);
    running.wait();
    return std::pair{s, cpu};
  };

  std::printf("bootstrap of %ld records over %d partitions; /metrics scraped every %d ms or not\n",
              o.records, o.partitions, o.scrape_ms);
  std::vector<double> ratios, cpu_quiet, cpu_scraped;
  Scrapes scrapes;
  for (int r = 0; r < o.rounds; ++r) {
    const auto [quiet, quiet_cpu] = bootstrap(false, nullptr);
    const auto [scraped, scraped_cpu] = bootstrap(true, &scrapes);
    ratios.push_back(quiet / scraped);
    cpu_quiet.push_back(quiet_cpu);
    cpu_scraped.push_back(scraped_cpu);
    std::printf("  round %d: quiet %.2f s, scraped %.2f s: ratio %.3fx\n", r + 1, quiet, scraped,
                quiet / scraped);
  }
  const double n = static_cast<double>(o.records);
  std::printf("ingest rate scraped / quiet, median of %d: %.3fx (target >= 0.97x)\n", o.rounds,
              median(ratios));
  std::printf(
      "kvsd CPU per record to READY (all threads), median: quiet %.0f ns, scraped %.0f ns\n",
      median(cpu_quiet) * 1e9 / n, median(cpu_scraped) * 1e9 / n);
  if (!scrapes.ms.empty()) {
    std::printf("scrapes: %zu answered (%d failed), p50 %.2f ms, max %.2f ms, %zu bytes\n",
                scrapes.ms.size(), scrapes.failed, median(scrapes.ms),
                *std::max_element(scrapes.ms.begin(), scrapes.ms.end()), scrapes.bytes);
  }
  std::filesystem::remove_all(dir);
  return 0;
}
