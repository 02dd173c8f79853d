// Watching a table that kvsd fills (kvs_watch_*, kvsctl watch) and waiting
// for it (kvs_wait): from other processes, woken through kvsd's wait socket,
// against the real kvsd and the test cluster.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/kvsd_fixture.hpp"
#include "support/producer.hpp"
#include "support/test_support.hpp"

namespace kvs {
namespace {

class WatchKvsdTest : public KvsdTest {
 protected:
  static constexpr int kPartitions = 4;
  std::vector<std::string> kvsctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv{test::helper("../kvsctl"), "--config", config_};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  // The waiters kvsd counts, as the segment says (kvs_stat).
  static uint32_t waiters(const Table& t) {
    kvs_table_stats s{};
    return kvs_stat(t.native(), &s) == KVS_OK ? s.waiters : 0;
  }
  static uint64_t wakes(const Table& t) {
    kvs_table_stats s{};
    return kvs_stat(t.native(), &s) == KVS_OK ? s.wakes : 0;
  }
  std::string config_;
};

// kvsctl watch, another process, follows one prefix while kvsd applies
// 100,000 records as fast as the cluster delivers them: it prints every
// change of that prefix once, in offset order per partition, and the value
// it prints is one the key had.
TEST_F(WatchKvsdTest, AWatcherProcessSeesEveryChangeOfAPrefixAtFullSpeed) {
  constexpr int kRecords = 100000;
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  // A ring that holds all of it: no change may be lost, however slowly
  // the watcher is scheduled.
  config_ = write_config("change_log_entries = 262144\n");
  auto kvsd = start_kvsd(config_);
  Table t = open_ready();
  test::Child watcher(kvsctl({"watch", "--prefix", "p/", "--format", "json"}));
  // A watcher that stops printing fails the test rather than hanging it.
  struct Watchdog {
    std::atomic<bool> done{false};
    std::thread thread;
    ~Watchdog() {
      done = true;
      thread.join();
    }
  } watchdog;
  watchdog.thread = std::thread([&] {
    test::wait_until([&] { return watchdog.done.load(); }, 120s);
    if (!watchdog.done) watcher.kill(SIGKILL);
  });
  ASSERT_TRUE(test::wait_until([&] { return waiters(t) == 1; }))
      << "kvsctl watch never announced itself";
  test::Producer p(kafka_.bootstrap());
  // The changes of prefix p/: each put, and each tombstone of a key the
  // table holds (one of an absent key changes nothing). A key's records
  // all go to one partition (9000 is a multiple of kPartitions).
  int expected = 0;
  std::set<std::string> present;
  for (int i = 0; i < kRecords; ++i) {
    const std::string key = (i % 4 == 0 ? "p/" : "q/") + std::to_string(i % 9000);
    const bool tombstone = i % 97 == 0;
    if (key.starts_with("p/")) {
      expected += tombstone ? static_cast<int>(present.erase(key)) : 1;
      if (!tombstone) present.insert(key);
    }
    if (tombstone) {
      p.send(topic_, i % kPartitions, key, std::nullopt);
    } else {
      p.send(topic_, i % kPartitions, key, "v" + std::to_string(i));
    }
  }
  ASSERT_TRUE(p.flush());
  std::map<uint32_t, int64_t> last;  // per partition, the last offset printed
  int seen = 0;
  while (seen < expected) {
    const std::string line = watcher.read_line();
    ASSERT_FALSE(line.empty()) << "kvsctl watch ended (or printed nothing for 120 s) after " << seen
                               << " of " << expected;
    ASSERT_EQ(line.find("\"lost\""), std::string::npos) << "after " << seen;
    ASSERT_NE(line.find("\"key\":\"p/"), std::string::npos) << line;
    const size_t pp = line.find("\"partition\":"), po = line.find("\"offset\":");
    const auto partition = static_cast<uint32_t>(std::stoul(line.substr(pp + 12)));
    const int64_t offset = std::stoll(line.substr(po + 9));
    auto it = last.find(partition);
    ASSERT_TRUE(it == last.end() || it->second < offset)
        << "partition " << partition << ": offset " << offset << " after " << it->second;
    last[partition] = offset;
    ++seen;
  }
  EXPECT_EQ(seen, expected);
  EXPECT_GT(wakes(t), 0u);
  watcher.kill(SIGINT);
  EXPECT_EQ(watcher.wait_for(10s), 0) << "kvsctl watch does not end on Ctrl-C";
  EXPECT_TRUE(test::wait_until([&] { return waiters(t) == 0; }));
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(60s), 0);
}

// kvs_wait sleeps on the futex word: kvsd counts it, wakes it with the batch
// that applies its token, and stops counting it when it returns; a waiter
// killed while it sleeps stops counting too, and from then on kvsd makes no
// wake syscall.
TEST_F(WatchKvsdTest, WaitersAreCountedWokenAndForgotten) {
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  config_ = write_config();
  auto kvsd = start_kvsd(config_);
  Table t = open_ready();
  test::Producer p(kafka_.bootstrap());
  // Offset 0 of partition 1 does not exist yet: kvsctl wait sleeps.
  test::Child waiter(kvsctl({"wait", "1", "0", "--timeout-ms", "60000"}));
  ASSERT_TRUE(test::wait_until([&] { return waiters(t) == 1; }));
  p.send(topic_, 1, "token", "v");
  ASSERT_TRUE(p.flush());
  EXPECT_EQ(waiter.wait_for(30s), 0);
  EXPECT_TRUE(test::wait_until([&] { return waiters(t) == 0; }));
  const uint64_t woken = wakes(t);
  EXPECT_GT(woken, 0u);
  // A watcher killed while it sleeps.
  test::Child sleeper(kvsctl({"watch"}));
  ASSERT_TRUE(test::wait_until([&] { return waiters(t) == 1; }));
  sleeper.kill(SIGKILL);
  sleeper.wait();
  ASSERT_TRUE(test::wait_until([&] {
    p.send(topic_, 0, "nudge", "v");  // the count is published with a batch
    p.flush();
    return waiters(t) == 0;
  })) << "a killed watcher still counts";
  const uint64_t before = wakes(t);
  for (int i = 0; i < 200; ++i) p.send(topic_, i % kPartitions, "k" + std::to_string(i), "v");
  ASSERT_TRUE(p.flush());
  int64_t sent[kPartitions] = {};
  for (int q = 0; q < kPartitions; ++q) {
    auto o = t.partition_offsets(static_cast<uint32_t>(q));
    ASSERT_TRUE(o);
    sent[q] = o->high_watermark;
  }
  ASSERT_TRUE(test::wait_until([&] { return all_applied(t, sent, kPartitions); }));
  EXPECT_EQ(wakes(t), before) << "kvsd woke sleepers that no longer exist";
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(60s), 0);
}

