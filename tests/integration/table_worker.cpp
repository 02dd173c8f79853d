// A helper process for the table's multi-process tests.
//
//   table_worker write PREFIX TABLE KEYS OPS   churn OPS writes (0: until killed)
//   table_worker read  PREFIX TABLE KEYS READS verify READS reads; exit 1 on a bad one
//                                              (READS 0: until SIGTERM, and a key once
//                                              read must never be absent again)
//   table_worker hold  PREFIX TABLE            open a guard, say "holding", wait
//   table_worker open-as-nobody PREFIX TABLE   print kvs_open's code as uid 65534
//   table_worker idle  PREFIX TABLE            read once, say "idle", wait (a reader file
//                                              of the segment current then stays)
//   table_worker garbage-lock PREFIX TABLE     put a file that is no reader's under a
//                                              reader's name in the registry, lock it,
//                                              say "locked", wait
//   table_worker pin-each PREFIX TABLE MS      every MS ms open the table anew and begin a
//                                              read never ended (whatever segment is
//                                              current then), up to 300 times
//
// Values are test::make_value(key id, version); versions grow across writer
// restarts because they start from the wall clock.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kvs/kvs.h"
#include "kvs/kvs.hpp"
#include "support/verified_value.hpp"
#include "writer/table_writer.hpp"

