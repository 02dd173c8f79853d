// Snapshots and cold starts, against the Kafka the tests use (the mock
// cluster in its own process, or KVS_TEST_BOOTSTRAP).
//
//   kvs_snapshot_bench [--records N] [--partitions P] [--rounds R] [--phases 1234]
//
// 1. Cold start to READY=1 of a table of N keys (16-byte keys, 100-byte
//    values) with /dev/shm empty: from the topic, and from a snapshot of
//    the same keys in kvsd's state directory, alternated R times. Ratio =
//    topic time / snapshot time (target >= 10x); kvsd's CPU of each.
// 2. Writing a snapshot of the N keys (kvs_snapshot_write, as kvsd and
//    kvsctl do) against `cp` of a file of the same size in the same
//    directory, followed by `sync` of the copy as the snapshot is fsynced
//    (target <= 2x).
// 3. Ingest: kvsd catching up with N/10 new records after a restart, with
//    a thread writing snapshots of the table all along and without one,
//    alternated. Ratio = rate with / rate without (target >= 0.8x).
// 4. Writes through the socket (one client, one put at a time, answered
//    once Kafka acknowledged it): p50/p99 idle, and of the puts that began
//    while a snapshot was written (snapshots with 300 ms pauses between
//    them; target: p99 during <= 1.5x idle).
#include <sched.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "bench_support.hpp"
#include "kvs/kvs.hpp"
#include "support/kafka_cluster.hpp"
#include "support/test_support.hpp"

namespace {

using namespace kvs::bench;
using kvs::test::Child;
namespace fs = std::filesystem;

struct Setup {
  fs::path dir;
  std::string prefix, kvsd, config, topic, bootstrap;
  long records = 0;
  int partitions = 0;
  fs::path snapshot_dir() const { return dir / "state" / (prefix + "bench"); }
};

void remove_segments(const Setup& s) {
  for (const auto& e : fs::directory_iterator("/dev/shm")) {
    if (e.path().filename().string().starts_with(s.prefix)) fs::remove_all(e.path());
  }
}

// Writes snapshots of the table to `path` in a loop until stopped, with
// `pause` between them; writing() is true while one is written.
class SnapshotLoop {
 public:
  SnapshotLoop(const std::string& prefix, const std::string& path,
               std::chrono::milliseconds pause = std::chrono::milliseconds(0))
      : thread_([this, prefix, path, pause] {
          // As kvsd's snapshot thread (daemon/snapshots.hpp: lower_priority).
          sched_param none{};
          (void)::sched_setscheduler(0, SCHED_IDLE, &none);
          auto t = kvs::Table::open("bench", {prefix});
          if (!t) die("snapshot loop: " + t.error().message);
          while (!stop_) {
            writing_ = true;
            if (!t->write_snapshot(path)) die("snapshot loop: write failed");
            writing_ = false;
            ++written_;
            for (auto waited = std::chrono::milliseconds(0); waited < pause && !stop_;
                 waited += std::chrono::milliseconds(10)) {
              std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
          }
        }) {}
  bool writing() const { return writing_; }
  int stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return written_;
  }
  ~SnapshotLoop() { stop(); }

