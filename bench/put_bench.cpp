// Writes through kvsd against a bare librdkafka producer with the same
// settings, on the same Kafka (the mock cluster in its own process, or
// KVS_TEST_BOOTSTRAP), in the same run.
//
//   kvs_put_bench [--puts N] [--latency-puts L] [--clients C] [--rounds R]
//                 [--window W] [--fetch-wait-ms W] [--profile-kvsd 1]
//
// 1. Round trip, one writer, one put at a time: kvs_put (socket -> kvsd ->
//    Kafka acks=all -> delivery report -> answer) against produce + wait for
//    the delivery report. p50 and p99; target p50 ratio <= 1.3.
// 2. Throughput: C clients (threads, one connection each) pipelining async
//    puts, against one bare producer fed as fast as it takes them (kvsd has
//    one producer: that is its ceiling). Target ratio >= 0.8. N puts per
//    side and round (default 300,000: with 150,000 the bare producer's
//    start-up weighed on its rate, 1.5-1.7M/s against 2.1-2.3M/s). Each
//    side's line also shows how idle the machine was while it ran.
//    The same with one client pipelining as many puts as the C clients
//    together (window C x W): what one busy writer process gets.
// 3. "visible" round trip (the answer waits until this host's table applied
//    the write) against the plain one; target: + <= 1 ms at p50.
// Each pair runs back to back, R rounds; the median ratio is reported.
// --window W: unanswered puts per client connection (default 256).
// --profile-kvsd 1 runs only step 2's kvsd side, R rounds, for perf, and
// prints for each round how idle each CPU was and, for each thread of kvsd
// and of the mock broker, the share of the round it ran and the share it was
// runnable but waited for a CPU (/proc/PID/task/TID/schedstat).
//
// Steps 1 and 2 run kvsd with its default settings. The mock cluster answers
// a fetch that finds no data only after the whole fetch.wait.max.ms (500 ms
// by default), even when a record arrives meanwhile; a real broker answers as
// soon as the record is committed. On the mock, step 3 therefore runs on a
// second kvsd (same topic, started after the throughput rounds) whose
// consumer has fetch.wait.max.ms = --fetch-wait-ms (default 1), so that
// "visible" measures kvsd, not the mock's timer. With KVS_TEST_BOOTSTRAP the
// first kvsd serves step 3 too, unless the flag is given. (A 1 ms fetch wait
// during the throughput rounds would cost kvsd ~25% of its rate in extra
// fetches, which a production kvsd on a real broker does not make.)
#include <librdkafka/rdkafka.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kvs/kvs.h"
#include "support/kafka_cluster.hpp"
#include "support/test_support.hpp"

namespace {

using clock_type = std::chrono::steady_clock;
constexpr int kPartitions = 16;
constexpr size_t kValueBytes = 100;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "kvs_put_bench: %s\n", what.c_str());
  std::exit(1);
}

std::string key_of(long i) {
  char k[32];
  std::snprintf(k, sizeof k, "k%015ld", i % 100000);
  return k;
}

double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

double median(std::vector<double> v) { return pct(std::move(v), 0.5); }

// The producer kvsd builds (daemon/server/server.cpp), bare.
// The highest offset written to each partition, to wait for kvsd to apply.
struct Written {
  std::atomic<int64_t> offset[kPartitions];
  Written() {
    for (auto& o : offset) o = -1;
  }
  void saw(int32_t partition, int64_t off) {
    auto& o = offset[partition];
    int64_t cur = o.load();
    while (off > cur && !o.compare_exchange_weak(cur, off)) {
    }
  }
};

// Waits until the table has applied everything written so far, so that one
// measurement's consumer work does not spill into the next.
void wait_applied(kvs_table* t, const Written& w) {
  for (int32_t p = 0; p < kPartitions; ++p) {
    const kvs_token tok{p, w.offset[p].load()};
    if (tok.offset >= 0 && kvs_wait(t, &tok, 120000) != KVS_OK)
      die(std::string("kvsd did not apply its topic: ") + kvs_last_error());
  }
}

