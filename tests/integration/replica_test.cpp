// kvsd's replica of one table (daemon/replica.cpp) driven directly: its
// consumer against a Kafka cluster over TCP (the mock in its own process, or
// KVS_TEST_BOOTSTRAP), its segment read through libkvs. Covers what the
// mock cluster cannot show end to end: it cannot add partitions to a live
// topic, so the replica is opened on fewer partitions than the topic has and
// then told that the topic grew, as kvsd's partition poll does.
#include "replica.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "kafka/consumer.hpp"
#include "kafka/watermark_poller.hpp"
#include "kvs/kvs.hpp"
#include "support/kafka_cluster.hpp"
#include "support/kvsd_fixture.hpp"
#include "support/producer.hpp"
#include "support/test_support.hpp"

namespace kvs {
namespace {

using namespace std::chrono_literals;
using daemon::Replica;

class ReplicaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    topic_ = test::KafkaCluster::unique_topic("replica");
    cfg_.shm_prefix = shm_.prefix();
    cfg_.state_dir = "/nonexistent/kvs-replica-test";  // no snapshots to start from
    cfg_.dead_reader_check_ms = 10;
    tc_.name = "t";
    tc_.topic = topic_;
    tc_.capacity = 4096;
    tc_.memory_limit_bytes = 4 << 20;
    tc_.max_partitions = 8;
  }

  std::unique_ptr<kafka::Consumer> consumer() {
    auto c = kafka::Consumer::create({{"bootstrap.servers", kafka_.bootstrap()},
                                      {"topic.metadata.refresh.interval.ms", "1000"}});
    if (!c) throw std::runtime_error(c.error().message);
    return std::make_unique<kafka::Consumer>(std::move(*c));
  }

  // Polls and applies, as kvsd's loop does, until `done` or the deadline.
  bool apply_until(Replica& t, kafka::Consumer& c, const std::function<bool()>& done,
                   std::chrono::milliseconds limit = 30s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    rd_kafka_message_t* batch[256];
    while (std::chrono::steady_clock::now() < deadline) {
      const size_t n = c.poll_batch(20, batch, 256);
      for (size_t i = 0; i < n; ++i) {
        EXPECT_TRUE(daemon::apply_message(t, c, batch[i]));
        kafka::Consumer::release(batch[i]);
      }
      EXPECT_TRUE(daemon::end_batch(t, c));
      (void)daemon::check_ready(t);
      if (done()) return true;
    }
    return false;
  }

  // True once every partition of the topic is applied up to its end.
  bool caught_up(Replica& t, kafka::Consumer& c, int32_t partitions) {
    auto wms = c.watermarks(topic_, partitions, 2000);
    if (!wms) return false;
    for (int32_t p = 0; p < partitions; ++p) {
      if (p >= t.partition_count() ||
          t.writer->next_offset(static_cast<uint32_t>(p)) < (*wms)[p].second) {
        return false;
      }
    }
    return true;
  }

  // A replica of table t (cfg_, tc_) on the topic's first `partitions`
  // partitions, applied until READY.
  Replica ready_replica(kafka::Consumer& c, int32_t partitions) {
    auto opened = daemon::open_replica(cfg_, tc_, static_cast<gid_t>(-1), false);
    if (!opened) throw std::runtime_error(opened.error().message);
    Replica t = std::move(*opened);
    std::vector<kafka::PartitionStart> starts;
    if (!daemon::open_partitions(t, c, partitions, starts) || !c.assign(starts)) {
      throw std::runtime_error("the replica's partitions could not be opened");
    }
    if (!apply_until(t, c, [&] { return t.ready; })) throw std::runtime_error("never READY");
    return t;
  }

  test::KafkaCluster kafka_;
  test::ShmScope shm_;
  std::string topic_;
  config::Config cfg_;
  config::TableConfig tc_;
};