namespace {

uint64_t wall_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

int write_mode(const std::string& prefix, const std::string& table, uint64_t keys, uint64_t ops,
               uint64_t arena_bytes) {
  kvs::WriterOptions o;
  o.table = table;
  o.shm_prefix = prefix;
  o.capacity = keys * 2;
  o.arena_bytes = arena_bytes ? arena_bytes : keys * 512 + (1 << 20);
  o.max_value_bytes = 4096;
  o.reader_slots = 64;
  o.dead_reader_check = std::chrono::milliseconds(10);
  auto w = kvs::TableWriter::open(o);
  if (!w) {
    std::fprintf(stderr, "table_worker write: %s\n", w.error().message.c_str());
    return 2;
  }
  uint64_t version = wall_ns();
  for (uint64_t k = 0; k < keys; ++k) {
    if (auto r = (*w)->put(kvs::test::make_key(k), kvs::test::make_value(k, ++version)); !r) {
      std::fprintf(stderr, "table_worker write: %s\n", r.error().message.c_str());
      return 2;
    }
  }
  (*w)->set_state(kvs::format::TableState::kReady);
  std::printf("ready\n");
  std::fflush(stdout);
  for (uint64_t op = 0; ops == 0 || op < ops; ++op) {
    const uint64_t k = (op * 2654435761u) % keys;
    const std::string key = kvs::test::make_key(k);
    kvs::Result<void> r;
    if (op % 7 == 3) {
      auto e = (*w)->erase(key);
      if (!e) r = std::move(e).error();
    } else {
      const std::string value = kvs::test::make_value(k, ++version);
      // kBusy: readers still see the free space; let them move on.
      while (!(r = (*w)->put(key, value)) && r.error().code == kvs::Errc::kBusy) {
        std::this_thread::yield();
        (*w)->reclaim();
      }
    }
    if (!r) {
      std::fprintf(stderr, "table_worker write: op %llu: %s\n", static_cast<unsigned long long>(op),
                   r.error().message.c_str());
      return 2;
    }
    if (op % 64 == 63) (*w)->reclaim();
  }
  std::printf("done\n");
  return 0;
}

volatile sig_atomic_t g_term = 0;

int read_mode(const std::string& prefix, const std::string& table, uint64_t keys, uint64_t reads) {
  const bool until_term = reads == 0;
  if (until_term) {
    struct sigaction sa {};
    sa.sa_handler = [](int) { g_term = 1; };
    ::sigaction(SIGTERM, &sa, nullptr);
  }
  auto t = kvs::Table::open(table, {prefix});
  if (!t) {
    std::fprintf(stderr, "table_worker read: %s\n", t.error().message.c_str());
    return 2;
  }
  std::vector<uint64_t> last(keys, 0);
  uint64_t n = 0, bad = 0, absent = 0;
  bool announced = false;
  std::vector<uint64_t> ks(16);
  std::vector<std::string> names(16);
  std::vector<std::string_view> views(16);
  std::vector<std::optional<std::string_view>> batch;
  uint64_t segment_bytes = 0, sizes = 0;  // the table's sizes seen (a growth changes it)
  while (until_term ? !g_term : n < reads) {
    if (until_term && (n & 4095) == 0) {
      kvs_table_stats st{};
      if (kvs_stat(t->native(), &st) == KVS_OK && st.segment_bytes != segment_bytes) {
        segment_bytes = st.segment_bytes;
        ++sizes;
      }
    }
    auto g = t->read();
    if (!g) {
      std::fprintf(stderr, "table_worker read: %s\n", g.error().message.c_str());
      return 2;
    }
    // Every other guard reads its 16 keys with one multi_get (its batched
    // probe), the others with get.
    const bool batched = (n / 16) % 2 == 1;
    for (int i = 0; i < 16; ++i) {
      ks[i] = ((n + i) * 40503u + static_cast<uint64_t>(::getpid())) % keys;
      names[i] = kvs::test::make_key(ks[i]);
      views[i] = names[i];
    }
    if (batched) {
      auto r = g->multi_get(views);
      if (!r) {
        std::fprintf(stderr, "table_worker read: %s\n", r.error().message.c_str());
        ++bad;
        n += 16;
        continue;
      }
      batch = std::move(*r);
    }
    for (int i = 0; i < 16; ++i, ++n) {
      const uint64_t k = ks[i];
      const std::string& key = names[i];
      std::string_view value;
      if (batched) {
        if (!batch[i]) {
          ++absent;
          if (until_term && last[k] != 0) ++bad;
          continue;
        }
        value = *batch[i];
      } else {
        auto v = g->get(key);
        if (!v) {
          if (v.error().code != kvs::Errc::kNotFound || (until_term && last[k] != 0)) ++bad;
          ++absent;
          continue;
        }
        value = *v;
      }
      uint64_t ver = 0;
      if (!kvs::test::check_value(key, value, &ver) || ver < last[k]) {
        if (bad < 5)
          std::fprintf(stderr, "bad read of key %llu\n", static_cast<unsigned long long>(k));
        ++bad;
      }
      last[k] = ver;
    }
    if (!announced) {
      std::printf("started\n");
      std::fflush(stdout);
      announced = true;
    }
  }
  std::printf("reads=%llu bad=%llu absent=%llu sizes=%llu\n", static_cast<unsigned long long>(n),
              static_cast<unsigned long long>(bad), static_cast<unsigned long long>(absent),
              static_cast<unsigned long long>(sizes));
  return bad == 0 ? 0 : 1;
}

int hold_mode(const std::string& prefix, const std::string& table) {
  kvs_open_options o{prefix.c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  kvs_table* t = nullptr;
  if (int rc = kvs_open(table.c_str(), &o, &t); rc != KVS_OK) {
    std::fprintf(stderr, "table_worker hold: %s\n", kvs_last_error());
    return 2;
  }
  kvs_txn* x = nullptr;
  if (kvs_read_begin(t, &x) != KVS_OK) return 2;
  std::printf("holding\n");
  std::fflush(stdout);
  for (;;) ::pause();  // until killed, guard open
}

// Reads `key` inside one guard and keeps the guard: prints "pinned", then at
// each line on stdin prints "same" if the view still holds the bytes it held,
// else "changed". If the read is refused, prints "refused <code> <error>".
// `pinned_fd` (if >= 0) gets a byte once the key is pinned.
int pin_and_check(kvs_table* t, const std::string& key, int pinned_fd) {
  kvs_txn* x = nullptr;
  const void* v = nullptr;
  size_t len = 0;
  // A churning writer also erases: retry until the key is there.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    if (int rc = kvs_read_begin(t, &x); rc != KVS_OK) {
      std::printf("refused %d %s\n", rc, kvs_last_error());
      std::fflush(stdout);
      return 0;
    }
    const int rc = kvs_get(x, key.data(), key.size(), &v, &len);
    if (rc == KVS_OK) break;
    kvs_read_end(x);
    if (rc != KVS_ENOTFOUND || std::chrono::steady_clock::now() > deadline) return 2;
  }
  const std::string copy(static_cast<const char*>(v), len);
  std::printf("pinned\n");
  std::fflush(stdout);
  if (pinned_fd >= 0 && ::write(pinned_fd, "p", 1) != 1) return 2;
  char c;
  while (::read(0, &c, 1) == 1) {
    if (c != '\n') continue;
    std::printf("%s\n", std::string(static_cast<const char*>(v), len) == copy ? "same" : "changed");
    std::fflush(stdout);
  }
  kvs_read_end(x);
  return 0;
}