struct Bare {
  rd_kafka_t* rk = nullptr;
  rd_kafka_topic_t* rkt = nullptr;
  std::atomic<long> delivered{0}, failed{0};
  Written written;

  Bare(const std::string& bootstrap, const std::string& topic) {
    char err[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    for (const auto& [k, v] :
         std::vector<std::pair<std::string, std::string>>{{"bootstrap.servers", bootstrap},
                                                          {"linger.ms", "1"},
                                                          {"queue.buffering.max.kbytes", "65536"},
                                                          {"enable.idempotence", "true"},
                                                          {"acks", "all"},
                                                          {"partitioner", "murmur2_random"},
                                                          {"message.timeout.ms", "30000"}}) {
      if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK)
        die(err);
    }
    rd_kafka_conf_set_opaque(conf, this);
    rd_kafka_conf_set_dr_msg_cb(conf, [](rd_kafka_t*, const rd_kafka_message_t* m, void* o) {
      auto* b = static_cast<Bare*>(o);
      (m->err ? b->failed : b->delivered).fetch_add(1);
      if (!m->err) b->written.saw(m->partition, m->offset);
    });
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (rk == nullptr) die(err);
    rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
  }
  ~Bare() {
    rd_kafka_flush(rk, 30000);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
  }
  void produce(const std::string& k, const std::string& v) {
    while (rd_kafka_produce(rkt, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY,
                            const_cast<char*>(v.data()), v.size(), k.data(), k.size(),
                            nullptr) != 0) {
      rd_kafka_poll(rk, 1);  // queue full: serve delivery reports
    }
  }
  // One message, waited for: microseconds.
  double round_trip(const std::string& k, const std::string& v) {
    const long before = delivered + failed;
    const auto t0 = clock_type::now();
    produce(k, v);
    while (delivered + failed == before) rd_kafka_poll(rk, 1000);
    return std::chrono::duration<double, std::micro>(clock_type::now() - t0).count();
  }
  // n messages as fast as they are taken: messages/s.
  double throughput(long n, long offset) {
    const long before = delivered + failed;
    const std::string v(kValueBytes, 'b');
    const auto t0 = clock_type::now();
    for (long i = 0; i < n; ++i) {
      produce(key_of(offset + i), v);
      rd_kafka_poll(rk, 0);
    }
    while (delivered + failed < before + n) rd_kafka_poll(rk, 100);
    if (failed > 0) die("bare producer: deliveries failed");
    return static_cast<double>(n) / std::chrono::duration<double>(clock_type::now() - t0).count();
  }
};

double kvsd_round_trip(kvs_client* c, const std::string& k, const std::string& v, bool visible) {
  kvs_write_options o{0, visible ? 1 : 0};
  const auto t0 = clock_type::now();
  if (kvs_put(c, "t", k.data(), k.size(), v.data(), v.size(), &o, nullptr) != KVS_OK)
    die(std::string("kvs_put: ") + kvs_last_error());
  return std::chrono::duration<double, std::micro>(clock_type::now() - t0).count();
}

// `clients` threads, a connection each, `n` puts in all, pipelined with up
// to `window` unanswered per connection: puts/s.
int g_window = 256;

double kvsd_throughput(const std::string& socket, int clients, long n, long offset,
                       Written& written, int window = g_window) {
  struct Tally {
    std::atomic<long> failed{0};
    Written* written;
  } tally{{0}, &written};
  std::vector<kvs_client*> cs(clients);
  for (auto& c : cs) {
    if (kvs_connect(socket.c_str(), &c) != KVS_OK) die(kvs_last_error());
  }
  const auto t0 = clock_type::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < clients; ++t) {
    ts.emplace_back([&, t] {
      kvs_client* c = cs[t];
      const std::string v(kValueBytes, 'k');
      auto cb = [](void* ctx, int rc, const kvs_token* tok) {
        auto* t = static_cast<Tally*>(ctx);
        if (rc != KVS_OK) {
          t->failed.fetch_add(1);
        } else {
          t->written->saw(tok->partition, tok->offset);
        }
      };
      for (long i = t; i < n; i += clients) {
        while (kvs_client_pending(c) >= static_cast<size_t>(window)) {
          if (kvs_client_poll(c, 1000) < 0) die(kvs_last_error());
        }
        const std::string k = key_of(offset + i);
        if (kvs_put_async(c, "t", k.data(), k.size(), v.data(), v.size(), nullptr, cb, &tally) !=
            KVS_OK)
          die(kvs_last_error());
      }
      if (kvs_client_flush(c, 120000) != KVS_OK) die(kvs_last_error());
    });
  }
  for (auto& th : ts) th.join();
  const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
  for (auto* c : cs) kvs_disconnect(c);
  if (tally.failed > 0) die("kvsd: async puts failed");
  return static_cast<double>(n) / s;
}

