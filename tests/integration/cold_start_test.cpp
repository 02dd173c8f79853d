// Snapshots and cold starts, end to end: kvsd (a process) writes snapshots
// of its tables to its state directory, and after a "reboot" (its segments
// removed from /dev/shm) starts from the newest usable one and reads only
// the records after it. Damaged, foreign and outdated snapshots are refused,
// saying why, and the table is still right; a kvsd killed while it writes
// one, and a full disk, cost no good snapshot.
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "support/kvsd_fixture.hpp"
#include "support/producer.hpp"
#include "support/topic_reader.hpp"
#include "support/verified_value.hpp"
#include "writer/snapshot.hpp"

namespace kvs {
namespace {

namespace fs = std::filesystem;

class ColdStartTest : public KvsdTest {
 protected:
  static constexpr int kPartitions = 4;
  // Keys [from, to) at `version`, each to the partition id % kPartitions.
  void produce(test::Producer& p, uint64_t from, uint64_t to, uint64_t version) {
    for (uint64_t id = from; id < to; ++id) {
      p.send(topic_, static_cast<int>(id % kPartitions), test::make_key(id),
             test::make_value(id, version));
      ++sent_[id % kPartitions];
    }
  }
  void erase(test::Producer& p, uint64_t id) {
    p.send(topic_, static_cast<int>(id % kPartitions), test::make_key(id), std::nullopt);
    ++sent_[id % kPartitions];
  }
  bool all_applied(const Table& t) {
    for (uint32_t p = 0; p < kPartitions; ++p) {
      auto o = t.partition_offsets(p);
      if (!o || o->next_offset < sent_[p]) return false;
    }
    return true;
  }
  // What the topic holds now: each key's last record, tombstones erasing.
  std::map<std::string, std::string> topic_state() {
    std::map<std::string, std::string> m;
    for (auto& r : test::read_topic(kafka_.bootstrap(), topic_, kPartitions)) {
      if (r.value) {
        m[r.key] = *r.value;
      } else {
        m.erase(r.key);
      }
    }
    return m;
  }
  std::string snapshot_dir() const { return state_dir() + "/" + shm_.prefix() + "t"; }
  std::vector<std::string> snapshots() const {
    std::vector<std::string> out;
    std::error_code ec;
    for (fs::directory_iterator it(snapshot_dir(), ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".snapshot") out.push_back(it->path().string());
    }
    std::sort(out.rbegin(), out.rend());
    return out;
  }
  // A reboot: /dev/shm loses the table's segment and registry.
  void remove_segments() {
    segment_.reset();
    for (const auto& e : fs::directory_iterator("/dev/shm")) {
      if (e.path().filename().string().starts_with(shm_.prefix())) fs::remove_all(e.path());
    }
  }
  // Runs kvsd until the table has every record produced, then stops it
  // cleanly (which writes a snapshot).
  void run_until_applied_and_stop(const std::string& config) {
    auto kvsd = start_kvsd(config);
    Table t = open_ready();
    ASSERT_TRUE(test::wait_until([&] { return all_applied(t); }, 60s)) << log();
    kvsd->kill(SIGTERM);
    ASSERT_EQ(kvsd->wait_for(30s), 0) << log();
  }
  // Starts kvsd and waits until the table has every record produced; the
  // table's contents then.
  std::map<std::string, std::string> cold_start(const std::string& config) {
    kvsd_ = start_kvsd(config);
    Table t = open_ready(60s);
    EXPECT_TRUE(test::wait_until([&] { return all_applied(t); }, 60s)) << log();
    return contents(t);
  }
  void stop() {
    kvsd_->kill(SIGTERM);
    EXPECT_EQ(kvsd_->wait_for(30s), 0) << log();
    kvsd_.reset();
  }
  // The number in "started from snapshot P and N records from the topic".
  static long records_after_snapshot(const std::string& l) {
    const size_t at = l.rfind("started from snapshot");
    if (at == std::string::npos) return -1;
    const size_t n = l.find(" and ", at);
    return n == std::string::npos ? -1 : std::strtol(l.c_str() + n + 5, nullptr, 10);
  }

