// Change notification: kvsd's writer and wait socket (TableWriter, WaitHub)
// in this process, readers in processes of their own.
//
//   kvs_watch_bench [--rounds R] [--records N] [--phases 12345] [--ingest-rounds K]
//
// 1. Wakeup: a watcher process sleeps in kvs_watch_next; the writer applies
//    one record, notes the time and publishes the batch (1 ms apart, R
//    times). Latency = the watcher's return - the publish. Baseline: a bare
//    FUTEX_WAKE of a process sleeping in FUTEX_WAIT, measured the same way.
//    Targets: p50 <= 20 us, p99 <= 200 us.
// 2. kvs_wait for a token the writer applies 1 ms after the waiter sleeps:
//    return - apply. Baseline: the polling kvs_wait had before (a pause
//    that doubles from 20 us to 1 ms). Target: within 100 us.
// 3. Ingest: N records (16-byte keys, 100-byte values, batches of 1024 as
//    kvsd applies them) with no watcher, then with 8 watcher processes of
//    a prefix that 1% of the keys have, then with 8 that take every change.
//    Ratio = rate with / rate without (target >= 0.95x); CPU per record of
//    the writer and of the watchers. Also: the writer without a change log,
//    and pinned to a CPU of its own with the watchers on the other.
// 4. (not by default) The change log's cost alone: ingest with and without
//    it, 2K+1 alternated rounds.
// 5. (not by default) A watch's own CPU per change, hot: a narrow watch
//    (1% prefix) against one that returns every change.
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"
#include "kvs/kvs.hpp"
#include "src/registry.hpp"
#include "wait_hub.hpp"
#include "writer/table_writer.hpp"

namespace {

using namespace kvs;
using kvs::bench::die;
using kvs::bench::own_cpu_seconds;
using Clock = std::chrono::steady_clock;

constexpr int kMaxRounds = 20000;
constexpr int kWatchers = 8;

uint64_t now_ns() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
          .count());
}

// Memory both sides of a fork() see.
struct Shared {
  std::atomic<uint32_t> word;  // the bare futex baseline's
  std::atomic<int> ready;
  std::atomic<int> waiting;  // round the polling baseline waits in (-1: none)
  std::atomic<int> stop;
  std::atomic<uint64_t> seen[kWatchers];
  uint64_t start_ns[kMaxRounds];
  uint64_t end_ns[kMaxRounds];
};

Shared* make_shared_area() {
  void* p =
      ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  return new (p) Shared{};
}

void reset(Shared* s) {
  s->ready = 0;
  s->waiting = -1;
  s->stop = 0;
  for (auto& n : s->seen) n = 0;
  std::memset(s->start_ns, 0, sizeof s->start_ns);
  std::memset(s->end_ns, 0, sizeof s->end_ns);
}

void remove_segments(const std::string& prefix) {
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    if (e.path().filename().string().starts_with(prefix)) std::filesystem::remove_all(e.path());
  }
}

// kvsd's side: a writer of the table and its wait socket.
struct Kvsd {
  std::unique_ptr<TableWriter> w;
  daemon::WaitHub hub;
  const std::atomic<uint32_t>* waiting = nullptr;
  int64_t offset = 0;

  Kvsd(const std::string& prefix, uint64_t log_entries, uint64_t capacity) {
    WriterOptions o;
    o.table = "watch";
    o.shm_prefix = prefix;
    o.capacity = capacity;
    o.arena_bytes = capacity * 256;
    o.change_log_entries = log_entries;
    o.reader_scan_interval = std::chrono::milliseconds(1);
    auto r = TableWriter::open(o);
    if (!r) die(r.error().message);
    w = std::move(*r);
    if (!w->set_partition_count(1)) die("partition count");
    auto c = hub.listen("watch", registry::dir_path(w->segment_name()), 0600,
                        static_cast<gid_t>(-1), 64);
    if (!c) die(c.error().message);
    waiting = *c;
    w->wake_for(waiting);
    if (!hub.start()) die("wait hub");
    w->set_state(format::TableState::kReady);
  }
  ~Kvsd() { hub.stop(); }
  void apply(std::string_view key, std::string_view value) {
    if (!w->apply(key, value, format::Origin{0, 0}, offset)) die("apply");
    w->record_applied(0, offset, 0, key);
    ++offset;
  }
  void wait_waiting(uint32_t n) {
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (waiting->load() != n) {
      if (Clock::now() > deadline) die("waiters never reached " + std::to_string(n));
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
};

Table open_table(const std::string& prefix) {
  for (int i = 0; i < 10000; ++i) {
    auto t = Table::open("watch", OpenOptions{prefix});
    if (t) return std::move(*t);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  die("the table never appeared");
}

struct Percentiles {
  double p50_us, p99_us;
};
Percentiles percentiles(const Shared* s, int rounds) {
  std::vector<double> d;
  for (int i = 0; i < rounds; ++i) {
    if (s->end_ns[i] >= s->start_ns[i] && s->start_ns[i] != 0)
      d.push_back(static_cast<double>(s->end_ns[i] - s->start_ns[i]) / 1e3);
  }
  if (d.empty()) die("no samples");
  std::sort(d.begin(), d.end());
  return {d[d.size() / 2], d[std::min(d.size() - 1, d.size() * 99 / 100)]};
}

int wait_child(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// ---- 1. wakeup
Percentiles bare_futex(Shared* s, int rounds) {
  reset(s);
  s->word = 0;
  const pid_t pid = ::fork();
  if (pid == 0) {
    for (int i = 0; i < rounds; ++i) {
      s->ready = i + 1;
      while (s->word.load() == static_cast<uint32_t>(i)) {
        ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&s->word), FUTEX_WAIT, i, nullptr, nullptr,
                  0);
      }
      s->end_ns[i] = now_ns();
    }
    ::_exit(0);
  }
  for (int i = 0; i < rounds; ++i) {
    while (s->ready.load() != i + 1) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    s->start_ns[i] = now_ns();
    s->word.store(static_cast<uint32_t>(i + 1));
    ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&s->word), FUTEX_WAKE, INT_MAX, nullptr,
              nullptr, 0);
  }
  wait_child(pid);
  return percentiles(s, rounds);
}

