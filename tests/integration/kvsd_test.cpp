// kvsd end to end: the real binary, a Kafka cluster over TCP (the mock in its
// own process, or KVS_TEST_BOOTSTRAP), an independent producer, and reads
// through libkvs.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>
#include <vector>

#include "support/kvsd_fixture.hpp"
#include "support/notify_socket.hpp"
#include "support/producer.hpp"

namespace kvs {
namespace {

using namespace std::chrono_literals;
constexpr auto npos = std::string::npos;

TEST_F(KvsdTest, RecordsOfAnIndependentProducerAppearAndTombstonesErase) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 4));
  std::map<std::string, std::string> model;
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < 2000; ++i) {
      const std::string k = "key" + std::to_string(i % 700);
      const std::string v = "value" + std::to_string(i);
      // The partition follows the key, as any partitioner would.
      p.send(topic_, static_cast<int>(std::hash<std::string>{}(k) % 4), k, v);
      model[k] = v;
    }
    for (int i = 0; i < 700; i += 7) {
      const std::string k = "key" + std::to_string(i);
      p.send(topic_, static_cast<int>(std::hash<std::string>{}(k) % 4), k, std::nullopt);
      model.erase(k);
    }
    const std::string e = "empty-value";
    p.send(topic_, 0, e, std::string());
    model[e] = "";
    ASSERT_TRUE(p.flush());
  }
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  EXPECT_EQ(contents(t), model);
  EXPECT_EQ(t.partition_count(), 4u);

  // Records written while kvsd runs appear too.
  {
    test::Producer p(kafka_.bootstrap());
    p.send(topic_, 2, "late", "arrival");
    ASSERT_TRUE(p.flush());
  }
  EXPECT_TRUE(test::wait_until([&] { return t.get_copy("late").has_value(); }));
  EXPECT_EQ(*t.get_copy("late"), "arrival");

  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

TEST_F(KvsdTest, ReadyOnAnEmptyTopic) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 3));
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.state(), State::kReady);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

TEST_F(KvsdTest, ReadyAfterALargeTopicWithEveryRecordApplied) {
  constexpr int kPartitions = 8, kKeys = 60000;  // the table holds 65536
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  std::vector<int64_t> records(kPartitions, 0);
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < kKeys; ++i) {
      p.send(topic_, i % kPartitions, "key" + std::to_string(i), "value" + std::to_string(i));
      ++records[i % kPartitions];
    }
    // Overwrites of a tenth of the keys, later in their partitions.
    for (int i = 0; i < kKeys; i += 10) {
      p.send(topic_, i % kPartitions, "key" + std::to_string(i), "new" + std::to_string(i));
      ++records[i % kPartitions];
    }
    ASSERT_TRUE(p.flush(120000));
  }
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready(120s);
  ASSERT_EQ(t.size(), static_cast<uint64_t>(kKeys));
  auto g = t.read();
  ASSERT_TRUE(g);
  for (int i = 0; i < kKeys; ++i) {
    const std::string want = (i % 10 == 0 ? "new" : "value") + std::to_string(i);
    auto v = g->get("key" + std::to_string(i));
    ASSERT_TRUE(v && *v == want) << "key" << i;
  }
  for (uint32_t p = 0; p < kPartitions; ++p) {
    auto off = t.partition_offsets(p);
    ASSERT_TRUE(off);
    EXPECT_EQ(off->next_offset, off->high_watermark) << "partition " << p;
    EXPECT_EQ(off->next_offset, records[p]) << "partition " << p;
  }
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

TEST_F(KvsdTest, RestartAfterSigkillResumesWithoutRereadingWhileReadersRead) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < 500; ++i)
      p.send(topic_, i % 2, "k" + std::to_string(i), "v" + std::to_string(i));
    ASSERT_TRUE(p.flush());
  }
  const std::string cfg = write_config();
  auto kvsd = start_kvsd(cfg);
  Table t = open_ready();
  ASSERT_EQ(t.size(), 500u);
  const uint64_t puts = header().puts.load();
  EXPECT_EQ(puts, 500u);

  // A reader checks every key throughout the kill and the restart.
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0}, rounds{0};
  std::thread reader([&] {
    while (!stop) {
      auto g = t.read();
      if (!g) {
        ++bad;
        continue;
      }
      for (int i = 0; i < 500; ++i) {
        auto v = g->get("k" + std::to_string(i));
        if (!v || *v != "v" + std::to_string(i)) ++bad;
      }
      ++rounds;
    }
  });
  kvsd->kill(SIGKILL);
  EXPECT_EQ(kvsd->wait_for(30s), 128 + SIGKILL);
  const uint64_t rounds_while_down = rounds.load();
  kvsd = start_kvsd(cfg);
  ASSERT_TRUE(test::wait_until([&] { return header().writer_attaches.load() == 2; }));
  ASSERT_TRUE(t.wait_ready(30s));
  EXPECT_TRUE(test::wait_until([&] { return rounds.load() > rounds_while_down + 10; }));
  stop = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_EQ(header().puts.load(), puts) << "a warm restart must not re-apply the topic";
  EXPECT_EQ(t.size(), 500u);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// A replay after a crash never shows a reader an older value than it saw:
