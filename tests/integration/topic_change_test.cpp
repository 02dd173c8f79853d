// What Kafka operators do to a table's topic, with kvsd (a process) down
// or running: a topic re-created with fewer partitions. The mock cluster
// cannot delete a topic: a mock cluster stopped and started again on the
// same ports with another partition count stands in for it (to kvsd, the
// same brokers now hold a new topic of that name); with KVS_TEST_BOOTSTRAP
// the real cluster deletes and re-creates the topic.
#include <librdkafka/rdkafka.h>
#include <signal.h>

#include <map>
#include <string>

#include "support/kvsd_fixture.hpp"
#include "support/producer.hpp"

namespace kvs {
namespace {

constexpr auto npos = std::string::npos;

class TopicChangeTest : public KvsdTest {
 protected:
  // The topic deleted and re-created with `partitions` partitions.
  void recreate_topic(int partitions) {
    if (kafka_.is_mock()) {
      ASSERT_TRUE(kafka_.restart_with_topic(topic_, partitions))
          << "the mock cluster's ports were taken meanwhile";
      return;
    }
    ASSERT_TRUE(kafka_.delete_topic(topic_));
    // Deletion completes in the background: creating may fail meanwhile.
    ASSERT_TRUE(test::wait_until([&] { return kafka_.create_topic(topic_, partitions); }, 60s));
  }
  // What `kvsctl stats` prints.
  std::string kvsctl_stats() {
    const std::string out = (dir_ / "kvsctl.out").string();
    const std::string cmd = "'" + test::helper("../kvsctl") + "' --config '" +
                            (dir_ / "kvsd.toml").string() + "' stats > '" + out + "' 2>&1";
    return std::system(cmd.c_str()) == 0 ? test::slurp(out) : "failed: " + test::slurp(out);
  }
  // Produces `n` keys prefix0.. to `partition`; what the table should hold.
  std::map<std::string, std::string> produce(const std::string& prefix, int n, int partition) {
    std::map<std::string, std::string> model;
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < n; ++i) {
      p.send(topic_, partition, prefix + std::to_string(i), std::string("v"));
      model[prefix + std::to_string(i)] = "v";
    }
    EXPECT_TRUE(p.flush());
    return model;
  }
  // The segment's record of its cluster cleared (as one whose cluster id
  // was not known): only the partitions can tell the new topic from the
  // old one (the mock cluster that stands in for it has another id).
  void forget_source_cluster() {
    auto m = shm::open_segment(shm_.prefix() + "t", shm::Access::kReadWrite);
    ASSERT_TRUE(m) << m.error().message;
    reinterpret_cast<format::TableHeader*>((*m)->data())->source_cluster.store(0);
  }
};

// Old topic: 2 partitions, keys only in partition 1 (partition 0 empty, so
// its last record cannot be checked). Re-created while kvsd was down with 1
// partition: the segment tracks a partition the topic no longer has, so it
// is rebuilt, whatever partition 0 holds.
TEST_F(TopicChangeTest, ATopicRecreatedWithFewerPartitionsWhileDownIsRebuilt) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  produce("old-", 1000, 1);
  auto kvsd = start_kvsd(write_config());
  {
    Table t = open_ready();
    ASSERT_EQ(t.size(), 1000u);
  }
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0) << log();
  forget_source_cluster();
  recreate_topic(1);
  const auto model = produce("new-", 300, 0);
  kvsd = start_kvsd(write_config("", "snapshot_interval_s = 0\n"));
  Table t = open_table();
  ASSERT_TRUE(test::wait_until([&] { return log().find("rebuilt from the topic") != npos; }, 30s))
      << log();
  EXPECT_NE(log().find("partition"), npos) << log();
  EXPECT_TRUE(t.wait_ready(10s));
  EXPECT_EQ(contents(t), model);
  EXPECT_EQ(t.partition_count(), 1u);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

// Re-created with fewer partitions while kvsd runs: kvsd rebuilds the
// table from the new topic (readers move to it), and still stops when told.
TEST_F(TopicChangeTest, ATopicRecreatedWithFewerPartitionsWhileRunningIsRebuiltAndKvsdStops) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  produce("old-a", 200, 0);
  produce("old-b", 1000, 1);
  auto kvsd = start_kvsd(write_config());
  Table t = open_ready();
  ASSERT_EQ(t.size(), 1200u);
  recreate_topic(1);
  const auto model = produce("new-", 300, 0);
  ASSERT_TRUE(test::wait_until([&] { return contents(t) == model; }, 60s)) << t.size() << " keys\n"
                                                                           << log();
  EXPECT_EQ(t.partition_count(), 1u);
  EXPECT_NE(log().find("fewer than the 2 the table follows"), npos) << log();
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << "kvsd did not stop\n" << log();
}

