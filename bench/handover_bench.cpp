// A table handed over kvsd's socket against the same table opened by name
// (issue: readers in containers). Same run, same table, same keys:
//
//   kvs_handover_bench [--keys N] [--partitions P] [--gets G] [--rounds R]
//
// A kvsd on the mock cluster mirrors N records (16-byte keys, 100-byte
// values). Then, alternated R times, two reader processes each open the
// table and time:
//   - open -> first get: from before kvs_open to after the first kvs_get;
//   - a get: G lookups of random present keys, one guard per 1,000 gets,
//     the median of 5 passes, in ns per get (CPU and wall: one thread that
//     never sleeps).
// The host reader opens by name (KVS_HANDOVER_NEVER). The container reader
// asks kvsd's socket (KVS_HANDOVER_ALWAYS) from its own mount, pid and IPC
// namespaces with a private tmpfs over /dev/shm (unshare(1); as root), or,
// without them, as a plain process (said in the output).
// Targets: a get <= 1.05x the host reader's; open -> first get <= 2x.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "kvs/kvs.h"
#include "support/kafka_cluster.hpp"
#include "support/test_support.hpp"

namespace {

using kvs::bench::die;
using clock_type = std::chrono::steady_clock;

double ns_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::nano>(clock_type::now() - t0).count();
}

// The reader's side: prints "open_us <t> get_ns <t>".
int reader(const std::string& prefix, int handover, long keys, long gets) {
  const auto t0 = clock_type::now();
  kvs_open_options o{prefix.c_str(), nullptr, nullptr, handover};
  kvs_table* t = nullptr;
  if (kvs_open("t", &o, &t) != KVS_OK) die(std::string("reader: ") + kvs_last_error());
  char key[32];
  std::snprintf(key, sizeof key, "k%015ld", 0L);
  kvs_txn* x = nullptr;
  const void* v = nullptr;
  size_t n = 0;
  if (kvs_read_begin(t, &x) != KVS_OK || kvs_get(x, key, 16, &v, &n) != KVS_OK) {
    die(std::string("reader: first get: ") + kvs_last_error());
  }
  kvs_read_end(x);
  const double open_us = ns_since(t0) / 1000;
  std::vector<std::string> ks(static_cast<size_t>(keys));
  for (long i = 0; i < keys; ++i) {
    std::snprintf(key, sizeof key, "k%015ld", i);
    ks[static_cast<size_t>(i)] = key;
  }
  std::mt19937_64 rng(42);
  std::vector<uint32_t> order(static_cast<size_t>(gets));
  for (auto& i : order) i = static_cast<uint32_t>(rng() % static_cast<uint64_t>(keys));
  std::vector<double> passes;
  uint64_t sum = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto p0 = clock_type::now();
    for (long i = 0; i < gets; i += 1000) {
      kvs_read_begin(t, &x);
      for (long j = i; j < std::min(gets, i + 1000); ++j) {
        const std::string& k = ks[order[static_cast<size_t>(j)]];
        if (kvs_get(x, k.data(), k.size(), &v, &n) != KVS_OK) die("reader: a key is missing");
        sum += n;
      }
      kvs_read_end(x);
    }
    passes.push_back(ns_since(p0) / static_cast<double>(gets));
  }
  std::sort(passes.begin(), passes.end());
  std::printf("open_us %.1f get_ns %.2f sum %llu\n", open_us, passes[2],
              static_cast<unsigned long long>(sum));
  kvs_close(t);
  return 0;
}

struct Sample {
  double open_us = 0, get_ns = 0;
};