// each record of one key carries its own offset; when kvsd is killed while
// it applies them, the value readers see must not be past the offset the
// segment says is applied, because the next kvsd replays from there.
TEST_F(KvsdTest, ReplayAfterSigkillNeverShowsAnOlderValue) {
  constexpr int kRecords = 60000;  // one partition, within the mock's ~5 MB
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < kRecords; ++i) p.send(topic_, 0, "k", std::to_string(i));
    ASSERT_TRUE(p.flush(120000));
  }
  const std::string cfg = write_config();
  auto kvsd = start_kvsd(cfg);
  std::optional<Table> t;
  ASSERT_TRUE(test::wait_until([&] {
    auto r = Table::open("t", {shm_.prefix()});
    if (r) t.emplace(std::move(*r));
    return r.has_value();
  }));
  auto seen = [&] {
    auto v = t->get_copy("k");
    return v ? std::stoll(*v) : -1;
  };
  ASSERT_TRUE(test::wait_until([&] { return seen() >= 1000; }, 60s));
  kvsd->kill(SIGKILL);
  EXPECT_EQ(kvsd->wait_for(30s), 128 + SIGKILL);
  const long long visible = seen();
  auto off = t->partition_offsets(0);
  ASSERT_TRUE(off);
  EXPECT_LT(off->next_offset, kRecords) << "kvsd had applied everything before the kill";
  EXPECT_LE(visible, off->next_offset)
      << "readers see the record at offset " << visible << " but the segment says "
      << off->next_offset << " is next: the replay would show them older values";

  // The restarted kvsd replays from there; readers never see the value go back.
  std::atomic<bool> stop{false};
  std::atomic<long long> back{0};
  std::thread reader([&] {
    long long last = visible;
    while (!stop) {
      const long long v = seen();
      if (v < last) back = last;
      last = std::max(last, v);
    }
  });
  kvsd = start_kvsd(cfg);
  EXPECT_TRUE(t->wait_ready(60s));
  stop = true;
  reader.join();
  EXPECT_EQ(back.load(), 0) << "a reader saw the value go back from offset " << back.load();
  EXPECT_EQ(seen(), kRecords - 1);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

