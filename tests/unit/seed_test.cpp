// Which snapshot may start a table (daemon/seed.cpp: why_not_usable): of its
// topic and cluster, young enough, no more partitions than the topic, and
// every position within the log.
#include "seed.hpp"

#include <gtest/gtest.h>

namespace kvs::daemon {
namespace {

constexpr uint64_t kNow = uint64_t{1800000000} * 1000000000;  // ns

class SeedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    t_.cfg.name = "t";
    t_.cfg.topic = "flags";
    t_.parts.resize(2);
    t_.source_topic = 7;
    t_.source_cluster = 9;
    t_.snapshot_max_age_s = 3600;
    info_.source_topic = 7;
    info_.source_cluster = 9;
    info_.created_unix_ns = kNow - uint64_t{60} * 1000000000;
    info_.partitions = {format::SnapshotPartition{100, 120, 99, 5, 6},
                        format::SnapshotPartition{50, 50, -1, 0, 0}};
    wms_ = {{0, 200}, {10, 60}};
  }
  std::string why() { return why_not_usable(t_, info_, wms_, kNow); }
  Replica t_;
  SnapshotInfo info_;
  std::vector<std::pair<int64_t, int64_t>> wms_;
};

TEST_F(SeedTest, ASnapshotThatFitsTheLogIsUsable) { EXPECT_EQ(why(), ""); }

TEST_F(SeedTest, AnotherTopicOrClusterIsRefused) {
  info_.source_topic = 8;
  EXPECT_NE(why().find("another topic than flags"), std::string::npos) << why();
  info_.source_topic = 7;
  info_.source_cluster = 10;
  EXPECT_NE(why().find("another Kafka cluster"), std::string::npos) << why();
  // Not recorded (a crafted file, or a segment whose cluster was not known):
  // it cannot be shown to be of this cluster.
  info_.source_cluster = 0;
  EXPECT_NE(why().find("does not record its Kafka cluster"), std::string::npos) << why();
  t_.source_cluster = 0;  // kvsd does not know its own: nothing to compare
  EXPECT_EQ(why(), "");
}

// Older than the tombstones of its keys may last in a compacted topic.
TEST_F(SeedTest, AnOldSnapshotIsRefused) {
  info_.created_unix_ns = kNow - uint64_t{7200} * 1000000000;
  EXPECT_NE(why().find("7200 s old, more than snapshot_max_age_s = 3600"), std::string::npos)
      << why();
  t_.snapshot_max_age_s = 0;
  EXPECT_EQ(why(), "");
}

// A clock that ran ahead (an RTC wrong at boot, later stepped back by NTP)
// dated it: its age is unknown, so it could be older than the tombstones
// it needs.
TEST_F(SeedTest, ASnapshotFromTheFutureIsRefused) {
  info_.created_unix_ns = kNow + uint64_t{30} * 86400 * 1000000000;
  EXPECT_NE(why().find("after now"), std::string::npos) << why();
  t_.snapshot_max_age_s = 0;
  EXPECT_NE(why().find("after now"), std::string::npos) << "refused whatever the age limit";
  info_.created_unix_ns = kNow + uint64_t{30} * 1000000000;  // clocks a little apart
  EXPECT_EQ(why(), "");
}

TEST_F(SeedTest, PositionsOutsideTheLogOrMorePartitionsAreRefused) {
  wms_[1] = {60, 80};  // retention moved partition 1's start past 50
  EXPECT_NE(why().find("retention deleted records the snapshot does not have"), std::string::npos)
      << why();
  wms_[1] = {0, 40};  // the log ends before 50
  EXPECT_NE(why().find("past the log's end (40)"), std::string::npos) << why();
  wms_[1] = {10, 60};
  t_.parts.resize(1);
  EXPECT_NE(why().find("2 partitions and topic flags 1"), std::string::npos) << why();
  // The topic gained partitions since: usable (they are read from their start).
  t_.parts.resize(3);
  wms_.push_back({0, 5});
  EXPECT_EQ(why(), "");
}

}  // namespace
}  // namespace kvs::daemon