  int64_t sent_[kPartitions] = {};
  std::unique_ptr<test::Child> kvsd_;
};

// The table equals the topic after a cold start from the snapshot written
// at the last clean stop, and kvsd applied only the records produced since.
TEST_F(ColdStartTest, ColdStartReadsOnlyTheRecordsAfterTheSnapshot) {
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  test::Producer p(kafka_.bootstrap());
  produce(p, 0, 20000, 1);
  ASSERT_TRUE(p.flush());
  run_until_applied_and_stop(write_config());
  ASSERT_EQ(snapshots().size(), 1u) << log();
  EXPECT_NE(log().find("table t: snapshot " + snapshots()[0] + ": 20000 entries"),
            std::string::npos)
      << log();

  remove_segments();
  // Overwrites, new keys and tombstones after the snapshot.
  produce(p, 0, 1000, 2);
  produce(p, 20000, 21500, 1);
  for (uint64_t id = 5000; id < 5500; ++id) erase(p, id);
  ASSERT_TRUE(p.flush());
  const auto got = cold_start(write_config());
  EXPECT_EQ(got, topic_state());
  EXPECT_EQ(got.size(), 21000u);
  const std::string l = log();
  EXPECT_NE(l.find("cold start from snapshot " + snapshots()[0]), std::string::npos) << l;
  EXPECT_EQ(records_after_snapshot(l), 3000) << l;
  stop();
}

// kvsctl snapshot writes a live table's snapshot from a reader; a second
// kvsd (another host: its own shared memory and state) starts from it
// through seed_from and reads only the records after it. kvsctl stats shows
// the snapshots kvsd writes.
TEST_F(ColdStartTest, AHostIsSeededFromANeighboursSnapshot) {
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  test::Producer p(kafka_.bootstrap());
  produce(p, 0, 10000, 1);
  ASSERT_TRUE(p.flush());
  const std::string config = write_config("", "snapshot_interval_s = 1\n");
  auto kvsd = start_kvsd(config);
  Table t = open_ready();
  ASSERT_TRUE(test::wait_until([&] { return all_applied(t); }, 60s)) << log();
  const std::string seed = (dir_ / "neighbour.snapshot").string();
  const std::string ctl = test::helper("../kvsctl");
  auto snap =
      test::run_capture({ctl, "--config", config, "snapshot", "--table", "t", "--out", seed});
  ASSERT_EQ(snap.status, 0) << snap.output;
  EXPECT_NE(snap.output.find("10000 entries"), std::string::npos) << snap.output;
  // kvsd's own periodic snapshot, in kvsctl stats.
  ASSERT_TRUE(test::wait_until([&] { return !snapshots().empty(); }, 30s)) << log();
  ASSERT_TRUE(test::wait_until(
      [&] {
        auto s = test::run_capture({ctl, "--config", config, "stats"});
        return s.output.find("snapshot        " + snapshot_dir()) != std::string::npos;
      },
      30s));
  auto stats = test::run_capture({ctl, "--config", config, "stats"});
  EXPECT_NE(stats.output.find("10000 entries"), std::string::npos) << stats.output;
  produce(p, 10000, 10700, 1);
  ASSERT_TRUE(p.flush());
  ASSERT_TRUE(test::wait_until([&] { return all_applied(t); }, 60s)) << log();

  // The neighbour: same cluster and topic, nothing else shared.
  test::ShmScope other_shm;
  const fs::path other = dir_ / "neighbour";
  fs::create_directories(other);
  const std::string other_config = (other / "kvsd.toml").string();
  std::ofstream(other_config) << "[kvsd]\nsocket_path = \"" << (other / "s.sock").string()
                              << "\"\nshm_prefix = \"" << other_shm.prefix() << "\"\nstate_dir = \""
                              << (other / "state").string()
                              << "\"\npoll_timeout_ms = 20\n[kafka]\n\"bootstrap.servers\" = \""
                              << kafka_.bootstrap() << "\"\n[[table]]\nname = \"t\"\ntopic = \""
                              << topic_ << "\"\nseed_from = \"" << seed << "\"\n";
  const std::string other_log = (other / "kvsd.log").string();
  test::Child neighbour({test::helper("../kvsd"), "--config", other_config}, other_log);
  std::optional<Table> u;
  ASSERT_TRUE(test::wait_until(
      [&] {
        auto r = Table::open("t", {other_shm.prefix()});
        if (r && r->state() == State::kReady) u.emplace(std::move(*r));
        return u.has_value();
      },
      60s))
      << test::slurp(other_log);
  EXPECT_EQ(contents(*u), contents(t));
  const std::string l = test::slurp(other_log);
  EXPECT_NE(l.find("cold start from snapshot " + seed), std::string::npos) << l;
  EXPECT_EQ(records_after_snapshot(l), 700) << l;
  neighbour.kill(SIGTERM);
  EXPECT_EQ(neighbour.wait_for(30s), 0) << test::slurp(other_log);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

// Each kind of damage to the newest snapshot is refused, naming what was
// wrong, and kvsd falls back to the one before it; with no good snapshot
// left, to the whole topic. The table is right every time.
TEST_F(ColdStartTest, DamagedAndForeignSnapshotsAreRefusedAndTheTableIsRight) {
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  test::Producer p(kafka_.bootstrap());
  produce(p, 0, 5000, 1);
  ASSERT_TRUE(p.flush());
  run_until_applied_and_stop(write_config());
  ASSERT_EQ(snapshots().size(), 1u);
  const std::string good = snapshots()[0];
  const std::string good_bytes = test::slurp(good);

  // A snapshot of another topic: table t following another topic, in turn.
  const std::string saved_topic = topic_;
  topic_ = test::KafkaCluster::unique_topic("other");
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  p.send(topic_, 0, "x", std::string("y"));
  ASSERT_TRUE(p.flush());
  remove_segments();
  {
    auto other = start_kvsd(write_config());
    ASSERT_TRUE(test::wait_until(
        [&] {
          auto r = Table::open("t", {shm_.prefix()});
          return r && r->state() == State::kReady && r->size() == 1;
        },
        30s));
    other->kill(SIGTERM);
    ASSERT_EQ(other->wait_for(30s), 0) << log();
  }
  ASSERT_EQ(snapshots().size(), 2u) << log();
  ASSERT_EQ(snapshots()[1], good);
  const std::string foreign = test::slurp(snapshots()[0]);
  fs::remove(snapshots()[0]);
  EXPECT_NE(log().find("another topic"), std::string::npos) << "the good one is of topic A";
  topic_ = saved_topic;
  remove_segments();

  produce(p, 0, 300, 2);  // after the good snapshot
  ASSERT_TRUE(p.flush());
  std::string flipped = good_bytes;
  flipped[flipped.size() / 2] ^= 0x20;
  const std::pair<std::string, std::string> damages[] = {
      {"truncated", good_bytes.substr(0, good_bytes.size() / 2)},
      {"checksum does not match", flipped},
      {"truncated at byte 0", ""},
      {"another topic", foreign},
  };
  const std::string newer = snapshot_dir() + "/99999999999999999999.snapshot";
  // No snapshot is written in these runs: the directory stays as set here.
  const std::string config = write_config("", "snapshot_interval_s = 0\n");
  for (const auto& [says, bytes] : damages) {
    SCOPED_TRACE(says);
    std::ofstream(newer, std::ios::binary | std::ios::trunc) << bytes;
    const size_t log_before = log().size();
    EXPECT_EQ(cold_start(config), topic_state());
    const std::string l = log().substr(log_before);
    EXPECT_NE(l.find(says), std::string::npos) << l;
    EXPECT_NE(l.find(newer), std::string::npos) << "the refused file is named: " << l;
    EXPECT_NE(l.find("cold start from snapshot " + good), std::string::npos) << l;
    EXPECT_EQ(records_after_snapshot(l), 300) << l;
    stop();
    remove_segments();
  }
  // Only damaged snapshots: the whole topic is read.
  std::ofstream(good, std::ios::binary | std::ios::trunc) << flipped;
  const size_t log_before = log().size();
  EXPECT_EQ(cold_start(config), topic_state());
  const std::string l = log().substr(log_before);
  EXPECT_EQ(l.find("cold start from snapshot"), std::string::npos) << l;
  EXPECT_NE(l.find("checksum does not match"), std::string::npos) << l;
  stop();
}

// Retention deleted records after the snapshot's positions (the mock
// cluster keeps about 5 MB per partition): the snapshot is refused, saying
// so, and the table is what the topic holds now.
TEST_F(ColdStartTest, ASnapshotWhoseRecordsRetentionDeletedIsNotUsed) {
  if (!kafka_.is_mock()) GTEST_SKIP() << "needs the mock cluster's retention by size";
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  test::Producer p(kafka_.bootstrap());
  produce(p, 0, 2000, 1);
  ASSERT_TRUE(p.flush());
  run_until_applied_and_stop(write_config());
  ASSERT_EQ(snapshots().size(), 1u);
  remove_segments();
  // 8 MB per partition of new keys: the first records leave the log.
  const std::string big(1000, 'v');
  for (uint64_t id = 100000; id < 100000 + 8000 * kPartitions; ++id) {
    p.send(topic_, static_cast<int>(id % kPartitions), test::make_key(id), big);
    ++sent_[id % kPartitions];
  }
  ASSERT_TRUE(p.flush());
  const auto got = cold_start(write_config("", "snapshot_interval_s = 0\n"));
  EXPECT_EQ(got, topic_state());
  const std::string l = log();
  EXPECT_NE(l.find("retention deleted records the snapshot does not have"), std::string::npos) << l;
  EXPECT_EQ(l.find("cold start from snapshot"), std::string::npos) << l;
  stop();
}

}  // namespace
}  // namespace kvs