TEST_F(KvsdTest, OversizedRecordsAreSkippedLoggedAndCounted) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  {
    test::Producer p(kafka_.bootstrap());
    p.send(topic_, 0, "ok1", "small");
    p.send(topic_, 0, "big-value", std::string(2000, 'v'));  // offset 1
    p.send(topic_, 0, std::string(300, 'k'), "big key");     // offset 2
    p.send(topic_, 0, "ok2", "small");
    ASSERT_TRUE(p.flush());
  }
  auto kvsd = start_kvsd(write_config("max_key_bytes = 256\nmax_value_bytes = 1000\n"));
  Table t = open_ready();
  EXPECT_EQ(contents(t), (std::map<std::string, std::string>{{"ok1", "small"}, {"ok2", "small"}}));
  EXPECT_EQ(header().skipped.load(), 2u);
  const std::string l = log();
  EXPECT_NE(l.find("offset 1: value of 2000 bytes exceeds table t's limit of 1000"),
            std::string::npos)
      << l;
  EXPECT_NE(l.find("offset 2: key of 300 bytes exceeds table t's limit of 256"), std::string::npos)
      << l;
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// The table is pointed at another topic: the segment cannot be resumed. kvsd
// builds a new one while readers keep the old data, and they switch to the
// new one whole, never to a mix.
TEST_F(KvsdTest, SegmentOfAnotherTopicIsRebuiltWhileReadersKeepTheOldData) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  constexpr int kOld = 50, kNew = 10;
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < kOld; ++i) p.send(topic_, i % 2, "a" + std::to_string(i), "old");
    ASSERT_TRUE(p.flush());
  }
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  ASSERT_EQ(t.size(), static_cast<uint64_t>(kOld));
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0);

  topic_ = test::KafkaCluster::unique_topic("kvsd-other");
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  std::map<std::string, std::string> model;
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < kNew; ++i) {
      p.send(topic_, i % 2, "b" + std::to_string(i), "new");
      model["b" + std::to_string(i)] = "new";
    }
    ASSERT_TRUE(p.flush());
  }
  std::atomic<bool> stop{false}, seen_new{false};
  std::atomic<uint64_t> bad{0}, old_reads{0};
  std::thread reader([&] {
    while (!stop) {
      auto g = t.read();
      if (!g) {
        ++bad;
        continue;
      }
      const bool is_old = g->get("a0").has_value();
      int present = 0;
      for (int i = 0; i < (is_old ? kOld : kNew); ++i) {
        auto v = g->get((is_old ? "a" : "b") + std::to_string(i));
        if (v && *v == (is_old ? "old" : "new")) ++present;
      }
      const bool other = g->get(is_old ? "b0" : "a1").has_value();
      if (present != (is_old ? kOld : kNew) || other) ++bad;
      if (is_old) {
        ++old_reads;
      } else {
        seen_new = true;
      }
    }
  });
  kvsd = start_kvsd(write_config());
  EXPECT_TRUE(test::wait_until([&] { return seen_new.load(); }, 30s)) << log();
  stop = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(old_reads.load(), 0u);
  EXPECT_EQ(contents(t), model);
  EXPECT_EQ(t.state(), State::kReady);
  EXPECT_NE(log().find("filled from another topic"), std::string::npos) << log();
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// A restarted kvsd attaches from the index and walks the arena after READY;
// when the arena's blocks disagree with the index (a stray write while kvsd
// was down), it rebuilds the table from the topic while readers keep the
// data they have.
TEST_F(KvsdTest, ArenaThatDisagreesWithTheIndexAfterARestartIsRebuilt) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  std::map<std::string, std::string> model;
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < 50; ++i) {
      p.send(topic_, i % 2, "a" + std::to_string(i), "v" + std::to_string(i));
      model["a" + std::to_string(i)] = "v" + std::to_string(i);
    }
    ASSERT_TRUE(p.flush());
  }
  auto kvsd = start_kvsd(write_config());
  {
    Table t = open_ready();
    ASSERT_EQ(contents(t), model);
  }
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0);
  {
    // The first block (a live entry) claims twice its size: the chain of
    // blocks misses the start of the second one.
    auto m = shm::open_segment(shm_.prefix() + "t", shm::Access::kReadWrite);
    ASSERT_TRUE(m);
    auto* h = reinterpret_cast<format::TableHeader*>((*m)->data());
    uint32_t bb = 0;
    std::memcpy(&bb, (*m)->data() + h->arena_offset, sizeof bb);
    bb *= 2;
    std::memcpy((*m)->data() + h->arena_offset, &bb, sizeof bb);
  }
  Table t = open_ready();  // the old segment: still READY for readers
  kvsd = start_kvsd(write_config());
  EXPECT_TRUE(test::wait_until(
      [&] { return log().find("rebuilt from the topic") != std::string::npos; }, 30s))
      << log();
  EXPECT_NE(log().find("middle of a block"), std::string::npos) << log();
  EXPECT_EQ(contents(t), model);
  EXPECT_EQ(t.state(), State::kReady);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

class KvsdRetentionTest : public KvsdTest {
 protected:
  // Pushes records out of the mock's log: it keeps about 5 MB per partition.
  // Returns the filler keys and values written.
  std::map<std::string, std::string> overflow_log(int partition) {
    std::map<std::string, std::string> filler;
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < 80; ++i) {
      const std::string k = "f" + std::to_string(i);
      filler[k] = std::string(100 * 1024, static_cast<char>('a' + i % 26));
      p.send(topic_, partition, k, filler[k]);
    }
    EXPECT_TRUE(p.flush());
    return filler;
  }
  // The table holds exactly what the log still holds: the filler records
  // from the log start on, none of the small ones.
  void expect_log_contents(const Table& t, const std::map<std::string, std::string>& filler) {
    const auto [lo, hi] = kafka_.watermarks(topic_, 0);
    ASSERT_GT(lo, 10) << "the mock kept everything; the test needs its 5 MB limit";
    const auto m = contents(t);
    EXPECT_EQ(m.size(), static_cast<size_t>(hi - lo));
    for (const auto& [k, v] : m) {
      auto it = filler.find(k);
      ASSERT_NE(it, filler.end()) << k << " should be gone from the log";
      EXPECT_EQ(v, it->second) << k;
    }
  }
  void SetUp() override {
    KvsdTest::SetUp();
    if (!kafka_.is_mock()) GTEST_SKIP() << "needs the mock cluster's 5 MB per-partition log";
    ASSERT_TRUE(kafka_.create_topic(topic_, 1));
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < 10; ++i) p.send(topic_, 0, "s" + std::to_string(i), "small");
    ASSERT_TRUE(p.flush());
  }
};