Percentiles watch_wakeup(Shared* s, const std::string& prefix, int rounds) {
  reset(s);
  remove_segments(prefix);  // the child must not find the last measurement's table
  const pid_t pid = ::fork();
  if (pid == 0) {
    Table t = open_table(prefix);
    auto w = t.watch();
    if (!w) ::_exit(2);
    s->ready = 1;
    for (int i = 0; i < rounds;) {
      auto c = w->next(std::chrono::seconds(10));
      if (!c || !*c) ::_exit(3);
      s->end_ns[i++] = now_ns();
    }
    ::_exit(0);
  }
  Kvsd k(prefix, 65536, 1 << 16);
  k.wait_waiting(1);
  for (int i = 0; i < rounds; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    k.apply("lat/" + std::to_string(i), "v");
    s->start_ns[i] = now_ns();
    k.w->publish_batch();
  }
  if (wait_child(pid) != 0) die("the watcher failed");
  return percentiles(s, rounds);
}

// ---- 2. kvs_wait
Percentiles token_wait(Shared* s, const std::string& prefix, int rounds, bool polling) {
  reset(s);
  remove_segments(prefix);
  const pid_t pid = ::fork();
  if (pid == 0) {
    Table t = open_table(prefix);
    for (int i = 0; i < rounds; ++i) {
      s->waiting = i;
      if (polling) {
        // kvs_wait as it was: poll, the pause doubling from 20 us to 1 ms.
        auto pause = std::chrono::microseconds(20);
        while (t.partition_offsets(0)->next_offset <= i) {
          std::this_thread::sleep_for(pause);
          pause = std::min(pause * 2, std::chrono::microseconds(1000));
        }
      } else if (!t.wait(Token{0, i}, std::chrono::seconds(10))) {
        ::_exit(3);
      }
      s->end_ns[i] = now_ns();
    }
    ::_exit(0);
  }
  Kvsd k(prefix, 65536, 1 << 16);
  for (int i = 0; i < rounds; ++i) {
    // The waiter sleeps (kvsd counts it), and the record comes 1 ms later.
    while (s->waiting.load() != i) std::this_thread::yield();
    if (!polling) k.wait_waiting(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    k.apply("tok/" + std::to_string(i), "v");
    s->start_ns[i] = now_ns();
    k.w->publish_batch();
    while (__atomic_load_n(&s->end_ns[i], __ATOMIC_ACQUIRE) == 0) std::this_thread::yield();
  }
  if (wait_child(pid) != 0) die("the waiter failed");
  return percentiles(s, rounds);
}

// ---- 3. ingest
struct Ingest {
  double seconds, writer_cpu_ns, watcher_cpu_ns;
  uint64_t wakes;
};

void pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % std::max(1, static_cast<int>(std::thread::hardware_concurrency())), &set);
  ::sched_setaffinity(0, sizeof set, &set);
}

void unpin() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (unsigned c = 0; c < std::thread::hardware_concurrency(); ++c) CPU_SET(c, &set);
  ::sched_setaffinity(0, sizeof set, &set);
}