Sample run_reader(const std::vector<std::string>& argv) {
  kvs::test::Child c(argv);
  const std::string line = c.read_line();
  if (c.wait_for(std::chrono::minutes(5)) != 0) die("reader failed: " + line);
  Sample s;
  if (std::sscanf(line.c_str(), "open_us %lf get_ns %lf", &s.open_us, &s.get_ns) != 2) {
    die("reader said: " + line);
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 6 && std::string(argv[1]) == "--reader") {
    return reader(argv[2], std::atoi(argv[3]), std::atol(argv[4]), std::atol(argv[5]));
  }
  long keys = 200000, gets = 2000000;
  int partitions = 8, rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--keys") {
      keys = std::atol(argv[i + 1]);
    } else if (a == "--partitions") {
      partitions = std::atoi(argv[i + 1]);
    } else if (a == "--gets") {
      gets = std::atol(argv[i + 1]);
    } else if (a == "--rounds") {
      rounds = std::atoi(argv[i + 1]);
    } else {
      die("usage: kvs_handover_bench [--keys N] [--partitions P] [--gets G] [--rounds R]");
    }
  }
  kvs::test::KafkaCluster kafka(kvs::test::helper("../tests/kvs_mock_kafka"));
  const std::string topic = kvs::test::KafkaCluster::unique_topic("handoverbench");
  if (!kafka.create_topic(topic, partitions)) die("cannot create the topic");
  kvs::bench::produce(kafka.bootstrap(), topic, partitions, keys);
  kvs::test::ShmScope shm;
  const auto dir =
      std::filesystem::temp_directory_path() / ("kvs-handover-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string socket = (dir / "s.sock").string(), config = (dir / "kvsd.toml").string();
  std::ofstream(config) << "[kvsd]\nsocket_path = \"" << socket << "\"\nshm_prefix = \""
                        << shm.prefix() << "\"\nlog_level = \"warning\"\nsnapshot_interval_s = 0\n"
                        << "[kafka]\n\"bootstrap.servers\" = \"" << kafka.bootstrap() << "\"\n"
                        << "[[table]]\nname = \"t\"\ntopic = \"" << topic << "\"\n"
                        << "capacity = " << keys * 2 << "\n";
  kvs::test::Child kvsd({kvs::test::helper("../kvsd"), "--config", config});
  kvs_table* t = nullptr;
  const kvs_open_options oo{shm.prefix().c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  if (!kvs::test::wait_until([&] { return kvs_open("t", &oo, &t) == KVS_OK; },
                             std::chrono::seconds(60)) ||
      kvs_wait_ready(t, 120000) != KVS_OK) {
    die(std::string("kvsd did not get READY: ") + kvs_last_error());
  }
  kvs_close(t);
  const std::string self = std::filesystem::canonical("/proc/self/exe").string();
  const std::string n = std::to_string(keys), g = std::to_string(gets);
  const bool namespaces =
      ::geteuid() == 0 && std::system("unshare -m -p -i -f true 2>/dev/null") == 0;
  std::vector<std::string> host{self, "--reader", shm.prefix(), "1", n, g};
  std::vector<std::string> container{self, "--reader", shm.prefix(), "2", n, g};
  if (namespaces) {
    const std::string shell =
        "mount -t tmpfs tmpfs /dev/shm && KVS_SOCKET=" + socket + " exec \"$0\" \"$@\"";
    container = {"/usr/bin/unshare", "-m",         "-p",      "-i", "-f",  "--mount-proc",
                 "--propagation",    "private",    "/bin/sh", "-c", shell, self,
                 "--reader",         shm.prefix(), "2",       n,    g};
  } else {
    ::setenv("KVS_SOCKET", socket.c_str(), 1);
  }
  std::printf(
      "kvs_handover_bench: %ld keys (16-byte keys, 100-byte values), %ld gets per pass; "
      "container reader %s\n",
      keys, gets,
      namespaces ? "in mount, pid and IPC namespaces with a private /dev/shm"
                 : "a plain process (no root or unshare: no namespaces)");
  std::vector<double> get_ratio, open_ratio;
  for (int r = 0; r < rounds; ++r) {
    const Sample h = run_reader(host), c = run_reader(container);
    get_ratio.push_back(c.get_ns / h.get_ns);
    open_ratio.push_back(c.open_us / h.open_us);
    std::printf(
        "round %d: get %.2f ns (host) vs %.2f ns (handed) = %.3fx; open->first get "
        "%.0f us vs %.0f us = %.2fx\n",
        r + 1, h.get_ns, c.get_ns, get_ratio.back(), h.open_us, c.open_us, open_ratio.back());
  }
  std::sort(get_ratio.begin(), get_ratio.end());
  std::sort(open_ratio.begin(), open_ratio.end());
  std::printf(
      "median: get %.3fx the host reader's (target <= 1.05x); open->first get %.2fx "
      "(target <= 2x)\n",
      get_ratio[get_ratio.size() / 2], open_ratio[open_ratio.size() / 2]);
  kvsd.kill(SIGTERM);
  kvsd.wait_for(std::chrono::seconds(30));
  std::filesystem::remove_all(dir);
  return 0;
}