// kvsd was down while retention removed records it had not applied: it
// rebuilds at start instead of resuming (which would skip them), and the
// rebuilt segment resumes normally at the next start.
TEST_F(KvsdRetentionTest, RecordsGoneWhileDownLeadToARebuildAtStart) {
  const std::string cfg = write_config();
  auto kvsd = start_kvsd(cfg);
  {
    Table t = open_ready();
    ASSERT_EQ(t.size(), 10u);
  }
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0);
  const auto filler = overflow_log(0);
  kvsd = start_kvsd(cfg);
  segment_.reset();
  Table t = open_ready();
  ASSERT_TRUE(test::wait_until([&] { return !t.get_copy("s0") && t.get_copy("f79"); }, 30s))
      << log();
  expect_log_contents(t, filler);
  EXPECT_NE(log().find("is not in the log"), std::string::npos) << log();
  const uint64_t puts = header().puts.load();
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0);

  kvsd = start_kvsd(cfg);
  ASSERT_TRUE(test::wait_until([&] { return header().writer_attaches.load() == 2; }));
  ASSERT_TRUE(t.wait_ready(30s));
  EXPECT_EQ(count(log(), "rebuilding"), 1u) << log();
  EXPECT_EQ(header().puts.load(), puts) << "the rebuilt segment must resume, not re-read";
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// The same while kvsd runs (here: stopped with SIGSTOP while the log moves
// on): the fetch fails with "offset out of range", kvsd rebuilds, readers
// keep the old data meanwhile.
TEST_F(KvsdRetentionTest, RecordsGoneWhileRunningLeadToARebuild) {
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  ASSERT_EQ(t.size(), 10u);
  kvsd->kill(SIGSTOP);
  const auto filler = overflow_log(0);
  kvsd->kill(SIGCONT);
  ASSERT_TRUE(test::wait_until([&] { return !t.get_copy("s0") && t.get_copy("f79"); }, 30s))
      << log();
  expect_log_contents(t, filler);
  EXPECT_NE(log().find("rebuilding"), std::string::npos) << log();
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

TEST_F(KvsdTest, RecordsOfAbortedTransactionsNeverAppear) {
  if (kafka_.is_mock()) {
    GTEST_SKIP() << "librdkafka 2.0.2's mock cluster writes no transaction markers and reports "
                    "no aborted transactions, so read_committed cannot filter there; run with "
                    "KVS_TEST_BOOTSTRAP";
  }
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  auto p = test::Producer::transactional(kafka_.bootstrap(), "kvs-test-" + topic_);
  ASSERT_TRUE(p.init_transactions());
  auto txn = [&](const std::string& key, bool commit) {
    ASSERT_TRUE(p.begin());
    for (int part = 0; part < 2; ++part) p.send(topic_, part, key + std::to_string(part), key);
    // In the log before the abort: an abort would purge unsent records.
    ASSERT_TRUE(p.flush());
    ASSERT_TRUE(commit ? p.commit() : p.abort());
  };
  txn("committed-a", true);
  txn("aborted-a", false);
  txn("committed-b", true);
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  const std::map<std::string, std::string> before{{"committed-a0", "committed-a"},
                                                  {"committed-a1", "committed-a"},
                                                  {"committed-b0", "committed-b"},
                                                  {"committed-b1", "committed-b"}};
  EXPECT_EQ(contents(t), before);
  // And while kvsd runs: an aborted transaction, then a committed one.
  txn("aborted-c", false);
  txn("committed-d", true);
  // The commit markers reach the two partitions at different moments: wait
  // for the whole committed state, never seeing an aborted key meanwhile.
  auto after = before;
  after["committed-d0"] = after["committed-d1"] = "committed-d";
  bool aborted_seen = false;
  EXPECT_TRUE(test::wait_until(
      [&] {
        const auto now = contents(t);
        for (const auto& [k, v] : now) aborted_seen |= k.rfind("aborted", 0) == 0;
        return now == after;
      },
      30s));
  EXPECT_FALSE(aborted_seen);
  EXPECT_EQ(contents(t), after);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

TEST_F(KvsdTest, SendsReadyAndStatusToSystemd) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  const std::string sock = (dir_ / "notify.sock").string();
  test::NotifySocket notify(sock);
  ::setenv("NOTIFY_SOCKET", sock.c_str(), 1);
  auto kvsd = start_kvsd(write_config());
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_TRUE(
      test::wait_until([&] { return notify.text().find("READY=1") != std::string::npos; }, 30s))
      << notify.text();
  EXPECT_NE(notify.text().find("STATUS=READY"), std::string::npos) << notify.text();
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

TEST_F(KvsdTest, BadConfigExitsWith78NamingFileAndLine) {
  const std::string path = (dir_ / "bad.toml").string();
  std::ofstream(path) << "[[table]]\nname = \"t\"\ntopic = \"x\"\ncapacty = 10\n";
  test::Child c({test::helper("../kvsd"), "--config", path, "--check-config"});
  EXPECT_EQ(c.wait_for(30s), 78);
}

// --check-config runs [kafka] through librdkafka's own validation and names
// the properties kvsd overrides (they passed the check and failed, or were
// silently overridden, at run time).
TEST_F(KvsdTest, CheckConfigValidatesKafkaPropertiesAndNamesOverrides) {
  const std::string bad = (dir_ / "bad.toml").string();
  std::ofstream(bad) << "[kafka]\n\"no.such.property\" = \"1\"\n\"bootstrap.servers\" = \"b:9\"\n"
                        "[[table]]\nname = \"t\"\ntopic = \"x\"\n";
  const std::string err = (dir_ / "check.err").string();
  test::Child c({test::helper("../kvsd"), "--config", bad, "--check-config"}, err);
  EXPECT_EQ(c.wait_for(30s), 78);
  EXPECT_NE(test::slurp(err).find(bad + ":2:22: kafka.no.such.property = \"1\": librdkafka: "),
            std::string::npos)
      << test::slurp(err);

  const std::string overridden = (dir_ / "overridden.toml").string();
  std::ofstream(overridden) << "[kafka]\nacks = \"0\"\n\"bootstrap.servers\" = \"b:9\"\n"
                               "[[table]]\nname = \"t\"\ntopic = \"x\"\n";
  const std::string err2 = (dir_ / "check2.err").string();
  test::Child ok({test::helper("../kvsd"), "--config", overridden, "--check-config"}, err2);
  EXPECT_EQ(ok.wait_for(30s), 0);
  EXPECT_NE(test::slurp(err2).find("<4>kvsd: " + overridden +
                                   ":2:8: kafka.acks = \"0\" is overridden: kvsd uses acks=all"),
            std::string::npos)
      << test::slurp(err2);
}

TEST_F(KvsdTest, MissingTopicIsAClearError) {
  auto kvsd = start_kvsd(write_config("", "topic_wait_s = 2\n"));
  EXPECT_EQ(kvsd->wait_for(30s), 1);
  EXPECT_NE(log().find("topic '" + topic_ + "' does not exist"), std::string::npos) << log();
  EXPECT_NE(log().find("create_topic = true"), std::string::npos) << log();
}

TEST_F(KvsdTest, CreatesAMissingTopicWhenConfigured) {
  if (kafka_.is_mock()) {
    GTEST_SKIP() << "librdkafka 2.0.2's mock cluster has no CreateTopics";
  }
  auto kvsd = start_kvsd(write_config("create_topic = true\ncreate_partitions = 3\n"));
  Table t = open_ready();
  EXPECT_EQ(t.partition_count(), 3u);
  EXPECT_NE(log().find("creating topic " + topic_), std::string::npos) << log();
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// Whether the topic is compacted is asked in the background: READY does not
// wait for it, and a cluster that cannot tell (the mock has no
// DescribeConfigs) gets a log line, a topic with cleanup.policy=delete a
// warning.
TEST_F(KvsdTest, TopicThatIsNotCompactedGetsAWarning) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 1, "delete"));
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  const std::string expected = kafka_.is_mock() ? "cannot tell whether topic " + topic_
                                                : "topic " + topic_ + " has cleanup.policy=delete";
  EXPECT_TRUE(test::wait_until([&] { return log().find(expected) != std::string::npos; }, 30s))
      << log();
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// Started while no broker answers: kvsd waits (saying so) up to
// topic_wait_s, then exits with a clear error rather than hanging or
// claiming the topic does not exist.
TEST_F(KvsdTest, ClusterSilentAtStartIsWaitedForUpToTheBound) {
  if (!kafka_.is_mock()) GTEST_SKIP() << "needs the mock cluster's fault injection";
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  for (int b = 1; b <= 3; ++b) ASSERT_TRUE(kafka_.set_broker_down(b, true));
  auto kvsd = start_kvsd(write_config("", "topic_wait_s = 6\n"));
  EXPECT_EQ(kvsd->wait_for(60s), 1) << log();
  EXPECT_NE(log().find("waiting for Kafka to answer"), std::string::npos) << log();
  EXPECT_NE(log().find("no usable answer from Kafka within 6 s (topic_wait_s)"), std::string::npos)
      << log();
  EXPECT_EQ(log().find("does not exist"), std::string::npos) << log();
  // librdkafka's own lines go through kvsd's logger, with a journald priority.
  EXPECT_NE(log().find("<3>kvsd: librdkafka FAIL: "), std::string::npos) << log();
  EXPECT_EQ(log().find("\n%"), std::string::npos) << log();
  EXPECT_NE(log().rfind("%", 0), 0u) << log();
}

// A real broker that has just started calls every topic unknown for a
// moment; a topic created while kvsd waits is followed, not refused.
TEST_F(KvsdTest, TopicCreatedWhileKvsdWaitsIsFollowed) {
  auto kvsd = start_kvsd(write_config());
  ASSERT_TRUE(
      test::wait_until([&] { return log().find("waiting for topic") != std::string::npos; }, 30s))
      << log();
  ASSERT_TRUE(kvsd->running()) << log();
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  Table t = open_ready(60s);
  EXPECT_EQ(t.partition_count(), 2u);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

TEST_F(KvsdTest, BrokerDownDuringBootstrapThenBack) {
  if (!kafka_.is_mock()) GTEST_SKIP() << "needs the mock cluster's fault injection";
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < 100; ++i) p.send(topic_, i % 2, "k" + std::to_string(i), "v");
    ASSERT_TRUE(p.flush());
  }
  for (int b = 1; b <= 3; ++b) ASSERT_TRUE(kafka_.set_broker_down(b, true));
  auto kvsd = start_kvsd(write_config());
  std::optional<Table> t;
  ASSERT_TRUE(test::wait_until([&] {
    auto r = Table::open("t", {shm_.prefix()});
    if (r) t.emplace(std::move(*r));
    return r.has_value();
  }));
  auto early = t->wait_ready(1500ms);
  EXPECT_FALSE(early) << "READY while every broker is down";
  for (int b = 1; b <= 3; ++b) ASSERT_TRUE(kafka_.set_broker_down(b, false));
  ASSERT_TRUE(t->wait_ready(60s));
  EXPECT_EQ(t->size(), 100u);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// The README's first try: kvsd with librdkafka's mock cluster inside it. The
// same production path serves the socket, the table and any other Kafka
// client at the printed address; "visible" writes answer without waiting
// for the mock's 500 ms fetch timer (kvsd defaults fetch.wait.max.ms to 10
// ms there).
TEST_F(KvsdTest, EmbeddedKafkaServesWritesReadsAndOtherKafkaClients) {
  test::Child kvsd({test::helper("../kvsd"), "--embedded-kafka", "--config", write_config()},
                   log_path());
  const std::string line = kvsd.read_line();  // "" if kvsd exited first
  const std::string prefix = "embedded Kafka: bootstrap.servers=";
  ASSERT_EQ(line.rfind(prefix, 0), 0u) << line << "\n" << log();
  const std::string bootstrap = line.substr(prefix.size());
  // kvsd prints the address on stdout before it logs the warning on stderr.
  EXPECT_TRUE(test::wait_until([&] {
    return log().find("its data lives only as long as this kvsd process") != std::string::npos;
  })) << log();
  Table t = open_ready();
  auto c = Client::connect(socket_path());
  ASSERT_TRUE(c) << c.error().message;

  // A visible write is in this host's table when its answer comes.
  auto tok = c->put("t", "checkout.v2", "on", {.visible = true});
  ASSERT_TRUE(tok) << tok.error().message;
  auto got = t.get_copy("checkout.v2");
  ASSERT_TRUE(got) << "a visible write is not in the table when it is answered";
  EXPECT_EQ(*got, "on");

  // ... and costs a fetch wait, not the mock's 500 ms timer: median over
  // alternated writes, against plain ones (a ratio, not a time; with the
  // 500 ms default it was over 200x).
  std::vector<double> plain, visible;
  for (int i = 0; i < 7; ++i) {
    for (bool v : {false, true}) {
      const auto t0 = std::chrono::steady_clock::now();
      auto r = c->put("t", "k" + std::to_string(i), "v", {.visible = v});
      ASSERT_TRUE(r) << r.error().message;
      (v ? visible : plain)
          .push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  std::sort(plain.begin(), plain.end());
  std::sort(visible.begin(), visible.end());
  EXPECT_LT(visible[3], 50 * plain[3])
      << "visible p50 " << visible[3] * 1e3 << " ms, plain p50 " << plain[3] * 1e3 << " ms";

  // Any Kafka client reaches the embedded cluster at the printed address.
  {
    test::Producer p(bootstrap);
    p.send(topic_, 0, "search.beta", "off");
    ASSERT_TRUE(p.flush());
  }
  ASSERT_TRUE(test::wait_until([&] { return t.get_copy("search.beta").has_value(); }));
  EXPECT_EQ(*t.get_copy("search.beta"), "off");

  kvsd.kill(SIGTERM);
  EXPECT_EQ(kvsd.wait_for(30s), 0);
}

// The config sizes the table differently from its segment: kvsd rebuilds it
// in a segment of the new size (from the snapshot of its last clean stop),
// and a reader that stayed open moves to it.
// Raising max_partitions above a topic's partition count takes effect too.
TEST_F(KvsdTest, ConfigThatResizesATableRebuildsItAndReadersMove) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 3));
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < 100; ++i) p.send(topic_, i % 3, "k" + std::to_string(i), "v");
    ASSERT_TRUE(p.flush());
  }
  auto kvsd = start_kvsd(write_config("max_partitions = 2\n"));
  EXPECT_EQ(kvsd->wait_for(30s), 78) << log();  // EX_CONFIG
  EXPECT_NE(log().find("has 3 partitions, above max_partitions = 2; raise it"), std::string::npos)
      << log();

  kvsd = start_kvsd(write_config("max_partitions = 3\n"));
  Table t = open_ready();
  EXPECT_EQ(t.size(), 100u);
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0);
  const uint64_t incarnation = header().incarnation;
  segment_.reset();

  kvsd = start_kvsd(write_config("max_partitions = 8\n"));
  // The new segment starts from the snapshot the last clean stop wrote.
  ASSERT_TRUE(
      test::wait_until([&] { return count(log(), "readers moved to the new segment") == 2; }, 30s))
      << log();
  EXPECT_NE(log().find("started from snapshot"), std::string::npos) << log();
  EXPECT_NE(log().find("the config sizes it differently from its segment (max_partitions 3 -> 8)"),
            std::string::npos)
      << log();
  EXPECT_NE(header().incarnation, incarnation);
  EXPECT_EQ(header().partition_capacity, 8u);
  // The reader opened before moved to the new segment: it sees what kvsd
  // applies there.
  {
    test::Producer p(kafka_.bootstrap());
    p.send(topic_, 0, "after", "resize");
    ASSERT_TRUE(p.flush());
  }
  ASSERT_TRUE(test::wait_until([&] { return t.get_copy("after").has_value(); }, 10s))
      << "the open reader stayed on the old segment";
  EXPECT_EQ(contents(t).size(), 101u);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// Each --embedded-kafka start begins with an empty cluster, so kvsd starts