// pin: pin_and_check. fork-pin: reads once, then forks; the child pins while
// the parent reads again and exits (what a pre-forking server does).
// pin-no-fds: uses up every file descriptor first.
int pin_mode(const std::string& mode, const std::string& prefix, const std::string& table,
             const std::string& key) {
  kvs_open_options o{prefix.c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  kvs_table* t = nullptr;
  if (kvs_open(table.c_str(), &o, &t) != KVS_OK) {
    std::fprintf(stderr, "table_worker pin: %s\n", kvs_last_error());
    return 2;
  }
  if (mode == "pin-no-fds") {
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = std::min<rlim_t>(rl.rlim_cur, 256);  // few to use up
    ::setrlimit(RLIMIT_NOFILE, &rl);
    std::vector<int> fds;
    fds.reserve(256);
    for (int fd; (fd = ::dup(2)) >= 0;) fds.push_back(fd);
    const int rc = pin_and_check(t, key, -1);
    for (int fd : fds) ::close(fd);  // exit (LeakSanitizer) needs descriptors
    return rc;
  }
  if (mode != "fork-pin") return pin_and_check(t, key, -1);
  kvs_txn* x = nullptr;
  if (kvs_read_begin(t, &x) != KVS_OK) return 2;
  kvs_read_end(x);
  int sync[2];
  if (::pipe(sync) != 0) return 2;
  const pid_t child = ::fork();
  if (child < 0) return 2;
  if (child == 0) {
    ::close(sync[0]);
    return pin_and_check(t, key, sync[1]);
  }
  ::close(sync[1]);
  char c;
  if (::read(sync[0], &c, 1) != 1) return 2;
  if (kvs_read_begin(t, &x) != KVS_OK) return 2;
  kvs_read_end(x);
  return 0;
}

// What a process with only a reader's permissions (the readers' group) can
// try against a table: one line per attempt, "NAME: done" or "NAME: refused
// <errno text>". Keeps what it locked until stdin closes.
void report(const char* name, bool done, int err) {
  std::printf("%s: %s%s\n", name, done ? "done" : "refused ", done ? "" : std::strerror(err));
}

int hostile_mode(const std::string& prefix, const std::string& table,
                 const std::string& victim_file) {
  const std::string data = "/dev/shm/" + prefix + table;
  const std::string reg = data + ".readers";
  // Lock the writer out: the registry, and the data segment.
  int fd = ::open(reg.c_str(), O_RDONLY | O_CLOEXEC);
  report("lock-registry", fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) == 0, errno);
  int dfd = ::open(data.c_str(), O_RDONLY | O_CLOEXEC);
  report("lock-data", dfd >= 0 && ::flock(dfd, LOCK_EX | LOCK_NB) == 0, errno);
  // Zero every announcement in the registry (and keep zeroing them).
  int rw = ::open(reg.c_str(), O_RDWR | O_CLOEXEC);
  struct stat st {};
  void* map = MAP_FAILED;
  if (rw >= 0 && ::fstat(rw, &st) == 0 && st.st_size > 0) {
    map = ::mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0);
  }
  report("zero-registry", map != MAP_FAILED, rw < 0 ? errno : EINVAL);
  // Another reader's file: write it, shrink it.
  int vfd = ::open(victim_file.c_str(), O_RDWR | O_CLOEXEC);
  report("write-victim", vfd >= 0, errno);
  report("truncate-victim", ::truncate(victim_file.c_str(), 0) == 0, errno);
  // A forged reader file announcing epoch 1, with no process behind it.
  const std::string forged = reg + "/r.forged" + std::to_string(::getpid());
  int ffd = ::open(forged.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  bool forged_ok = false;
  if (ffd >= 0) {
    kvs::format::ReaderFileHeader h{};
    h.magic = kvs::format::kReaderFileMagic;
    h.layout_version = kvs::format::kLayoutVersion;
    h.slot_count = kvs::format::kReaderFileSlots;
    h.fingerprint = kvs::format::layout_fingerprint();
    std::vector<uint8_t> bytes(kvs::format::kReaderFileBytes, 0);
    std::memcpy(bytes.data(), &h, sizeof h);
    for (uint32_t i = 0; i < kvs::format::kReaderFileSlots; ++i) {
      const uint64_t one = 1;
      std::memcpy(bytes.data() + 64 * (i + 1), &one, sizeof one);
    }
    forged_ok = ::write(ffd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size());
    ::close(ffd);
  }
  report("forge-reader", forged_ok, errno);
  std::printf("attacked\n");
  std::fflush(stdout);
  // Until stdin closes, keep zeroing what could be zeroed.
  ::fcntl(0, F_SETFL, O_NONBLOCK);
  for (;;) {
    char c;
    const ssize_t n = ::read(0, &c, 1);
    if (n == 0 || (n < 0 && errno != EAGAIN)) break;
    if (map != MAP_FAILED) std::memset(map, 0, st.st_size);
    if (vfd >= 0) ::ftruncate(vfd, 0);
    ::usleep(100);
  }
  return 0;
}

