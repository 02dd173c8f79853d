// The applier's cost of watching readers: overwrites applied in batches of
// 1,024, each batch ended by reclaim() (as kvsd's loop does), with 0, 1, 8
// and 64 reader processes registered (each has read once and idles, so its
// file is in the registry and announces nothing). Prints, per reader count,
// the wall time and CPU time per applied record and the ratio against the
// run with no reader, measured alternately in the same run.
//
//   kvs_reclaim_bench [--rounds N] [--batches N]
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "kvs/kvs.h"
#include "writer/table_writer.hpp"

namespace {

constexpr int kBatch = 1024;
constexpr int kKeys = 100000;

double cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

// A reader process: registers (one read), then idles until killed.
pid_t spawn_reader(const std::string& prefix) {
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  kvs_open_options o{prefix.c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  kvs_table* t = nullptr;
  kvs_txn* x = nullptr;
  if (kvs_open("b", &o, &t) != KVS_OK || kvs_read_begin(t, &x) != KVS_OK) _exit(2);
  kvs_read_end(x);
  for (;;) ::pause();
}

struct Sample {
  double wall_ns_per_record, cpu_ns_per_record, scan_ns;
};

// One read of the registry (what reclaim() does when due): the median over
// `n` calls, each after one overwrite so that a block waits.
double scan_ns(kvs::TableWriter& w, int n, uint64_t& version) {
  std::vector<double> t;
  for (int i = 0; i < n; ++i) {
    if (!w.put("scan", std::to_string(version++))) std::abort();
    const auto t0 = std::chrono::steady_clock::now();
    w.reclaim_now();
    t.push_back(
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

Sample apply_batches(kvs::TableWriter& w, int batches, uint64_t& version) {
  char key[32], value[100];
  std::memset(value, 'v', sizeof value);
  const double cpu0 = cpu_seconds();
  const auto t0 = std::chrono::steady_clock::now();
  for (int b = 0; b < batches; ++b) {
    for (int i = 0; i < kBatch; ++i) {
      const uint64_t k = (version * 2654435761u) % kKeys;
      std::snprintf(key, sizeof key, "key%012llu", static_cast<unsigned long long>(k));
      std::memcpy(value, &version, sizeof version);
      ++version;
      if (!w.put(key, std::string_view(value, sizeof value))) std::abort();
    }
    w.reclaim();
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double records = double(batches) * kBatch;
  return {wall * 1e9 / records, (cpu_seconds() - cpu0) * 1e9 / records, 0};
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5, batches = 200;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--rounds") == 0) rounds = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--batches") == 0) batches = std::atoi(argv[i + 1]);
  }
  const std::string prefix = "kvsbench" + std::to_string(::getpid()) + ".";
  kvs::WriterOptions o;
  o.table = "b";
  o.shm_prefix = prefix;
  o.capacity = kKeys * 2;
  o.arena_bytes = 256 << 20;
  o.reader_scan_interval = std::chrono::milliseconds(1);  // as kvsd
  auto w = kvs::TableWriter::open(o);
  if (!w) {
    std::fprintf(stderr, "%s\n", w.error().message.c_str());
    return 1;
  }
  uint64_t version = 1;
  apply_batches(**w, kKeys / kBatch + 1, version);  // fill, warm up

  const int counts[] = {0, 1, 8, 64};
  std::vector<pid_t> readers;
  std::vector<std::vector<Sample>> samples(4);
  for (int r = 0; r < rounds; ++r) {
    for (int c = 0; c < 4; ++c) {
      while (static_cast<int>(readers.size()) < counts[c]) readers.push_back(spawn_reader(prefix));
      while (static_cast<int>(readers.size()) > counts[c]) {
        ::kill(readers.back(), SIGKILL);
        ::waitpid(readers.back(), nullptr, 0);
        readers.pop_back();
      }
      (*w)->sweep_dead_readers();
      apply_batches(**w, 5, version);  // the roster sees the readers
      samples[c].push_back(apply_batches(**w, batches, version));
      samples[c].back().scan_ns = scan_ns(**w, 200, version);
    }
  }
  for (pid_t p : readers) {
    ::kill(p, SIGKILL);
    ::waitpid(p, nullptr, 0);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::vector<double> base_wall, base_cpu;
  for (auto& s : samples[0]) {
    base_wall.push_back(s.wall_ns_per_record);
    base_cpu.push_back(s.cpu_ns_per_record);
  }
  std::printf(
      "overwrites of 100-byte values in batches of %d, each ended by reclaim(); "
      "medians of %d rounds x %d batches\n",
      kBatch, rounds, batches);
  std::printf("%-8s %14s %14s %10s %10s %12s %10s\n", "readers", "wall ns/rec", "cpu ns/rec",
              "wall/0", "cpu/0", "scan ns", "scan/0");
  for (int c = 0; c < 4; ++c) {
    std::vector<double> wall, cpu, scan, base_scan;
    for (auto& s : samples[c]) {
      wall.push_back(s.wall_ns_per_record);
      cpu.push_back(s.cpu_ns_per_record);
      scan.push_back(s.scan_ns);
    }
    for (auto& s : samples[0]) base_scan.push_back(s.scan_ns);
    std::printf("%-8d %14.1f %14.1f %9.2fx %9.2fx %12.0f %9.2fx\n", counts[c], median(wall),
                median(cpu), median(wall) / median(base_wall), median(cpu) / median(base_cpu),
                median(scan), median(scan) / median(base_scan));
  }
  w->reset();
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
    if (e.path().filename().string().rfind(prefix, 0) == 0)
      std::filesystem::remove_all(e.path(), ec);
  }
  return 0;
}