// the table afresh; a reader that stayed open moves to the new table
// instead of reading the old one forever.
TEST_F(KvsdTest, EmbeddedRestartMovesOpenReadersToTheNewTable) {
  auto start = [&] {
    auto k = std::make_unique<test::Child>(
        std::vector<std::string>{test::helper("../kvsd"), "--embedded-kafka", "--config",
                                 write_config()},
        log_path());
    EXPECT_EQ(k->read_line().rfind("embedded Kafka: bootstrap.servers=", 0), 0u) << log();
    return k;
  };
  auto kvsd = start();
  Table t = open_ready();
  {
    auto c = Client::connect(socket_path());
    ASSERT_TRUE(c) << c.error().message;
    ASSERT_TRUE(c->put("t", "first", "run", {.visible = true}));
  }
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0);
  kvsd = start();
  {
    auto c = Client::connect(socket_path());
    ASSERT_TRUE(test::wait_until([&] {
      c = Client::connect(socket_path());
      return c.has_value();
    }));
    ASSERT_TRUE(c->put("t", "second", "run", {.visible = true}));
  }
  ASSERT_TRUE(test::wait_until([&] { return t.get_copy("second").has_value(); }, 10s))
      << "the open reader stayed on the first run's table";
  EXPECT_FALSE(t.get_copy("first").has_value());
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// A topic deleted and re-created while kvsd was down, whose new log has
// passed the offsets the segment recorded: kvsd reads the last record it
// applied again, sees another one, and rebuilds. The mock cluster cannot
// delete a topic: a second mock cluster with a topic of the same name
// stands in for the re-created one, and the segment's record of its
// cluster is cleared (as a segment whose cluster id was not known), so that
// only the log's fingerprint can tell. A real cluster deletes and
// re-creates the topic.
TEST_F(KvsdTest, TopicRecreatedWhileDownIsRebuiltThoughItsLogPassedTheRecordedOffsets) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < 30; ++i) p.send(topic_, i % 2, "a" + std::to_string(i), "old");
    ASSERT_TRUE(p.flush());
  }
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  ASSERT_EQ(t.size(), 30u);
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0);

  std::unique_ptr<test::KafkaCluster> second;
  if (kafka_.is_mock()) {
    second = std::make_unique<test::KafkaCluster>();
    bootstrap_ = second->bootstrap();
    auto m = shm::open_segment(shm_.prefix() + "t", shm::Access::kReadWrite);
    ASSERT_TRUE(m) << m.error().message;
    reinterpret_cast<format::TableHeader*>((*m)->data())->source_cluster.store(0);
    ASSERT_TRUE(second->create_topic(topic_, 2));
  } else {
    ASSERT_TRUE(kafka_.delete_topic(topic_));
    // Deletion completes in the background: creating may fail meanwhile.
    ASSERT_TRUE(test::wait_until([&] { return kafka_.create_topic(topic_, 2); }, 60s));
  }
  std::map<std::string, std::string> model;
  {
    test::Producer p(bootstrap_.empty() ? kafka_.bootstrap() : bootstrap_);
    for (int i = 0; i < 60; ++i) {
      p.send(topic_, i % 2, "b" + std::to_string(i), "new");
      model["b" + std::to_string(i)] = "new";
    }
    ASSERT_TRUE(p.flush());
  }
  kvsd = start_kvsd(write_config());
  ASSERT_TRUE(test::wait_until([&] { return log().find("rebuilt from the topic") != npos; }, 30s))
      << log();
  EXPECT_NE(log().find("is not the one its segment applied"), std::string::npos) << log();
  EXPECT_EQ(contents(t), model);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// A restart on the same log checks the last record it applied and resumes