// Monitoring a table without registering as a reader: prints
// "stat <rc> <entries>", then "read <rc> <error>" for a read guard.
int stat_then_read(const std::string& prefix, const std::string& table) {
  kvs_open_options o{prefix.c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  kvs_table* t = nullptr;
  if (kvs_open(table.c_str(), &o, &t) != KVS_OK) {
    std::printf("open %s\n", kvs_last_error());
    return 2;
  }
  kvs_table_stats st{};
  const int rc = kvs_stat(t, &st);
  std::printf("stat %d %llu\n", rc, static_cast<unsigned long long>(st.entries));
  kvs_txn* x = nullptr;
  const int rrc = kvs_read_begin(t, &x);
  std::printf("read %d %s\n", rrc, rrc == KVS_OK ? "" : kvs_last_error());
  if (rrc == KVS_OK) kvs_read_end(x);
  kvs_close(t);
  return 0;
}

int open_as_nobody(const std::string& prefix, const std::string& table) {
  if (::getuid() != 0) return 77;  // cannot drop privileges: skip
  if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 2;
  kvs_open_options o{prefix.c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  kvs_table* t = nullptr;
  const int rc = kvs_open(table.c_str(), &o, &t);
  std::printf("%d %s\n", rc, kvs_last_error());
  return 0;
}

}  // namespace

int idle_mode(const std::string& prefix, const std::string& table) {
  kvs_open_options o{prefix.c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  kvs_table* t = nullptr;
  kvs_txn* x = nullptr;
  if (kvs_open(table.c_str(), &o, &t) != KVS_OK || kvs_read_begin(t, &x) != KVS_OK) return 2;
  kvs_read_end(x);
  std::printf("idle\n");
  std::fflush(stdout);
  for (;;) ::pause();
}

int garbage_lock_mode(const std::string& prefix, const std::string& table) {
  const std::string path =
      "/dev/shm/" + prefix + table + ".readers/r.garbage" + std::to_string(::getpid());
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return 2;
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  if (::fcntl(fd, F_OFD_SETLK, &lk) != 0) return 2;
  const std::string junk(200, 'x');
  if (::write(fd, junk.data(), junk.size()) != static_cast<ssize_t>(junk.size())) return 2;
  std::printf("locked\n");
  std::fflush(stdout);
  for (;;) ::pause();
}

int pin_each_mode(const std::string& prefix, const std::string& table, int ms) {
  kvs_open_options o{prefix.c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  for (int i = 0; i < 300; ++i) {
    kvs_table* t = nullptr;
    kvs_txn* x = nullptr;
    if (kvs_open(table.c_str(), &o, &t) != KVS_OK || kvs_read_begin(t, &x) != KVS_OK) return 2;
    if (i == 0) {
      std::printf("pinning\n");
      std::fflush(stdout);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));  // the pace of the attack
  }
  for (;;) ::pause();
}

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  if ((a.size() == 5 || a.size() == 6) && a[0] == "write") {
    return write_mode(a[1], a[2], std::stoull(a[3]), std::stoull(a[4]),
                      a.size() == 6 ? std::stoull(a[5]) : 0);
  }
  if (a.size() == 5 && a[0] == "read") {
    return read_mode(a[1], a[2], std::stoull(a[3]), std::stoull(a[4]));
  }
  if (a.size() == 3 && a[0] == "hold") return hold_mode(a[1], a[2]);
  if (a.size() == 3 && a[0] == "open-as-nobody") return open_as_nobody(a[1], a[2]);
  if (a.size() == 3 && a[0] == "stat-then-read") return stat_then_read(a[1], a[2]);
  if (a.size() == 3 && a[0] == "idle") return idle_mode(a[1], a[2]);
  if (a.size() == 3 && a[0] == "garbage-lock") return garbage_lock_mode(a[1], a[2]);
  if (a.size() == 4 && a[0] == "pin-each") return pin_each_mode(a[1], a[2], std::stoi(a[3]));
  if (a.size() == 4 && a[0] == "hostile") return hostile_mode(a[1], a[2], a[3]);
  if (a.size() == 4 && (a[0] == "pin" || a[0] == "fork-pin" || a[0] == "pin-no-fds")) {
    return pin_mode(a[0], a[1], a[2], a[3]);
  }
  std::fprintf(stderr, "usage: table_worker write|read|hold|open-as-nobody PREFIX TABLE ...\n");
  return 2;
}