// pin: the writer on CPU 0 and the watchers on CPU 1 (as kvsd given a core
// of its own with systemd's CPUAffinity=).
Ingest ingest(Shared* s, const std::string& prefix, long records, int watchers, bool all_changes,
              uint64_t log_entries, bool pin = false) {
  reset(s);
  remove_segments(prefix);
  std::vector<pid_t> pids;
  for (int j = 0; j < watchers; ++j) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (pin) pin_to(1);
      Table t = open_table(prefix);
      auto w = all_changes ? t.watch() : t.watch(Watch::Filter::kPrefix, "k1");
      if (!w) ::_exit(2);
      s->ready.fetch_add(1);
      uint64_t seen = 0;  // counted here: a shared counter would cost more than the watch
      while (!s->stop.load(std::memory_order_relaxed)) {
        auto c = w->next(std::chrono::milliseconds(100));
        if (!c) ::_exit(3);
        seen += c->has_value();
      }
      s->seen[j] = seen;
      ::_exit(0);
    }
    pids.push_back(pid);
  }
  if (pin) pin_to(0);
  Kvsd k(prefix, log_entries, static_cast<uint64_t>(records) * 2);
  while (s->ready.load() != watchers) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  k.wait_waiting(static_cast<uint32_t>(watchers));
  char key[32], value[128];
  std::memset(value, 'v', 100);
  const double cpu0 = own_cpu_seconds();
  const auto t0 = Clock::now();
  for (long i = 0; i < records; ++i) {
    // 1% of the keys start with "k1" (the prefix watchers' filter).
    std::snprintf(key, sizeof key, "k%c%014ld", i % 100 == 0 ? '1' : '0', i);
    k.apply(std::string_view(key, 16), std::string_view(value, 100));
    if (i % 1024 == 1023) {
      k.w->publish_batch();
      k.w->reclaim();
    }
  }
  k.w->publish_batch();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = own_cpu_seconds() - cpu0;
  if (pin) unpin();
  s->stop = 1;
  double watcher_cpu = 0;
  for (pid_t pid : pids) {
    watcher_cpu += bench::cpu_seconds_of(pid);
    wait_child(pid);
  }
  return Ingest{secs, cpu * 1e9 / static_cast<double>(records),
                watchers ? watcher_cpu * 1e9 / static_cast<double>(records) / watchers : 0,
                k.w->header().wakes.load()};
}

double thread_cpu_seconds() {
  timespec t{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) / 1e9;
}