// without rebuilding, even when that record was the partition's last.
TEST_F(KvsdTest, RestartOnTheSameLogChecksTheLastRecordAndResumes) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < 30; ++i) p.send(topic_, i % 2, "a" + std::to_string(i), "v");
    ASSERT_TRUE(p.flush());
  }
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0);
  {
    test::Producer p(kafka_.bootstrap());
    p.send(topic_, 1, "later", "v");
    ASSERT_TRUE(p.flush());
  }
  kvsd = start_kvsd(write_config());
  ASSERT_TRUE(test::wait_until([&] { return t.get_copy("later").has_value(); }, 30s)) << log();
  EXPECT_TRUE(t.wait_ready(10s));
  EXPECT_EQ(log().find("rebuild"), npos) << log();
  EXPECT_EQ(t.size(), 31u);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

// Partitions added to the topic while kvsd runs are followed from their
// beginning: writes through kvsd that land there become visible, and
// records an independent producer writes there appear.
TEST_F(KvsdTest, PartitionsAddedWhileRunningAreFollowed) {
  if (kafka_.is_mock()) {
    GTEST_SKIP() << "librdkafka's mock cluster cannot add partitions to a live topic; set "
                    "KVS_TEST_BOOTSTRAP to a real cluster (ReplicaTest covers the replica's "
                    "part with the mock)";
  }
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  ASSERT_TRUE(kafka_.add_partitions(topic_, 6));
  ASSERT_TRUE(test::wait_until([&] { return t.partition_count() == 6u; }, 30s)) << log();
  EXPECT_NE(log().find("grew from 2 to 6 partitions"), std::string::npos) << log();
  {
    test::Producer p(kafka_.bootstrap());
    p.send(topic_, 5, "in-5", "yes");
    ASSERT_TRUE(p.flush());
  }
  ASSERT_TRUE(test::wait_until([&] { return t.get_copy("in-5").has_value(); }, 30s)) << log();
  // kvsd's own producer learns of the new partitions too; every VISIBLE
  // write is visible when acknowledged, wherever it landed.
  auto c = Client::connect(socket_path());
  ASSERT_TRUE(c) << c.error().message;
  for (int i = 0; i < 200; ++i) {
    auto r = c->put("t", "w" + std::to_string(i), "v", {.visible = true});
    ASSERT_TRUE(r) << r.error().message;
  }
  EXPECT_EQ(t.size(), 201u);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0);
}

}  // namespace
}  // namespace kvs