 private:
  std::atomic<bool> stop_{false}, writing_{false};
  std::atomic<int> written_{0};
  std::thread thread_;
};

// Starts kvsd and waits for READY=1: the process, seconds to READY.
std::pair<std::unique_ptr<Child>, double> start_until_ready(const Setup& s, NotifySocket& notify) {
  const auto start = clock_type::now();
  auto k = std::make_unique<Child>(std::vector<std::string>{s.kvsd, "--config", s.config});
  if (!notify.wait_ready(std::chrono::seconds(300))) die("kvsd never sent READY=1");
  return {std::move(k), seconds_since(start)};
}

// Waits (at most 20 s) until kvsd uses less than 2% of a CPU: after READY
// it walks the arena it attached to, which would compete with what is
// measured next.
void wait_idle(pid_t pid) {
  const auto deadline = clock_type::now() + std::chrono::seconds(20);
  double before = cpu_seconds_of(pid);
  while (clock_type::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    const double now = cpu_seconds_of(pid);
    if (now - before < 0.005) return;
    before = now;
  }
}

void stop(std::unique_ptr<Child>& k) {
  k->kill(SIGTERM);
  if (k->wait() != 0) die("kvsd did not stop cleanly");
  k.reset();
}

// 1. Cold starts from the topic and from `snapshot`.
void cold_starts(const Setup& s, NotifySocket& notify, const std::string& snapshot, int rounds) {
  std::printf("\n1. cold start to READY=1 of %ld keys, /dev/shm empty\n", s.records);
  std::vector<double> ratios;
  for (int r = 0; r < rounds; ++r) {
    double secs[2], cpu[2];
    for (int from_snapshot = 0; from_snapshot < 2; ++from_snapshot) {
      remove_segments(s);
      fs::remove_all(s.snapshot_dir());
      if (from_snapshot) {
        fs::create_directories(s.snapshot_dir());
        fs::copy_file(snapshot, s.snapshot_dir() / "00000000000000000001.snapshot");
      }
      auto [k, t] = start_until_ready(s, notify);
      secs[from_snapshot] = t;
      cpu[from_snapshot] = cpu_seconds_of(k->pid());
      auto table = kvs::Table::open("bench", {s.prefix});
      if (!table || table->size() != static_cast<uint64_t>(s.records))
        die("READY without every key");
      stop(k);
    }
    ratios.push_back(secs[0] / secs[1]);
    std::printf(
        "  round %d: from the topic %.3f s (kvsd CPU %.0f ns/key), from a snapshot %.3f s "
        "(%.0f ns/key): %.1fx\n",
        r + 1, secs[0], cpu[0] / s.records * 1e9, secs[1], cpu[1] / s.records * 1e9, ratios.back());
  }
  std::printf("  median ratio %.1fx (target >= 10x)\n", median(ratios));
}

// 2. Snapshot write time against cp + sync of as many bytes.
void write_vs_cp(const Setup& s, const std::string& snapshot, int rounds) {
  auto t = kvs::Table::open("bench", {s.prefix});
  if (!t) die(t.error().message);
  std::printf("\n2. writing a snapshot of %ld keys against cp + sync of the same bytes\n",
              s.records);
  std::vector<double> ratios;
  const std::string copy = (s.dir / "copy.bin").string();
  for (int r = 0; r < rounds; ++r) {
    const double cpu0 = own_cpu_seconds();
    auto info = t->write_snapshot(snapshot);
    if (!info) die(info.error().message);
    const double cpu = own_cpu_seconds() - cpu0;
    const double write_s = static_cast<double>(info->duration_ns) / 1e9;
    fs::remove(copy);
    const auto c0 = clock_type::now();
    const std::string cmd = "cp '" + snapshot + "' '" + copy + "' && sync '" + copy + "'";
    if (std::system(cmd.c_str()) != 0) die("cp failed");
    const double cp_s = seconds_since(c0);
    ratios.push_back(write_s / cp_s);
    std::printf("  round %d: %.1f MiB in %.3f s (CPU %.0f ns/key), cp + sync %.3f s: %.2fx\n",
                r + 1, static_cast<double>(info->file_bytes) / (1 << 20), write_s,
                cpu / s.records * 1e9, cp_s, ratios.back());
  }
  std::printf("  median ratio %.2fx (target <= 2x)\n", median(ratios));
}

// 3. Catch-up rate after a restart, with snapshots written meanwhile or not.
void ingest(const Setup& s, NotifySocket& notify, int rounds) {
  const long backlog = s.records / 10;
  std::printf("\n3. kvsd catching up with %ld new records, with and without snapshots written\n",
              backlog);
  std::vector<double> ratios;
  long next = 0;  // overwrites: the table keeps its size (no growth)
  for (int r = 0; r < rounds; ++r) {
    double rate[2], cpu[2];
    int written = 0;
    for (int with = 0; with < 2; ++with) {
      produce(s.bootstrap, s.topic, s.partitions, next + backlog, next);
      next = (next + backlog) % (s.records - backlog);
      std::unique_ptr<SnapshotLoop> loop;
      if (with) loop = std::make_unique<SnapshotLoop>(s.prefix, (s.dir / "loop.snapshot").string());
      auto [k, secs] = start_until_ready(s, notify);
      if (loop) written = loop->stop();
      rate[with] = static_cast<double>(backlog) / secs;
      cpu[with] = cpu_seconds_of(k->pid());
      stop(k);
    }
    ratios.push_back(rate[1] / rate[0]);
    std::printf(
        "  round %d: %.0f records/s without (kvsd CPU %.0f ns/record), %.0f with %d snapshots "
        "written (%.0f ns/record): %.2fx\n",
        r + 1, rate[0], cpu[0] / backlog * 1e9, rate[1], written, cpu[1] / backlog * 1e9,
        ratios.back());
  }
  std::printf("  median ratio %.2fx (target >= 0.8x)\n", median(ratios));
}

// Put latencies (us) for `seconds`; with `loop`, only of the puts that
// began while a snapshot was being written.
std::vector<double> put_latencies(kvs::Client& c, double seconds, const SnapshotLoop* loop) {
  std::vector<double> us;
  const auto end = clock_type::now() + std::chrono::duration<double>(seconds);
  for (int i = 0; clock_type::now() < end; ++i) {
    const bool counted = loop == nullptr || loop->writing();
    const auto t0 = clock_type::now();
    if (!c.put("bench", "latency" + std::to_string(i % 1000), "v")) die("put failed");
    if (counted) us.push_back(seconds_since(t0) * 1e6);
  }
  std::sort(us.begin(), us.end());
  if (us.empty()) die("no put while a snapshot was written");
  return us;
}

// 4. Put latency through the socket, idle and while snapshots are written.
void write_latency(const Setup& s, NotifySocket& notify, int rounds) {
  std::printf("\n4. puts through the socket (one at a time), idle and during snapshots\n");
  auto [k, secs] = start_until_ready(s, notify);
  wait_idle(k->pid());
  auto c = kvs::Client::connect((s.dir / "s.sock").string());
  if (!c) die(c.error().message);
  std::vector<double> ratios;
  for (int r = 0; r < rounds; ++r) {
    auto idle = put_latencies(*c, 2.0, nullptr);
    // A snapshot, then as long a pause: the puts while one is written count.
    SnapshotLoop loop(s.prefix, (s.dir / "loop.snapshot").string(), std::chrono::milliseconds(300));
    auto during = put_latencies(*c, 5.0, &loop);
    const int written = loop.stop();
    auto p = [](const std::vector<double>& v, double q) {
      return v[static_cast<size_t>(q * (v.size() - 1))];
    };
    ratios.push_back(p(during, 0.99) / p(idle, 0.99));
    std::printf(
        "  round %d: idle p50 %.0f us p99 %.0f us (%zu puts); during %d snapshots p50 %.0f us p99 "
        "%.0f us (%zu puts): p99 %.2fx\n",
        r + 1, p(idle, 0.5), p(idle, 0.99), idle.size(), written, p(during, 0.5), p(during, 0.99),
        during.size(), ratios.back());
  }
  std::printf("  median p99 ratio %.2fx (target <= 1.5x)\n", median(ratios));
  stop(k);
}

}  // namespace