// The machine's CPU time (all CPUs, in clock ticks) from /proc/stat.
struct CpuTimes {
  uint64_t idle = 0, total = 0;
};
CpuTimes cpu_times(int which = -1) {
  std::ifstream f("/proc/stat");
  std::string cpu, line;
  const std::string want = which < 0 ? "cpu" : "cpu" + std::to_string(which);
  while (f >> cpu && cpu != want) std::getline(f, line);
  CpuTimes t;
  for (int i = 0; i < 10; ++i) {
    uint64_t v = 0;
    if (!(f >> v)) break;
    t.total += v;
    if (i == 3 || i == 4) t.idle += v;  // idle, iowait
  }
  return t;
}
// A /proc stat file's command name and CPU ticks (user + system); false if
// it cannot be read (the process or thread is gone).
bool read_stat(const std::filesystem::path& stat, std::string* name, uint64_t* ticks) {
  std::ifstream f(stat);
  std::string line;
  std::getline(f, line);
  const auto close = line.rfind(')');
  const auto open = line.find('(');
  if (close == std::string::npos || open == std::string::npos) return false;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  *ticks = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14 || i == 15) *ticks += std::stoull(field);
  }
  *name = line.substr(open + 1, close - open - 1);
  return true;
}

// Per thread of process `pid`, "name:tid" -> {nanoseconds run, nanoseconds
// runnable but waiting for a CPU}, from /proc/PID/task/TID/schedstat.
struct Sched {
  uint64_t run_ns = 0, wait_ns = 0;
};
std::map<std::string, Sched> thread_sched(pid_t pid) {
  std::map<std::string, Sched> out;
  const auto dir = "/proc/" + std::to_string(pid) + "/task";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::string name;
    std::getline(std::ifstream(e.path() / "comm"), name);
    Sched s;
    if (std::ifstream(e.path() / "schedstat") >> s.run_ns >> s.wait_ns)
      out[name + ":" + e.path().filename().string()] = s;
  }
  return out;
}
// " name run R% wait W%" for each thread that ran, over `secs` seconds.
std::string sched_report(const std::map<std::string, Sched>& a,
                         const std::map<std::string, Sched>& b, double secs) {
  std::string out;
  for (const auto& [name, s] : b) {
    const auto i = a.find(name);
    const Sched s0 = i == a.end() ? Sched{} : i->second;
    if (s.run_ns == s0.run_ns) continue;
    char line[160];
    std::snprintf(line, sizeof line, " %s run %.0f%% wait %.0f%%", name.c_str(),
                  static_cast<double>(s.run_ns - s0.run_ns) / 1e7 / secs,
                  static_cast<double>(s.wait_ns - s0.wait_ns) / 1e7 / secs);
    out += line;
  }
  return out;
}

// CPU ticks of process `pid`, all its threads; 0 if none.
uint64_t process_ticks(pid_t pid) {
  std::string name;
  uint64_t ticks = 0;
  if (pid <= 0 || !read_stat("/proc/" + std::to_string(pid) + "/stat", &name, &ticks)) return 0;
  return ticks;
}