// A write while the topic is deleted: a broker with Kafka's default
// auto.create.topics.enable=true would create it (one partition, not
// compacted) for a producer that lets it. kvsd's producer does not: the
// write fails, saying the topic is missing, and no topic appears.
TEST_F(TopicChangeTest, AWriteWhileTheTopicIsDeletedFailsAndDoesNotCreateIt) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  auto kvsd = start_kvsd(write_config("", "write_timeout_ms = 5000\n"));
  Table t = open_ready();
  auto c = Client::connect(socket_path());
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_TRUE(c->put("t", "before", "v", {.visible = true}));
  if (kafka_.is_mock()) {
    ASSERT_TRUE(kafka_.restart_with_topic(test::KafkaCluster::unique_topic("other"), 1));
  } else {
    ASSERT_TRUE(kafka_.delete_topic(topic_));
  }
  ASSERT_TRUE(test::wait_until([&] { return kafka_.topic_exists(topic_) == 0; }, 30s));
  // Every write fails. One that reaches librdkafka before kvsd's metadata
  // knows the topic is gone fails with Kafka's error (a broker handle
  // destroyed by the restart, say); once kvsd knows, it says why.
  std::string why;
  bool acknowledged = false;
  EXPECT_TRUE(test::wait_until(
      [&] {
        auto r = c->put("t", "during", "v");
        if (r) {
          acknowledged = true;
          ADD_FAILURE() << "a write to a deleted topic was acknowledged at " << r->partition << ":"
                        << r->offset;
          return true;
        }
        why = r.error().message;
        return why.find("topic " + topic_ + " (table t) does not exist") != npos;
      },
      30s))
      << "the last write failed with: " << why;
  ASSERT_FALSE(acknowledged);
  EXPECT_EQ(kafka_.topic_exists(topic_), 0) << "the write created the topic";
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

// Where Java's default partitioner puts `key` among `n` partitions
// (librdkafka's murmur2 is Java's: WriteTest checks it against kafka-python).
int32_t java_partition(const std::string& key, int32_t n) {
  return rd_kafka_msg_partitioner_murmur2(nullptr, key.data(), key.size(), n, nullptr, nullptr);
}

// The topic grows from 4 to 6 partitions while kvsd runs: once kvsd follows
// 6, its writes land where a Java producer's do, among 6 (two live records
// of a key in two partitions would otherwise both stay after compaction).
// With max_partitions = 4, a VISIBLE write whose key lands in partition 4
// or 5 is refused at once, saying why, not left waiting for its timeout.
TEST_F(TopicChangeTest, WritesUseTheTopicsPartitionCountAndSayWhatIsNotApplied) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 4));
  // Without the fixture's fast metadata refresh: librdkafka's producer then
  // learns of new partitions only every 5 minutes.
  fast_metadata_ = false;
  auto kvsd = start_kvsd(write_config("max_partitions = 4\n", "write_timeout_ms = 20000\n"));
  Table t = open_ready();
  auto c = Client::connect(socket_path());
  ASSERT_TRUE(c) << c.error().message;
  if (kafka_.is_mock()) {
    ASSERT_TRUE(kafka_.restart_with_topic(topic_, 6));
  } else {
    ASSERT_TRUE(kafka_.add_partitions(topic_, 6));
  }
  ASSERT_TRUE(test::wait_until([&] { return log().find("above max_partitions") != npos; }, 30s))
      << log();
  // kvsctl stats says which partitions are not applied.
  ASSERT_TRUE(test::wait_until(
      [&] { return kvsctl_stats().find("partitions 4..5 of the 6") != npos; }, 10s))
      << kvsctl_stats();
  EXPECT_NE(kvsctl_stats().find("READY (not every partition of the topic is applied)"), npos);
  int beyond = 0;
  for (int i = 0; i < 40; ++i) {
    const std::string key = "key-" + std::to_string(i);
    const int32_t want = java_partition(key, 6);
    const auto start = std::chrono::steady_clock::now();
    auto r = c->put("t", key, "v", {.visible = true});
    if (want >= 4) {
      ++beyond;
      ASSERT_FALSE(r) << key << " acknowledged VISIBLE in partition " << r->partition;
      EXPECT_NE(r.error().message.find("partition " + std::to_string(want)), npos)
          << r.error().message;
      EXPECT_NE(r.error().message.find("max_partitions = 4"), npos) << r.error().message;
      EXPECT_LT(std::chrono::steady_clock::now() - start, 5s) << "refused only at its timeout";
      continue;
    }
    ASSERT_TRUE(r) << key << ": " << r.error().message;
    EXPECT_EQ(r->partition, want) << key << " landed where a producer of 4 partitions puts it";
  }
  EXPECT_GT(beyond, 5);
  // Without VISIBLE, a write is taken wherever it lands (other hosts may
  // apply that partition); its token says where.
  for (int i = 0; i < 40; ++i) {
    const std::string key = "plain-" + std::to_string(i);
    auto r = c->put("t", key, "v");
    ASSERT_TRUE(r) << key << ": " << r.error().message;
    EXPECT_EQ(r->partition, java_partition(key, 6)) << key;
  }
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

}  // namespace
}  // namespace kvs
