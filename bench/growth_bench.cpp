// Tables that grow online, against the Kafka the tests use (the mock
// cluster in its own process, or KVS_TEST_BOOTSTRAP).
//
//   kvs_growth_bench [--records N] [--partitions P] [--rounds R]
//                    [--start-capacity C] [--start-arena BYTES]
//
// 1. Bootstrap: N records (16-byte keys, 100-byte values) into a table
//    that starts at 1,024 entries and 1 MiB ("grown") and into one sized
//    for N ("sized"), alternated R times; READY=1 time and kvsd's CPU per
//    record. Ratio = sized time / grown time (target >= 0.8x).
// 2. /dev/shm during the grown bootstraps: the peak of the bytes in use
//    (statvfs, so that a generation that is unlinked but still mapped
//    counts), against the final segment's size (target <= 2.6x).
// 3. Reader latency: a reader thread of this process gets random keys of
//    the full table, idle, then while kvsd grows the table once more
//    (N / 16 new keys past its capacity); p50/p99/max of each, and of the
//    reads in the 100 ms after the swap (target: p99 during <= 2x idle).
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <atomic>
#include <filesystem>
#include <random>
#include <thread>

#include "bench_support.hpp"
#include "kvs/kvs.hpp"
#include "support/kafka_cluster.hpp"
#include "support/test_support.hpp"

namespace {

using namespace kvs::bench;
using kvs::test::Child;

uint64_t shm_used_bytes() {
  struct statvfs s {};
  if (::statvfs("/dev/shm", &s) != 0) return 0;
  return (s.f_blocks - s.f_bfree) * s.f_frsize;
}

// Samples /dev/shm's use every 200 us while it runs; peak() above the
// baseline taken at construction.
class ShmPeak {
 public:
  ShmPeak() : base_(shm_used_bytes()), thread_([this] { run(); }) {}
  ~ShmPeak() { stop(); }
  uint64_t stop() {
    if (thread_.joinable()) {
      done_ = true;
      thread_.join();
    }
    return peak_ > base_ ? peak_ - base_ : 0;
  }

