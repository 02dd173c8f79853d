// kvsd under pressure: a table that is full, or whose memory a stuck reader
// holds back, waits in its own partitions only; the other tables go on, the
// lag and the reader to blame are shown, and nothing spins. The real kvsd,
// reader processes and a Kafka cluster over TCP.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "support/kvsd_fixture.hpp"
#include "support/notify_socket.hpp"
#include "support/producer.hpp"

namespace kvs {
namespace {

using namespace std::chrono_literals;

// CPU seconds (user + system) process `pid` has used.
double cpu_seconds(pid_t pid) {
  // Fields 14 and 15 (utime, stime), counted after the parenthesised name.
  const std::string all = test::slurp("/proc/" + std::to_string(pid) + "/stat");
  std::istringstream rest(all.substr(all.rfind(')') + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

class PressureTest : public KvsdTest {
 protected:
  // Table t (topic_, with `t_lines`) and table u (other_topic_).
  std::string write_two_tables(const std::string& t_lines) {
    const std::string path = (dir_ / "kvsd.toml").string();
    std::ofstream(path) << "[kvsd]\nmetrics_listen = \"\"\nsocket_path = \"" << socket_path()
                        << "\"\nshm_prefix = \"" << shm_.prefix() << "\"\nstate_dir = \""
                        << state_dir() << "\"\npoll_timeout_ms = 20\n"
                        << "[kafka]\n\"bootstrap.servers\" = \"" << kafka_.bootstrap() << "\"\n"
                        << "[[table]]\nname = \"t\"\ntopic = \"" << topic_ << "\"\n"
                        << t_lines << "[[table]]\nname = \"u\"\ntopic = \"" << other_topic_
                        << "\"\ncapacity = 65536\nmemory_limit_bytes = 16777216\n";
    return path;
  }
  Table open_table(const std::string& name) {
    std::optional<Table> t;
    EXPECT_TRUE(test::wait_until(
        [&] {
          auto r = Table::open(name, {shm_.prefix()});
          if (r) t.emplace(std::move(*r));
          return r.has_value();
        },
        30s))
        << "kvsd never created table " << name;
    if (!t) throw std::runtime_error("no table " + name);
    return std::move(*t);
  }
  static kvs_table_stats stat(const std::string& prefix, const std::string& name) {
    kvs_open_options o{prefix.c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
    kvs_table* t = nullptr;
    kvs_table_stats s{};
    if (kvs_open(name.c_str(), &o, &t) == KVS_OK) {
      kvs_stat(t, &s);
      kvs_close(t);
    }
    return s;
  }
  kvs_table_stats stat(const std::string& name) { return stat(shm_.prefix(), name); }
  static int64_t next_offset(const Table& t, uint32_t p) {
    auto o = t.partition_offsets(p);
    return o ? o->next_offset : -1;
  }

  std::string other_topic_ = test::KafkaCluster::unique_topic("kvsd-u");
};

// Table t holds its capacity and max_memory_bytes lets it grow no further;
// the next new key waits in t[0] only. Records of t[1] and of table u go on
// meanwhile, a write to u through the socket becomes visible, and deletes
// that t[1] brings make room for the waiting record, which is then applied
// (never skipped).
TEST_F(PressureTest, TableAtItsLimitWaitsInItsOwnPartitionWhileEverythingElseGoesOn) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  ASSERT_TRUE(kafka_.create_topic(other_topic_, 1));
  constexpr int kCapacity = 1024;
  test::Producer p(kafka_.bootstrap());
  for (int i = 0; i < kCapacity; ++i) p.send(topic_, 0, "k" + std::to_string(i), "v");
  p.send(topic_, 0, "overflow", "waits");  // offset 1024
  ASSERT_TRUE(p.flush());
  const uint64_t limit =
      format::geometry(kCapacity, 256, 4 << 20, /*kvsd's change_log_entries=*/65536).segment_bytes;
  auto kvsd = start_kvsd(write_two_tables("capacity = 1024\nmemory_limit_bytes = 4194304\n" +
                                          ("max_memory_bytes = " + std::to_string(limit) + "\n")));
  Table t = open_table("t");
  Table u = open_table("u");
  ASSERT_TRUE(test::wait_until([&] { return stat("t").held_partitions == 1; }, 30s))
      << "t[0] never waited for room\n"
      << log();
  const kvs_table_stats held = stat("t");
  EXPECT_EQ(held.hold_reason, static_cast<uint32_t>(KVS_HOLD_LIMIT));
  EXPECT_EQ(held.segment_bytes, limit);
  EXPECT_EQ(held.entries, static_cast<uint64_t>(kCapacity));
  EXPECT_EQ(next_offset(t, 0), kCapacity) << "the waiting record was skipped";
  // The backlog is true, and its age known.
  ASSERT_TRUE(test::wait_until(
      [&] {
        const kvs_table_stats s = stat("t");
        return s.backlog == 1 && s.oldest_unapplied_unix_ns != 0;
      },
      10s));
  EXPECT_LE(stat("t").oldest_unapplied_unix_ns, format::now_unix_ns());

  // Everything else goes on.
  for (int i = 0; i < 100; ++i) p.send(other_topic_, 0, "u" + std::to_string(i), "x");
  ASSERT_TRUE(p.flush());
  ASSERT_TRUE(test::wait_until([&] { return u.size() == 100; }, 30s))
      << "table u stopped while t was full\n"
      << log();
  auto c = Client::connect(socket_path());
  ASSERT_TRUE(c) << c.error().message;
  auto w = c->put("u", "written", "visible", WriteOptions{5000ms, true});
  ASSERT_TRUE(w) << w.error().message;
  EXPECT_EQ(*u.get_copy("written"), "visible");

  // A write to t that lands behind the waiting record times out, saying why.
  int timed_out = 0;
  for (int i = 0; i < 20; ++i) {
    auto r = c->put("t", "k" + std::to_string(500 + i), "new", WriteOptions{300ms, true});
    if (r) continue;  // t[1]: applied at once
    ++timed_out;
    EXPECT_EQ(r.error().code, Errc::kTimeout);
    EXPECT_NE(r.error().message.find("partition(s) of table t wait for room: the table reached "
                                     "its max_memory_bytes"),
              std::string::npos)
        << r.error().message;
  }
  EXPECT_GT(timed_out, 0) << "no write of 20 landed in t[0]";

  // Deletes in t[1] make room: the waiting records are applied.
  for (int i = 0; i < 10; ++i) p.send(topic_, 1, "k" + std::to_string(i), std::nullopt);
  p.send(topic_, 1, "t1-key", "applied");
  ASSERT_TRUE(p.flush());
  ASSERT_TRUE(test::wait_until([&] { return stat("t").held_partitions == 0; }, 30s)) << log();
  ASSERT_TRUE(test::wait_until(
      [&] {
        const kvs_table_stats s = stat("t");
        return s.backlog == 0 && s.entries == kCapacity - 10 + 2;
      },
      30s))
      << log();
  auto m = contents(t);
  EXPECT_EQ(m.size(), static_cast<size_t>(kCapacity - 10 + 2));
  EXPECT_EQ(m["overflow"], "waits");
  EXPECT_EQ(m["t1-key"], "applied");
  EXPECT_EQ(m.count("k0"), 0u);
  const std::string l = log();
  EXPECT_NE(l.find("waits at offset 1024 until there is room"), std::string::npos) << l;
  EXPECT_NE(l.find("reached max_memory_bytes = " + std::to_string(limit) + ": its segment of " +
                   std::to_string(limit) + " bytes holds 1024 entries"),
            std::string::npos)
      << l;
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// A reader process keeps one read open while table t's values are
// overwritten: the arena fills with memory only it may still see, and
// max_memory_bytes leaves the table no room to grow past it. kvsd names it
// (pid) in the log, the segment, kvsctl stats and STATUS=, waits in t's
// partition only, keeps pinging the watchdog, does not spin, and keeps
// table u current; once the reader is gone everything is applied.
TEST_F(PressureTest, StuckReaderIsNamedAndHoldsBackOnlyItsTable) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  ASSERT_TRUE(kafka_.create_topic(other_topic_, 1));
  test::NotifySocket notify((dir_ / "notify.sock").string());
  ::setenv("NOTIFY_SOCKET", (dir_ / "notify.sock").c_str(), 1);
  ::setenv("WATCHDOG_USEC", "1000000", 1);
  const uint64_t limit =
      format::geometry(1024, 256, 1 << 20, /*kvsd's change_log_entries=*/65536).segment_bytes;
  auto kvsd = start_kvsd(
      write_two_tables("capacity = 1024\nmemory_limit_bytes = 1048576\nmax_value_bytes = 65536\n" +
                       ("max_memory_bytes = " + std::to_string(limit) + "\n")));
  ::unsetenv("NOTIFY_SOCKET");
  ::unsetenv("WATCHDOG_USEC");
  Table t = open_table("t");
  Table u = open_table("u");
  ASSERT_TRUE(t.wait_ready(30s));

  test::Child reader({test::helper("table_worker"), "hold", shm_.prefix(), "t"});
  ASSERT_EQ(reader.read_line(), "holding");
  const auto stuck_at = std::chrono::steady_clock::now();
  // 16 keys overwritten 600 times with 4 KiB values: 2.4 MB through a 1 MiB
  // arena whose replaced blocks the reader may still see.
  constexpr int kRecords = 600;
  test::Producer p(kafka_.bootstrap());
  for (int i = 0; i < kRecords; ++i) {
    p.send(topic_, 0, "key" + std::to_string(i % 16), std::to_string(i) + std::string(4096, 'v'));
  }
  ASSERT_TRUE(p.flush());

  const std::string pid = std::to_string(reader.pid());
  ASSERT_TRUE(test::wait_until([&] { return stat("t").held_partitions == 1; }, 30s)) << log();
  const kvs_table_stats s = stat("t");
  EXPECT_EQ(s.hold_reason, static_cast<uint32_t>(KVS_HOLD_READERS));
  EXPECT_EQ(s.holder_pid, reader.pid());
  EXPECT_GT(s.holder_bytes, 512u << 10);
  EXPECT_NE(s.holder_since_unix_ns, 0u);
  ASSERT_TRUE(test::wait_until(
      [&] { return log().find("reader process " + pid + " (") != std::string::npos; }, 15s))
      << log();
  std::printf("[ figures  ] first log line naming the stuck reader after %.2f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - stuck_at).count());
  EXPECT_NE(log().find("waits at offset"), std::string::npos) << log();

  // Held, kvsd does not spin, pings the watchdog and says why in STATUS=.
  const size_t watchdogs_before = count(notify.text(), "WATCHDOG=1");
  const double cpu_before = cpu_seconds(kvsd->pid());
  const auto wall_before = std::chrono::steady_clock::now();
  // Table u goes on meanwhile.
  for (int i = 0; i < 100; ++i) p.send(other_topic_, 0, "u" + std::to_string(i), "x");
  ASSERT_TRUE(p.flush());
  ASSERT_TRUE(test::wait_until([&] { return u.size() == 100; }, 30s)) << log();
  ASSERT_TRUE(test::wait_until(
      [&] { return count(notify.text(), "WATCHDOG=1") >= watchdogs_before + 3; }, 30s))
      << notify.text();
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_before).count();
  const double cpu = cpu_seconds(kvsd->pid()) - cpu_before;
  std::printf("[ figures  ] kvsd used %.2f CPU-s in %.2f s while held\n", cpu, wall);
  EXPECT_LT(cpu, 0.5 * wall) << "kvsd spins while a reader holds memory back";
  ASSERT_TRUE(test::wait_until(
      [&] {
        const std::string n = notify.text();
        return n.find("wait for room") != std::string::npos &&
               n.find("reader process " + pid) != std::string::npos;
      },
      30s))
      << notify.text();
  EXPECT_EQ(stat("t").held_partitions, 1u);

  // kvsctl stats names it too.
  {
    test::Child ctl(
        {test::helper("../kvsctl"), "--config", (dir_ / "kvsd.toml").string(), "-t", "t", "stats"});
    std::string out;
    for (std::string line; !(line = ctl.read_line()).empty();) out += line + "\n";
    EXPECT_EQ(ctl.wait_for(10s), 0);
    EXPECT_NE(out.find("reader process " + pid), std::string::npos) << out;
    EXPECT_NE(out.find("1 partition(s) wait for room"), std::string::npos) << out;
  }

  // The reader goes: every record is applied, the last value of each key wins.
  reader.kill(SIGKILL);
  EXPECT_EQ(reader.wait(), 128 + SIGKILL);
  ASSERT_TRUE(test::wait_until([&] { return next_offset(t, 0) == kRecords; }, 30s)) << log();
  EXPECT_EQ(stat("t").held_partitions, 0u);
  auto m = contents(t);
  ASSERT_EQ(m.size(), 16u);
  for (int k = 0; k < 16; ++k) {
    const int last = k + 16 * ((kRecords - 1 - k) / 16);
    const std::string& v = m["key" + std::to_string(k)];
    EXPECT_TRUE(v == std::to_string(last) + std::string(4096, 'v'))
        << "key" << k << ": " << v.substr(0, 8) << "..., not " << last;
  }
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// A reader that keeps one read open is named before the table runs out of
// room: once it has held memory back for 3 s, while the table goes on
// applying into the rest of its arena.
TEST_F(PressureTest, StuckReaderIsNamedBeforeTheTableRunsOutOfRoom) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  ASSERT_TRUE(kafka_.create_topic(other_topic_, 1));
  auto kvsd = start_kvsd(write_two_tables("capacity = 1024\nmemory_limit_bytes = 16777216\n"));
  Table t = open_table("t");
  ASSERT_TRUE(t.wait_ready(30s));
  test::Child reader({test::helper("table_worker"), "hold", shm_.prefix(), "t"});
  ASSERT_EQ(reader.read_line(), "holding");
  const auto stuck_at = std::chrono::steady_clock::now();
  test::Producer p(kafka_.bootstrap());
  for (int i = 0; i < 200; ++i) p.send(topic_, 0, "key" + std::to_string(i % 4), "v");
  ASSERT_TRUE(p.flush());
  const std::string named = "reader process " + std::to_string(reader.pid()) + " (";
  ASSERT_TRUE(test::wait_until([&] { return log().find(named) != std::string::npos; }, 15s))
      << log();
  const double after =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - stuck_at).count();
  std::printf("[ figures  ] a reader holding memory back named in the log after %.2f s\n", after);
  EXPECT_NE(log().find("the table uses the rest of its arena meanwhile"), std::string::npos)
      << log();
  EXPECT_EQ(next_offset(t, 0), 200) << "applying stopped";
  EXPECT_EQ(stat("t").held_partitions, 0u);
  EXPECT_EQ(stat("t").holder_pid, reader.pid());
  reader.kill(SIGKILL);
  EXPECT_EQ(reader.wait(), 128 + SIGKILL);
  ASSERT_TRUE(test::wait_until(
      [&] { return log().find("no longer holds memory back") != std::string::npos; }, 15s))
      << log();
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

}  // namespace
}  // namespace kvs