// CPU ticks of this program, kvsd and the mock broker.
struct Usage {
  uint64_t self = 0, kvsd = 0, mock = 0;
};
Usage usage(pid_t kvsd, pid_t mock) {
  return {process_ticks(::getpid()), process_ticks(kvsd), process_ticks(mock)};
}
// "this program X, kvsd Y, mock Z": microseconds of CPU per put.
std::string cpu_per_put(const Usage& a, const Usage& b, long puts) {
  const double us = 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK)) / static_cast<double>(puts);
  char s[128];
  std::snprintf(s, sizeof s, "this program %.2f, kvsd %.2f, mock %.2f",
                us * static_cast<double>(b.self - a.self),
                us * static_cast<double>(b.kvsd - a.kvsd),
                us * static_cast<double>(b.mock - a.mock));
  return s;
}

double idle_percent(const CpuTimes& a, const CpuTimes& b) {
  return 100.0 * static_cast<double>(b.idle - a.idle) /
         static_cast<double>(std::max<uint64_t>(1, b.total - a.total));
}

// A kvsd on `topic` in its own directory under `dir`, connected.
struct Kvsd {
  std::string socket;
  std::unique_ptr<kvs::test::Child> child;
  kvs_client* c = nullptr;

  Kvsd(const std::filesystem::path& dir, const std::string& name, const std::string& bootstrap,
       const std::string& topic, const std::string& prefix, const std::string& extra_kafka) {
    const auto d = dir / name;
    std::filesystem::create_directories(d);
    socket = (d / "s.sock").string();
    const std::string config = (d / "kvsd.toml").string();
    std::ofstream(config) << "[kvsd]\nsocket_path = \"" << socket << "\"\nshm_prefix = \"" << prefix
                          << "\"\nlog_level = \"warning\"\nsnapshot_interval_s = 0\n"
                          << "[kafka]\n\"bootstrap.servers\" = \"" << bootstrap << "\"\n"
                          << extra_kafka << "[[table]]\nname = \"t\"\ntopic = \"" << topic << "\"\n"
                          << "capacity = 262144\nmemory_limit_bytes = 67108864\n";
    child = std::make_unique<kvs::test::Child>(
        std::vector<std::string>{kvs::test::helper("../kvsd"), "--config", config});
    if (!kvs::test::wait_until([&] { return kvs_connect(socket.c_str(), &c) == KVS_OK; },
                               std::chrono::seconds(60)))
      die(std::string("kvsd: ") + kvs_last_error());
  }
  ~Kvsd() {
    kvs_disconnect(c);
    child->kill(SIGTERM);
    child->wait_for(std::chrono::seconds(30));
  }
};

}  // namespace