 private:
  void run() {
    while (!done_) {
      peak_ = std::max(peak_.load(), shm_used_bytes());
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  uint64_t base_;
  std::atomic<uint64_t> peak_{0};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

struct Latencies {
  std::vector<uint32_t> idle, growing, after_swap;  // ns per get
};

void print_latency(const char* what, std::vector<uint32_t>& v) {
  if (v.empty()) {
    std::printf("  %-26s no samples\n", what);
    return;
  }
  std::sort(v.begin(), v.end());
  std::printf("  %-26s %8zu gets: p50 %5u ns  p99 %6u ns  p99.9 %7u ns  max %8u ns\n", what,
              v.size(), v[v.size() / 2], v[v.size() * 99 / 100], v[v.size() * 999 / 1000],
              v.back());
}

}  // namespace

int main(int argc, char** argv) {
  long records = 1000000;
  int partitions = 32;
  int rounds = 3;
  long start_capacity = 1024, start_arena = 1 << 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--start-capacity") {
      start_capacity = std::stol(argv[i + 1]);
    } else if (a == "--start-arena") {
      start_arena = std::stol(argv[i + 1]);
    } else if (a == "--records") {
      records = std::stol(argv[i + 1]);
    } else if (a == "--partitions") {
      partitions = std::stoi(argv[i + 1]);
    } else if (a == "--rounds") {
      rounds = std::stoi(argv[i + 1]);
    } else {
      die("usage: kvs_growth_bench [--records N] [--partitions P] [--rounds R] "
          "[--start-capacity C] [--start-arena BYTES]");
    }
  }
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("kvs-growth-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  kvs::test::KafkaCluster kafka(kvs::test::helper("../tests/kvs_mock_kafka"));
  const std::string topic = kvs::test::KafkaCluster::unique_topic("growth");
  if (!kafka.create_topic(topic, partitions)) die("cannot create topic " + topic);
  auto t0 = clock_type::now();
  produce(kafka.bootstrap(), topic, partitions, records);
  std::printf("produced %ld records (16 B keys, 100 B values) over %d partitions in %.2f s\n",
              records, partitions, seconds_since(t0));

  kvs::test::ShmScope shm;
  NotifySocket notify((dir / "notify.sock").string());
  ::setenv("NOTIFY_SOCKET", notify.path().c_str(), 1);
  const std::string kvsd = kvs::test::helper("../kvsd");
  auto config_for = [&](const std::string& name, long capacity, long arena) {
    const std::string path = (dir / (name + ".toml")).string();
    std::ofstream(path) << "[kvsd]\nsocket_path = \"" << (dir / "s.sock").string()
                        << "\"\nshm_prefix = \"" << shm.prefix() << "\"\nlog_level = \"warning\"\n"
                        << "snapshot_interval_s = 0\n"
                        << "[kafka]\n\"bootstrap.servers\" = \"" << kafka.bootstrap() << "\"\n"
                        << "[[table]]\nname = \"bench\"\ntopic = \"" << topic << "\"\n"
                        << "capacity = " << capacity << "\nmemory_limit_bytes = " << arena
                        << "\nmax_value_bytes = 65536\n";
    return path;
  };
  const std::string sized =
      config_for("sized", records + records / 8 + 1024, records * 160 + (16 << 20));
  const std::string grown = config_for("grown", start_capacity, start_arena);
  auto bootstrap = [&](const std::string& config, double* cpu) {
    std::filesystem::remove("/dev/shm/" + shm.prefix() + "bench");
    const auto start = clock_type::now();
    auto k = std::make_unique<Child>(std::vector<std::string>{kvsd, "--config", config});
    if (!notify.wait_ready(std::chrono::seconds(300))) die("kvsd never sent READY=1");
    const double s = seconds_since(start);
    *cpu = cpu_seconds_of(k->pid());
    auto t = kvs::Table::open("bench", {shm.prefix()});
    if (!t || t->size() != static_cast<uint64_t>(records)) die("READY without every key");
    return std::make_pair(std::move(k), s);
  };

  std::printf(
      "\nbootstrap to READY=1: a table sized for %ld keys vs one that starts at 1024 "
      "entries and 1 MiB\n",
      records);
  std::vector<double> ratios, cpu_sized, cpu_grown, peaks;
  uint64_t final_bytes = 0;
  for (int r = 0; r < rounds; ++r) {
    double c1 = 0, c2 = 0;
    auto [k1, s1] = bootstrap(sized, &c1);
    k1->kill(SIGTERM);
    k1->wait();
    std::filesystem::remove("/dev/shm/" + shm.prefix() + "bench");
    ShmPeak peak;
    auto [k2, s2] = bootstrap(grown, &c2);
    const uint64_t peak_bytes = peak.stop();
    {
      auto t = kvs::Table::open("bench", {shm.prefix()});
      // What the final segment takes in /dev/shm (its unused arena is not
      // backed yet).
      struct stat sb {};
      ::stat(("/dev/shm/" + shm.prefix() + "bench").c_str(), &sb);
      final_bytes = static_cast<uint64_t>(sb.st_blocks) * 512;
    }
    k2->kill(SIGTERM);
    k2->wait();
    ratios.push_back(s1 / s2);
    cpu_sized.push_back(c1);
    cpu_grown.push_back(c2);
    peaks.push_back(static_cast<double>(peak_bytes) / static_cast<double>(final_bytes));
    std::printf(
        "  round %d: sized %.2f s (%.0f ns CPU/record)   grown %.2f s (%.0f ns CPU/record)"
        "   ratio %.2fx   /dev/shm peak %.1f MiB = %.2fx the final %.1f MiB\n",
        r + 1, s1, c1 * 1e9 / records, s2, c2 * 1e9 / records, s1 / s2,
        static_cast<double>(peak_bytes) / (1 << 20), peaks.back(),
        static_cast<double>(final_bytes) / (1 << 20));
  }
  std::printf("bootstrap ratio sized/grown, median of %d: %.2fx (target >= 0.80x)\n", rounds,
              median(ratios));
  std::printf("kvsd CPU per record, median: sized %.0f ns, grown %.0f ns\n",
              median(cpu_sized) * 1e9 / records, median(cpu_grown) * 1e9 / records);
  std::printf("/dev/shm peak during growth, median: %.2fx the final segment (target <= 2.6x)\n",
              median(peaks));

  // 3. Reader latency: the grown table once more, with a reader timing gets.
  double cpu = 0;
  auto [k, s] = bootstrap(grown, &cpu);
  auto table = kvs::Table::open("bench", {shm.prefix()});
  if (!table) die(table.error().message);
  kvs_table_stats st{};
  kvs_stat(table->native(), &st);
  const long extra = std::max<long>(records / 16, static_cast<long>(st.capacity) - records + 1);
  Latencies lat;
  // 0 idle, 1 growing, 2 after the swap, 3 done, 4 records arrive before
  // the growth begins (not counted)
  std::atomic<int> phase{0};
  std::thread reader([&] {
    std::mt19937_64 rng(7);
    char key[32];
    uint64_t sum = 0;
    while (phase != 3) {
      std::snprintf(key, sizeof key, "k%015ld", static_cast<long>(rng() % records));
      const auto a = clock_type::now();
      {
        auto g = table->read();
        if (!g) die(g.error().message);
        auto v = g->get(std::string_view(key, 16));
        if (!v) die("a read failed: " + v.error().message);
        sum += static_cast<uint8_t>((*v)[99]);
      }
      const auto ns = static_cast<uint32_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - a).count());
      const int ph = phase;
      if (ph == 4) continue;
      (ph == 0 ? lat.idle : ph == 1 ? lat.growing : lat.after_swap).push_back(ns);
    }
    if (sum == 0) die("reader read nothing");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const uint64_t capacity_before = st.capacity;
  phase = 4;
  // /dev/shm from here on, above what the table took before it grew.
  struct stat before_st {};
  ::stat(("/dev/shm/" + shm.prefix() + "bench").c_str(), &before_st);
  const uint64_t before_bytes = static_cast<uint64_t>(before_st.st_blocks) * 512;
  auto growth_peak = std::make_unique<ShmPeak>();
  std::thread producer(
      [&] { produce(kafka.bootstrap(), topic, partitions, records + extra, records); });
  // Growing while kvsd's unfinished segment exists, until the capacity
  // changed (the swap); then 100 ms more.
  const std::string unfinished = shm.prefix() + "bench.new.";
  const auto deadline = clock_type::now() + std::chrono::seconds(60);
  for (;;) {
    kvs_table_stats now{};
    kvs_stat(table->native(), &now);
    if (now.capacity != capacity_before) break;
    if (phase == 4) {
      for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
        if (e.path().filename().string().starts_with(unfinished)) phase = 1;
      }
    }
    if (clock_type::now() > deadline) die("the table never grew");
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  producer.join();
  phase = 2;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  phase = 3;
  reader.join();
  const uint64_t peak_above = growth_peak->stop();
  struct stat sb {};
  ::stat(("/dev/shm/" + shm.prefix() + "bench").c_str(), &sb);
  const uint64_t grown_bytes = static_cast<uint64_t>(sb.st_blocks) * 512;
  const uint64_t peak_total = before_bytes + peak_above;
  std::printf(
      "\n/dev/shm while the %ld-key table grew once more: peak %.1f MiB = %.2fx the "
      "grown segment's %.1f MiB (target <= 2.6x)\n",
      records, static_cast<double>(peak_total) / (1 << 20),
      static_cast<double>(peak_total) / static_cast<double>(grown_bytes),
      static_cast<double>(grown_bytes) / (1 << 20));
  std::printf("\nreader get latency (a guard and one get of a random key, %ld keys)\n", records);
  print_latency("idle", lat.idle);
  print_latency("while the table grows", lat.growing);
  print_latency("100 ms after the swap", lat.after_swap);
  if (!lat.idle.empty() && !lat.growing.empty()) {
    std::printf("p99 while growing / idle: %.2fx (target <= 2x)\n",
                static_cast<double>(lat.growing[lat.growing.size() * 99 / 100]) /
                    static_cast<double>(lat.idle[lat.idle.size() * 99 / 100]));
  }
  k->kill(SIGTERM);
  k->wait();
  std::filesystem::remove_all(dir);
  return 0;
}