// The topic has 4 partitions; the replica starts on 2 of them, as kvsd did
// before the topic grew, and is then told of 4. Keys move to the new
// partitions with later timestamps, and one is deleted there; then a stale
// producer writes two keys to their old partitions with older timestamps.
// Every host must end with the same table whatever the interleaving: the
// later timestamp wins.
TEST_F(ReplicaTest, FollowsPartitionsAddedToItsTopicAndTheLaterRecordOfAKeyWins) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 4));
  const int64_t t0 = 1700000000000;
  constexpr int kKeys = 40;
  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < kKeys; ++i) p.send_at(topic_, i % 2, "k" + std::to_string(i), "old", t0);
    ASSERT_TRUE(p.flush());
  }
  auto c = consumer();
  Replica t = ready_replica(*c, 2);
  auto table = Table::open("t", {shm_.prefix()});
  ASSERT_TRUE(table) << table.error().message;
  EXPECT_EQ(table->partition_count(), 2u);
  EXPECT_EQ(table->size(), static_cast<uint64_t>(kKeys));

  {
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < kKeys; ++i)
      p.send_at(topic_, 2 + i % 2, "k" + std::to_string(i), "new", t0 + 1000);
    p.send_at(topic_, 3, "k1", std::nullopt, t0 + 2000);  // deleted after it moved
    ASSERT_TRUE(p.flush());
  }
  // kvsd's poller learns the topic's partition count from the consumer's
  // metadata, though the consumer is assigned only 2 of them.
  kafka::WatermarkPoller poller(*c, 1s, 2s);
  poller.follow(topic_, 2);
  ASSERT_TRUE(test::wait_until([&] { return poller.partition_count(topic_) == 4; }, 10s));
  ASSERT_TRUE(daemon::follow_new_partitions(t, *c, poller, poller.partition_count(topic_)));
  ASSERT_TRUE(apply_until(t, *c, [&] { return caught_up(t, *c, 4); }));
  {
    // A producer that has not seen the new partitions yet, with an older
    // clock, writes after them: its records lose to the later ones (applied
    // last here, they would win without the rule).
    test::Producer p(kafka_.bootstrap());
    p.send_at(topic_, 0, "k2", "stale", t0 + 500);
    p.send_at(topic_, 1, "k1", "stale", t0 + 1500);
    ASSERT_TRUE(p.flush());
  }
  ASSERT_TRUE(apply_until(t, *c, [&] { return caught_up(t, *c, 4); }));

  std::map<std::string, std::string> want;
  for (int i = 0; i < kKeys; ++i) want["k" + std::to_string(i)] = "new";
  want.erase("k1");
  EXPECT_EQ(table->partition_count(), 4u);
  EXPECT_EQ(test::contents(*table), want);
  // A token of a new partition is waited for, not refused.
  kvs_token tok{3, t.writer->next_offset(3) - 1};
  EXPECT_EQ(kvs_wait(table->native(), &tok, 1000), KVS_OK) << kvs_last_error();

  // A second host that reads the grown topic from the beginning, in
  // whatever interleaving, ends with the same table.
  test::ShmScope other_shm;
  cfg_.shm_prefix = other_shm.prefix();
  auto c2 = consumer();
  Replica t2 = ready_replica(*c2, 4);
  auto table2 = Table::open("t", {other_shm.prefix()});
  ASSERT_TRUE(table2) << table2.error().message;
  EXPECT_EQ(test::contents(*table2), want);
}

// More partitions than max_partitions: the ones beyond are refused, loudly,
// and the others go on.
TEST_F(ReplicaTest, PartitionsBeyondMaxPartitionsAreRefusedAndTheRestGoesOn) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 4));
  tc_.max_partitions = 3;
  auto c = consumer();
  Replica t = ready_replica(*c, 2);
  kafka::WatermarkPoller poller(*c, 1s, 2s);
  ASSERT_TRUE(daemon::follow_new_partitions(t, *c, poller, 4));
  EXPECT_EQ(t.partition_count(), 3);
  EXPECT_EQ(t.refused_partitions, 4);
  {
    test::Producer p(kafka_.bootstrap());
    p.send(topic_, 2, "in-2", "yes");
    ASSERT_TRUE(p.flush());
  }
  auto table = Table::open("t", {shm_.prefix()});
  ASSERT_TRUE(table);
  ASSERT_TRUE(apply_until(t, *c, [&] { return table->get_copy("in-2").has_value(); }));
  EXPECT_EQ(table->partition_count(), 3u);
}

}  // namespace
}  // namespace kvs