// A watcher keeps its place while kvsd grows the table under it, and a
// restarted kvsd wakes it (the wait socket is new).
TEST_F(WatchKvsdTest, AWatchFollowsAGrowthAndAKvsdRestart) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  config_ = write_config();
  {
    // A table that starts small, so that it grows.
    std::string text = test::slurp(config_);
    text.replace(text.find("capacity = 65536"), 16, "capacity = 1024");
    std::ofstream(config_) << text;
  }
  auto kvsd = start_kvsd(config_);
  Table t = open_ready();
  auto w = t.watch();
  ASSERT_TRUE(w) << w.error().message;
  test::Producer p(kafka_.bootstrap());
  constexpr int kKeys = 5000;  // past the capacity: the table grows (more than once)
  for (int i = 0; i < kKeys; ++i) p.send(topic_, 0, "g/" + std::to_string(i), "v");
  ASSERT_TRUE(p.flush());
  int seen = 0;
  int64_t last = -1;
  while (seen < kKeys) {
    auto c = w->next(30s);
    ASSERT_TRUE(c) << c.error().message;
    ASSERT_TRUE(*c) << "no change within 30 s after " << seen;
    ASSERT_NE((*c)->kind, Change::Kind::kLost) << "after " << seen;
    ASSERT_EQ((*c)->offset, last + 1);
    last = (*c)->offset;
    ++seen;
  }
  EXPECT_NE(log().find("grow"), std::string::npos) << "the table did not grow";
  kvsd->kill(SIGKILL);
  kvsd->wait();
  kvsd = start_kvsd(config_);
  p.send(topic_, 0, "after-restart", "v");
  ASSERT_TRUE(p.flush());
  auto c = w->next(30s);
  ASSERT_TRUE(c && *c) << "the restarted kvsd's change never reached the watch";
  EXPECT_EQ((*c)->key, "after-restart");
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(60s), 0);
}

// kvsd killed (SIGKILL) five times while it applies a stream of records: a
// watch that goes on through the restarts sees every record's change at
// least once (a restart replays some) and is never told it lost any.
TEST_F(WatchKvsdTest, KvsdKilledWhileApplyingLeavesNoGapInTheChanges) {
  constexpr int kRecords = 100000;
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  config_ = write_config("change_log_entries = 262144\n");
  auto kvsd = start_kvsd(config_);
  Table t = open_ready();
  auto w = t.watch();
  ASSERT_TRUE(w) << w.error().message;
  int64_t sent[kPartitions] = {};
  std::thread producer([&] {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < kRecords; ++i) {
      p.send(topic_, i % kPartitions, "k/" + std::to_string(i), "v");
      ++sent[i % kPartitions];
    }
    p.flush();
  });
  std::vector<std::vector<bool>> seen(kPartitions, std::vector<bool>(kRecords, false));
  int distinct = 0, kills = 0;
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (distinct < kRecords && std::chrono::steady_clock::now() < deadline) {
    auto c = w->next(1s);
    ASSERT_TRUE(c) << c.error().message;
    if (!*c) continue;
    ASSERT_NE((*c)->kind, Change::Kind::kLost) << "after " << distinct << " changes";
    ASSERT_LT((*c)->partition, static_cast<uint32_t>(kPartitions));
    ASSERT_GE((*c)->offset, 0);
    ASSERT_LT((*c)->offset, kRecords);
    auto bit = seen[(*c)->partition][static_cast<size_t>((*c)->offset)];
    if (!bit) ++distinct;
    bit = true;
    if (kills < 5 && distinct >= (kills + 1) * kRecords / 7) {
      kvsd->kill(SIGKILL);
      kvsd->wait();
      ++kills;
      kvsd = start_kvsd(config_);
    }
  }
  producer.join();
  EXPECT_EQ(kills, 5);
  for (int q = 0; q < kPartitions; ++q) {
    for (int64_t o = 0; o < sent[q]; ++o) {
      ASSERT_TRUE(seen[q][static_cast<size_t>(o)])
          << "partition " << q << " offset " << o << " never reached the watch (" << distinct
          << " of " << kRecords << " did)";
    }
  }
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(60s), 0);
}

}  // namespace
}  // namespace kvs