int main(int argc, char** argv) {
  Setup s;
  s.records = 1000000;
  s.partitions = 64;
  int rounds = 3;
  std::string phases = "1234";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--phases") {
      phases = argv[i + 1];
    } else if (a == "--records") {
      s.records = std::stol(argv[i + 1]);
    } else if (a == "--partitions") {
      s.partitions = std::stoi(argv[i + 1]);
    } else if (a == "--rounds") {
      rounds = std::stoi(argv[i + 1]);
    } else {
      die("usage: kvs_snapshot_bench [--records N] [--partitions P] [--rounds R] [--phases 1234]");
    }
  }
  s.dir = fs::temp_directory_path() / ("kvs-snapshot-bench-" + std::to_string(getpid()));
  fs::create_directories(s.dir);
  kvs::test::KafkaCluster kafka(kvs::test::helper("../tests/kvs_mock_kafka"));
  s.bootstrap = kafka.bootstrap();
  s.topic = kvs::test::KafkaCluster::unique_topic("snapshot");
  if (!kafka.create_topic(s.topic, s.partitions)) die("cannot create topic " + s.topic);
  auto t0 = clock_type::now();
  produce(s.bootstrap, s.topic, s.partitions, s.records);
  std::printf("produced %ld records (16 B keys, 100 B values) over %d partitions in %.2f s\n",
              s.records, s.partitions, seconds_since(t0));
  kvs::test::ShmScope shm;
  s.prefix = shm.prefix();
  s.kvsd = kvs::test::helper("../kvsd");
  s.config = (s.dir / "kvsd.toml").string();
  // No snapshot of kvsd's own: the bench places and writes them.
  std::ofstream(s.config) << "[kvsd]\nsocket_path = \"" << (s.dir / "s.sock").string()
                          << "\"\nshm_prefix = \"" << s.prefix << "\"\nlog_level = \"warning\"\n"
                          << "state_dir = \"" << (s.dir / "state").string() << "\"\n"
                          << "snapshot_interval_s = 0\n"
                          << "[kafka]\n\"bootstrap.servers\" = \"" << s.bootstrap << "\"\n"
                          << "[[table]]\nname = \"bench\"\ntopic = \"" << s.topic << "\"\n"
                          << "capacity = " << s.records + s.records / 4 + 1024
                          << "\nmemory_limit_bytes = " << (s.records * 200 + (64 << 20)) << "\n";
  NotifySocket notify((s.dir / "notify.sock").string());
  ::setenv("NOTIFY_SOCKET", notify.path().c_str(), 1);

  // The snapshot the cold starts use, of a table from the topic.
  const std::string snapshot = (s.dir / "bench.snapshot").string();
  {
    auto [k, secs] = start_until_ready(s, notify);
    wait_idle(k->pid());
    auto t = kvs::Table::open("bench", {s.prefix});
    if (!t || !t->write_snapshot(snapshot)) die("the first snapshot failed");
    if (phases.find('2') != std::string::npos) write_vs_cp(s, snapshot, rounds);
    stop(k);
  }
  auto has = [&](char p) { return phases.find(p) != std::string::npos; };
  if (has('1')) cold_starts(s, notify, snapshot, rounds);
  if (has('3')) ingest(s, notify, rounds);
  if (has('4')) write_latency(s, notify, rounds);
  remove_segments(s);
  fs::remove_all(s.dir);
  return 0;
}