// ---- 5. a watch's own cost per change
// The writer applies batches of 1,024 and the same thread drains a watch
// after each (the entries are in its cache): CPU per change of a narrow
// watch (1% prefix, most changes skipped on their first entry) and of one
// that returns every change.
double hot_read_ns(const std::string& prefix, long records, bool narrow) {
  remove_segments(prefix);
  Kvsd k(prefix, 65536, static_cast<uint64_t>(records) * 2);
  Table t = open_table(prefix);
  auto w = narrow ? t.watch(Watch::Filter::kPrefix, "k1") : t.watch();
  if (!w) die("watch");
  char key[32], value[128];
  std::memset(value, 'v', 100);
  double cpu = 0;
  for (long i = 0; i < records; ++i) {
    std::snprintf(key, sizeof key, "k%c%014ld", i % 100 == 0 ? '1' : '0', i);
    k.apply(std::string_view(key, 16), std::string_view(value, 100));
    if (i % 1024 != 1023 && i + 1 != records) continue;
    k.w->publish_batch();
    k.w->reclaim();
    const double cpu0 = thread_cpu_seconds();
    for (;;) {
      auto c = w->next(std::chrono::milliseconds(0));
      if (!c || !*c) break;
    }
    cpu += thread_cpu_seconds() - cpu0;
  }
  return cpu * 1e9 / static_cast<double>(records);
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 2000;
  long records = 1000000;
  std::string phases = "123";
  int ingest_rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--rounds") rounds = std::min(kMaxRounds, std::atoi(argv[i + 1]));
    if (a == "--records") records = std::atol(argv[i + 1]);
    if (a == "--phases") phases = argv[i + 1];
    if (a == "--ingest-rounds") ingest_rounds = std::max(1, std::atoi(argv[i + 1]));
  }
  const std::string prefix = "kvsb" + std::to_string(::getpid()) + ".";
  Shared* s = make_shared_area();
  if (phases.find('1') != std::string::npos) {
    const auto bare = bare_futex(s, rounds);
    const auto w = watch_wakeup(s, prefix, rounds);
    std::printf(
        "wakeup, %d rounds: watcher p50 %.1f us p99 %.1f us; bare futex p50 %.1f us p99 %.1f us; "
        "ratio p50 %.2fx p99 %.2fx (targets: p50 <= 20 us, p99 <= 200 us)\n",
        rounds, w.p50_us, w.p99_us, bare.p50_us, bare.p99_us, w.p50_us / bare.p50_us,
        w.p99_us / bare.p99_us);
  }
  if (phases.find('2') != std::string::npos) {
    const int n = std::max(1, rounds / 4);
    const auto polled = token_wait(s, prefix, n, /*polling=*/true);
    const auto woken = token_wait(s, prefix, n, /*polling=*/false);
    std::printf(
        "kvs_wait, token applied 1 ms after the wait began, %d rounds: return - apply p50 %.1f us "
        "p99 %.1f us; polling (before) p50 %.1f us p99 %.1f us; ratio p50 %.3fx (target: within "
        "100 us)\n",
        n, woken.p50_us, woken.p99_us, polled.p50_us, polled.p99_us, woken.p50_us / polled.p50_us);
  }
  if (phases.find('3') != std::string::npos) {
    // Alternated, medians of `ingest_rounds`: the machine's noise hits each alike.
    std::vector<Ingest> none, nolog, some, every, none_pinned, some_pinned;
    for (int r = 0; r < ingest_rounds; ++r) {
      none.push_back(ingest(s, prefix, records, 0, false, 65536));
      some.push_back(ingest(s, prefix, records, kWatchers, false, 65536));
      every.push_back(ingest(s, prefix, records, kWatchers, true, 65536));
      nolog.push_back(ingest(s, prefix, records, 0, false, 0));
      none_pinned.push_back(ingest(s, prefix, records, 0, false, 65536, true));
      some_pinned.push_back(ingest(s, prefix, records, kWatchers, false, 65536, true));
    }
    auto median = [](std::vector<Ingest> v) {
      std::sort(v.begin(), v.end(),
                [](const Ingest& a, const Ingest& b) { return a.seconds < b.seconds; });
      return v[v.size() / 2];
    };
    const Ingest n = median(none), nl = median(nolog), so = median(some), ev = median(every);
    const Ingest np = median(none_pinned), sp = median(some_pinned);
    auto rate = [&](const Ingest& x) { return static_cast<double>(records) / x.seconds; };
    std::printf(
        "ingest of %ld records, medians of %d: no watcher %.0f rec/s (writer %.0f ns CPU/rec, "
        "%llu wakes); without a change log %.0f rec/s (%.0f ns/rec): the log costs %.3fx\n",
        records, ingest_rounds, rate(n), n.writer_cpu_ns, static_cast<unsigned long long>(n.wakes),
        rate(nl), nl.writer_cpu_ns, rate(n) / rate(nl));
    std::printf(
        "  8 watchers of a 1%% prefix: %.0f rec/s, ratio %.3fx (target >= 0.95x); writer %.0f "
        "ns CPU/rec (%.3fx), each watcher %.1f ns CPU/rec, %llu wakes\n",
        rate(so), rate(so) / rate(n), so.writer_cpu_ns, so.writer_cpu_ns / n.writer_cpu_ns,
        so.watcher_cpu_ns, static_cast<unsigned long long>(so.wakes));
    std::printf(
        "  8 watchers of every change: %.0f rec/s, ratio %.3fx; writer %.0f ns CPU/rec (%.3fx), "
        "each watcher %.1f ns CPU/rec, %llu wakes\n",
        rate(ev), rate(ev) / rate(n), ev.writer_cpu_ns, ev.writer_cpu_ns / n.writer_cpu_ns,
        ev.watcher_cpu_ns, static_cast<unsigned long long>(ev.wakes));
    std::printf(
        "  writer pinned to CPU 0, watchers to CPU 1: no watcher %.0f rec/s; 8 watchers of a 1%% "
        "prefix %.0f rec/s, ratio %.3fx; writer %.0f / %.0f ns CPU/rec\n",
        rate(np), rate(sp), rate(sp) / rate(np), np.writer_cpu_ns, sp.writer_cpu_ns);
  }
  if (phases.find('4') != std::string::npos) {
    // The change log's cost to the writer alone: with and without, alternated.
    std::vector<double> with, without, with_cpu, without_cpu;
    for (int r = 0; r < 2 * ingest_rounds + 1; ++r) {
      const Ingest a = ingest(s, prefix, records, 0, false, 65536);
      const Ingest b = ingest(s, prefix, records, 0, false, 0);
      with.push_back(a.seconds);
      without.push_back(b.seconds);
      with_cpu.push_back(a.writer_cpu_ns);
      without_cpu.push_back(b.writer_cpu_ns);
    }
    auto med = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    std::printf(
        "change log, %zu rounds: ingest with / without %.3fx (rate); writer CPU %.0f / %.0f ns per "
        "record\n",
        with.size(), med(without) / med(with), med(with_cpu), med(without_cpu));
  }
  if (phases.find('5') != std::string::npos) {
    const double narrow = hot_read_ns(prefix, records, true);
    const double all = hot_read_ns(prefix, records, false);
    std::printf(
        "a watch's CPU per change, in the writer's thread after each batch: 1%% prefix %.1f ns, "
        "every change %.1f ns (%.2fx)\n",
        narrow, all, narrow / all);
  }
  remove_segments(prefix);
  return 0;
}
