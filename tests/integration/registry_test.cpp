// The reader registry under pressure, end to end: kvsd (a process) applies
// overwrites through a small arena, so that it must reuse memory, while
// other processes fill the registry with what kvsd cannot check (a locked
// file that is no reader's, more reader processes than reader_slots, a
// flood of entries) or pin every new segment. What they hold back is the
// segment they could see, for a bounded time or a bounded number of
// segments, and never another table.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <thread>

#include "support/kvsd_fixture.hpp"
#include "support/producer.hpp"

namespace kvs {
namespace {

constexpr auto npos = std::string::npos;

class RegistryTest : public KvsdTest {
 protected:
  // Tables of 1024 keys and a 1 MiB arena: 600 values of 4 KiB need reuse.
  std::string write_small_config(const std::string& extra_table = "",
                                 const std::string& second_table = "") {
    const std::string path = (dir_ / "kvsd.toml").string();
    std::ofstream out(path);
    out << "[kvsd]\nmetrics_listen = \"\"\nsocket_path = \"" << socket_path()
        << "\"\nshm_prefix = \"" << shm_.prefix() << "\"\nstate_dir = \"" << state_dir()
        << "\"\npoll_timeout_ms = 20\n"
        << "snapshot_interval_s = 0\nwrite_timeout_ms = 5000\n"
        << "[kafka]\n\"bootstrap.servers\" = \"" << kafka_.bootstrap() << "\"\n"
        << "\"fetch.wait.max.ms\" = 10\n"
        << "[[table]]\nname = \"t\"\ntopic = \"" << topic_ << "\"\n"
        << "capacity = 1024\nmemory_limit_bytes = 1048576\nmax_value_bytes = 65536\n"
        << extra_table;
    if (!second_table.empty()) {
      out << "[[table]]\nname = \"u\"\ntopic = \"" << second_table << "\"\n"
          << "capacity = 1024\nmemory_limit_bytes = 1048576\nmax_value_bytes = 65536\n";
    }
    return path;
  }
  // 600 overwrites of 16 keys with 4 KiB values.
  void overwrite_round(test::Producer& p) {
    for (int i = 0; i < 600; ++i) {
      p.send(topic_, 0, "key" + std::to_string(i % 16),
             std::to_string(sent_) + std::string(4096, 'v'));
      ++sent_;
    }
    ASSERT_TRUE(p.flush());
  }
  bool all_applied(const Table& t) {
    auto o = t.partition_offsets(0);
    return o && o->next_offset == sent_;
  }
  size_t growths_past_readers() { return count(log(), "the table grows into a new segment"); }
  kvs_table_stats stat(const Table& t) {
    kvs_table_stats s{};
    EXPECT_EQ(kvs_stat(t.native(), &s), KVS_OK);
    return s;
  }
  std::string registry() const { return "/dev/shm/" + shm_.prefix() + "t.readers"; }
  int64_t sent_ = 0;
};

// A file that is no reader's (it does not check), under a reader's name,
// locked by a process for as long as it lives: kvsd counts it as a reader
// of the segment readers opened when kvsd met it. The table grows past it
// once; the new segment reuses its memory freely.
TEST_F(RegistryTest, AnUncheckableFileHoldsBackOnlyTheSegmentItWasMetIn) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  auto kvsd = start_kvsd(write_small_config());
  Table t = open_ready();
  test::Child garbage({test::helper("table_worker"), "garbage-lock", shm_.prefix(), "t"});
  ASSERT_EQ(garbage.read_line(), "locked");
  test::Producer p(kafka_.bootstrap());
  overwrite_round(p);
  ASSERT_TRUE(test::wait_until([&] { return all_applied(t); }, 60s)) << log();
  EXPECT_EQ(growths_past_readers(), 1u) << log();
  for (int round = 0; round < 2; ++round) {
    overwrite_round(p);
    ASSERT_TRUE(test::wait_until([&] { return all_applied(t); }, 60s)) << log();
  }
  EXPECT_EQ(growths_past_readers(), 1u) << "the new segment was held back too\n" << log();
  EXPECT_EQ(stat(t).held_partitions, 0u);
  garbage.kill(SIGKILL);
  EXPECT_EQ(garbage.wait(), 128 + SIGKILL);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

// More reader processes than reader_slots (idle ones of a prefork server
// that each read the table once): kvsd cannot track them all and counts the
// rest as readers of the segment they were met in, not of every segment
// after it.
TEST_F(RegistryTest, MoreReaderProcessesThanReaderSlotsDoNotHoldBackTheNextSegment) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  auto kvsd = start_kvsd(write_small_config("reader_slots = 2\n"));
  Table t = open_ready();
  std::vector<std::unique_ptr<test::Child>> idle;
  for (int i = 0; i < 4; ++i) {
    idle.push_back(std::make_unique<test::Child>(
        std::vector<std::string>{test::helper("table_worker"), "idle", shm_.prefix(), "t"}));
    ASSERT_EQ(idle.back()->read_line(), "idle");
  }
  test::Producer p(kafka_.bootstrap());
  for (int round = 0; round < 3; ++round) {
    overwrite_round(p);
    ASSERT_TRUE(test::wait_until([&] { return all_applied(t); }, 60s)) << log();
  }
  EXPECT_LE(growths_past_readers(), 1u) << "each new segment was held back too\n" << log();
  EXPECT_EQ(stat(t).held_partitions, 0u);
  idle.clear();
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

// A process in the readers' group floods one table's registry with 100,000
// entries while VISIBLE writes go to that table and to another: neither
// table stalls (kvsd looks at the registry a bounded slice at a time), as
// measured against the same writes before the flood, and the entries,
// which are no reader's, are removed. (The flooded table cannot reuse
// memory until kvsd has taken the entries in: its writes here fit in its
// arena, and it does not grow past the flood.)
TEST_F(RegistryTest, AFloodOfRegistryEntriesStallsNoTable) {
  const std::string other = test::KafkaCluster::unique_topic("other");
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  ASSERT_TRUE(kafka_.create_topic(other, 1));
  auto kvsd = start_kvsd(write_small_config("", other));
  Table t = open_ready();
  // Memory of t is being reused from here on: kvsd reads its registry.
  test::Producer p(kafka_.bootstrap());
  overwrite_round(p);
  ASSERT_TRUE(test::wait_until([&] { return all_applied(t); }, 60s)) << log();
  auto c = Client::connect(socket_path());
  ASSERT_TRUE(c) << c.error().message;
  int writes = 0;
  // The slowest of VISIBLE writes to both tables while `go` holds.
  auto slowest_while = [&](const std::function<bool()>& go) {
    double slowest_ms = 0;
    while (go()) {
      for (const char* table : {"t", "u"}) {
        const auto start = std::chrono::steady_clock::now();
        auto r = c->put(table, "k" + std::to_string(writes % 16), std::string(100, 'v'),
                        {.visible = true});
        EXPECT_TRUE(r) << "table " << table << ", write " << writes << ": " << r.error().message;
        if (!r) return -1.0;
        slowest_ms = std::max(slowest_ms, std::chrono::duration<double, std::milli>(
                                              std::chrono::steady_clock::now() - start)
                                              .count());
      }
      ++writes;
    }
    return slowest_ms;
  };
  const double before = slowest_while([&] { return writes < 100; });
  std::atomic<bool> flooding{true};
  std::thread flood([&] {
    for (int i = 0; i < 100000; ++i) {
      const std::string f = registry() + "/r.flood" + std::to_string(i);
      const int fd = ::open(f.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd >= 0) ::close(fd);
    }
    flooding = false;
  });
  // During the flood, and for 3 s after it (the entries are still there).
  std::optional<std::chrono::steady_clock::time_point> after;
  const double during = slowest_while([&] {
    if (flooding) return true;
    if (!after) after = std::chrono::steady_clock::now();
    return std::chrono::steady_clock::now() - *after < 3s;
  });
  flood.join();
  std::printf(
      "[ figures  ] VISIBLE writes to both tables: slowest %.0f ms before the flood, %.0f ms "
      "during it and 3 s after\n",
      before, during);
  ASSERT_GE(during, 0);
  EXPECT_LE(during, 10 * before + 100) << "the flood stalled kvsd's apply loop";
  EXPECT_LE(growths_past_readers(), 2u) << log();
  // The flood's files are no reader's: kvsd removes them as it lists.
  ASSERT_TRUE(test::wait_until(
      [&] {
        size_t n = 0;
        for (const auto& e : std::filesystem::directory_iterator(registry())) {
          n += e.path().filename().string().starts_with("r.flood");
        }
        return n == 0;
      },
      120s))
      << "kvsd left the flood's entries";
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

// A reader that opens a guard on each new segment and never ends it: the
// table grows past it grow_past_readers times (2), then its records wait
// for the reader (HOLD_READERS, the reader named) instead of taking a new
// segment at the write rate until /dev/shm is full. Once the reader is
// gone, the table applies everything.
TEST_F(RegistryTest, AReaderThatPinsEveryNewSegmentGetsABoundedNumberOfThem) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  auto kvsd = start_kvsd(write_small_config());
  Table t = open_ready();
  auto pinner = std::make_unique<test::Child>(std::vector<std::string>{
      test::helper("table_worker"), "pin-each", shm_.prefix(), "t", "100"});
  ASSERT_EQ(pinner->read_line(), "pinning");
  test::Producer p(kafka_.bootstrap());
  const std::string waits = "records wait for them instead of the table growing again";
  for (int round = 0; round < 20 && log().find(waits) == npos; ++round) {
    overwrite_round(p);
    test::wait_until([&] { return all_applied(t) || log().find(waits) != npos; }, 5s);
  }
  ASSERT_NE(log().find(waits), npos) << log();
  EXPECT_EQ(growths_past_readers(), 2u) << log();
  ASSERT_TRUE(test::wait_until([&] { return stat(t).hold_reason == KVS_HOLD_READERS; }, 10s));
  EXPECT_NE(stat(t).holder_pid, 0);
  pinner.reset();  // killed: its guards end with it
  ASSERT_TRUE(test::wait_until([&] { return all_applied(t); }, 60s)) << log();
  EXPECT_EQ(stat(t).held_partitions, 0u);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

}  // namespace
}  // namespace kvs