int main(int argc, char** argv) {
  long puts = 300000, latency_puts = 1000;
  int clients = 16, rounds = 3;
  long fetch_wait_ms = -1;
  bool profile_kvsd = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--puts")
      puts = std::atol(argv[i + 1]);
    else if (a == "--latency-puts")
      latency_puts = std::atol(argv[i + 1]);
    else if (a == "--clients")
      clients = std::atoi(argv[i + 1]);
    else if (a == "--window")
      g_window = std::atoi(argv[i + 1]);
    else if (a == "--rounds")
      rounds = std::atoi(argv[i + 1]);
    else if (a == "--fetch-wait-ms")
      fetch_wait_ms = std::atol(argv[i + 1]);
    else if (a == "--profile-kvsd")
      profile_kvsd = std::atoi(argv[i + 1]) != 0;
    else
      die("usage: kvs_put_bench [--puts N] [--latency-puts L] [--clients C] [--rounds R] "
          "[--window W] [--fetch-wait-ms W] [--profile-kvsd 1]");
  }
  kvs::test::KafkaCluster kafka(kvs::test::helper("../tests/kvs_mock_kafka"));
  const std::string topic = kvs::test::KafkaCluster::unique_topic("putbench");
  const std::string bare_topic = topic + "-bare";
  if (!kafka.create_topic(topic, kPartitions) || !kafka.create_topic(bare_topic, kPartitions))
    die("cannot create topics");
  if (fetch_wait_ms < 0 && kafka.is_mock()) fetch_wait_ms = 1;
  kvs::test::ShmScope shm;
  const auto dir =
      std::filesystem::temp_directory_path() / ("kvs-put-bench-" + std::to_string(::getpid()));
  std::optional<Kvsd> kvsd;
  kvsd.emplace(dir, "default", kafka.bootstrap(), topic, shm.prefix(), "");
  Bare bare(kafka.bootstrap(), bare_topic);
  Bare shared(kafka.bootstrap(), topic);  // into the table's topic: kvsd applies it
  kvs_table* table = nullptr;
  const kvs_open_options oo{shm.prefix().c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  if (kvs_open("t", &oo, &table) != KVS_OK) die(kvs_last_error());
  Written kvsd_written;
  std::printf(
      "kvs_put_bench: %s Kafka at %s, %d partitions, 16-byte keys, %zu-byte values; "
      "visible on a kvsd with fetch.wait.max.ms %s\n",
      kafka.is_mock() ? "mock" : "external", kafka.bootstrap().c_str(), kPartitions, kValueBytes,
      fetch_wait_ms >= 0 ? std::to_string(fetch_wait_ms).c_str() : "default");
  const std::string v(kValueBytes, 'v');
  long offset_start = 0;
  // Warm-up: connections, metadata, producer ids.
  for (int i = 0; i < 50; ++i) {
    bare.round_trip(key_of(i), v);
    shared.round_trip(key_of(i), v);
    kvsd_round_trip(kvsd->c, key_of(i), v, false);
  }

  if (profile_kvsd) {
    for (int r = 0; r < rounds; ++r, offset_start += puts) {
      const CpuTimes before = cpu_times();
      const int ncpu = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
      std::vector<CpuTimes> per_cpu;
      for (int i = 0; i < ncpu; ++i) per_cpu.push_back(cpu_times(i));
      const auto kvsd_before = thread_sched(kvsd->child->pid());
      const auto mock_before = thread_sched(kafka.mock_pid());
      const auto t0 = clock_type::now();
      const double kt = kvsd_throughput(kvsd->socket, clients, puts, offset_start, kvsd_written);

      const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
      const CpuTimes after = cpu_times();
      std::string idle_each;  // a machine can be idle in part while threads wait for a CPU
      for (int i = 0; i < ncpu; ++i)
        idle_each +=
            (i ? ", " : "") +
            std::to_string(static_cast<int>(idle_percent(per_cpu[i], cpu_times(i)) + 0.5)) + "%";
      const auto kvsd_after = thread_sched(kvsd->child->pid());
      const auto mock_after = thread_sched(kafka.mock_pid());
      wait_applied(table, kvsd_written);
      std::printf(
          "round %d  kvsd, %d clients %9.0f puts/s, machine %.0f%% idle (per CPU %s)\n"
          "  kvsd threads, share of the round run and runnable but waiting:%s\n  mock:%s\n",
          r + 1, clients, kt, idle_percent(before, after), idle_each.c_str(),
          sched_report(kvsd_before, kvsd_after, secs).c_str(),
          sched_report(mock_before, mock_after, secs).c_str());
    }
    kvs_close(table);
    kvsd.reset();
    std::filesystem::remove_all(dir);
    return 0;
  }
  std::vector<double> p50_ratio, p99_ratio, tput_ratio, tput_shared_ratio, tput_one_ratio,
      visible_extra;
  const int one_window = clients * g_window;
  long offset = 0;
  for (int r = 0; r < rounds; ++r) {
    std::vector<double> b, k;
    for (long i = 0; i < latency_puts; ++i, ++offset) {
      b.push_back(bare.round_trip(key_of(offset), v));
      k.push_back(kvsd_round_trip(kvsd->c, key_of(offset), v, false));
    }
    const double bp50 = pct(b, 0.5), bp99 = pct(b, 0.99), kp50 = pct(k, 0.5), kp99 = pct(k, 0.99);
    std::printf(
        "round %d  round trip (us)  bare p50 %7.0f p99 %7.0f | kvsd p50 %7.0f p99 %7.0f "
        "(ratio p50 %.2fx p99 %.2fx)\n",
        r + 1, bp50, bp99, kp50, kp99, kp50 / bp50, kp99 / bp99);
    p50_ratio.push_back(kp50 / bp50);
    p99_ratio.push_back(kp99 / bp99);

    wait_applied(table, shared.written);
    const pid_t kpid = kvsd->child->pid(), mpid = kafka.mock_pid();
    const CpuTimes c0 = cpu_times();
    const Usage u0 = usage(kpid, mpid);
    const double bt = bare.throughput(puts, offset);
    const CpuTimes c1 = cpu_times();
    const Usage u1 = usage(kpid, mpid);
    const double bs = shared.throughput(puts, offset);
    wait_applied(table, shared.written);
    const CpuTimes c2 = cpu_times();
    const Usage u2 = usage(kpid, mpid);
    const double kt = kvsd_throughput(kvsd->socket, clients, puts, offset, kvsd_written);
    const CpuTimes c3 = cpu_times();
    const Usage u3 = usage(kpid, mpid);
    wait_applied(table, kvsd_written);
    const double k1 = kvsd_throughput(kvsd->socket, 1, puts, offset, kvsd_written, one_window);
    wait_applied(table, kvsd_written);
    offset += puts;
    std::printf(
        "round %d  throughput (puts/s) bare producer %9.0f, into the table's topic %9.0f | "
        "kvsd, %d clients %9.0f (ratio %.2fx, %.2fx; machine idle %.0f%%, %.0f%%) | "
        "kvsd, 1 client %9.0f (ratio %.2fx, %.2fx)\n",
        r + 1, bt, bs, clients, kt, kt / bt, kt / bs, idle_percent(c0, c1), idle_percent(c2, c3),
        k1, k1 / bt, k1 / bs);
    // The middle phase, up to kvsd having applied it: kvsd's CPU there is
    // its consumer's, which the kvsd phase pays as well.
    std::printf(
        "round %d  CPU us per put: bare producer phase: %s | into the table's topic: %s | kvsd "
        "phase: %s\n",
        r + 1, cpu_per_put(u0, u1, puts).c_str(), cpu_per_put(u1, u2, puts).c_str(),
        cpu_per_put(u2, u3, puts).c_str());
    tput_ratio.push_back(kt / bt);
    tput_shared_ratio.push_back(kt / bs);
    tput_one_ratio.push_back(k1 / bt);
  }
  kvs_close(table);

  if (fetch_wait_ms >= 0) {
    kvsd.reset();
    kvsd.emplace(dir, "fast-fetch", kafka.bootstrap(), topic, shm.prefix() + "ff.",
                 "\"fetch.wait.max.ms\" = " + std::to_string(fetch_wait_ms) + "\n");
  }
  for (int i = 0; i < 50; ++i) kvsd_round_trip(kvsd->c, key_of(i), v, true);  // READY, warm
  for (int r = 0; r < rounds; ++r) {
    std::vector<double> k, kv;
    for (long i = 0; i < latency_puts; ++i, ++offset) {
      k.push_back(kvsd_round_trip(kvsd->c, key_of(offset), v, false));
      kv.push_back(kvsd_round_trip(kvsd->c, key_of(offset), v, true));
    }
    const double kp50 = pct(k, 0.5), vp50 = pct(kv, 0.5), vp99 = pct(kv, 0.99);
    std::printf(
        "round %d  visible (us)  plain p50 %7.0f | visible p50 %7.0f p99 %7.0f (+%.0f us)\n", r + 1,
        kp50, vp50, vp99, vp50 - kp50);
    visible_extra.push_back(vp50 - kp50);
  }
  std::printf(
      "\nmedian over %d rounds: put p50 %.2fx bare (target <= 1.3x), p99 %.2fx; "
      "throughput with %d clients %.2fx a bare producer into a topic nobody consumes, %.2fx "
      "one into the table's topic (target >= 0.8x); with 1 client (window %d) %.2fx; "
      "visible adds %.0f us at p50 (target <= 1000 us)\n",
      rounds, median(p50_ratio), median(p99_ratio), clients, median(tput_ratio),
      median(tput_shared_ratio), one_window, median(tput_one_ratio), median(visible_extra));
  kvsd.reset();
  std::filesystem::remove_all(dir);
  return 0;
}
