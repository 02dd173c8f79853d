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
#include <random>
#include <thread>

#include "format/snapshot.hpp"
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
  bool all_applied(const Table& t) { return KvsdTest::all_applied(t, sent_, kPartitions); }
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
  // Equal maps, or the sizes and the first key that differs.
  static ::testing::AssertionResult same(const std::map<std::string, std::string>& a,
                                         const std::map<std::string, std::string>& b) {
    if (a == b) return ::testing::AssertionSuccess();
    auto f = ::testing::AssertionFailure() << a.size() << " keys against " << b.size();
    for (const auto& [k, v] : a) {
      auto it = b.find(k);
      if (it == b.end() || it->second != v) {
        return f << "; first difference at key " << k << (it == b.end() ? " (absent)" : "");
      }
    }
    for (const auto& [k, v] : b) {
      if (!a.count(k)) return f << "; key " << k << " only in the second";
    }
    return f;
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
  // kvsd's log (or `path`) from byte `from` on, once it holds `what`: kvsd
  // logs how a start went after readers can see the table READY.
  std::string log_once(size_t from, const std::string& what, const std::string& path = "") {
    std::string l;
    test::wait_until(
        [&] {
          const std::string all = test::slurp(path.empty() ? log_path() : path);
          l = all.substr(std::min(from, all.size()));
          return l.find(what) != std::string::npos;
        },
        10s);
    return l;
  }
  // The number in "started from snapshot P and N records from the topic".
  static long records_after_snapshot(const std::string& l) {
    const size_t at = l.rfind("started from snapshot");
    if (at == std::string::npos) return -1;
    const size_t n = l.find(" and ", at);
    return n == std::string::npos ? -1 : std::strtol(l.c_str() + n + 5, nullptr, 10);
  }

  // Loads the snapshot at `path` into a new table: "" if it is whole, else
  // what is wrong.
  std::string load_error(const std::string& path) {
    test::ShmScope shm;
    WriterOptions o;
    o.table = "t";
    o.shm_prefix = shm.prefix();
    o.capacity = 1 << 18;
    o.arena_bytes = 64 << 20;
    o.reader_slots = 4;
    o.max_value_bytes = 1 << 20;
    auto w = TableWriter::open(o);
    if (!w) return w.error().message;
    auto r = load_snapshot(path, "t", **w);
    const std::string e = r ? "" : r.error().message;
    w->reset();
    shm::remove_segment(shm.prefix() + "t");
    return e;
  }
  size_t temporaries() const {
    size_t n = 0;
    std::error_code ec;
    for (fs::directory_iterator it(snapshot_dir(), ec), end; !ec && it != end; it.increment(ec)) {
      n += it->path().filename().string().find(".tmp.") != std::string::npos;
    }
    return n;
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
  EXPECT_TRUE(same(got, topic_state()));
  EXPECT_EQ(got.size(), 21000u);
  const std::string l = log_once(0, "started from snapshot");
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
  std::ofstream(other_config) << "[kvsd]\nmetrics_listen = \"\"\nsocket_path = \""
                              << (other / "s.sock").string() << "\"\nshm_prefix = \""
                              << other_shm.prefix() << "\"\nstate_dir = \""
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
  EXPECT_TRUE(same(contents(*u), contents(t)));
  const std::string l = log_once(0, "started from snapshot", other_log);
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
    EXPECT_TRUE(same(cold_start(config), topic_state()));
    const std::string l = log_once(log_before, "started from snapshot");
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
  EXPECT_TRUE(same(cold_start(config), topic_state()));
  const std::string l = log().substr(log_before);
  EXPECT_EQ(l.find("cold start from snapshot"), std::string::npos) << l;
  EXPECT_NE(l.find("checksum does not match"), std::string::npos) << l;
  EXPECT_NE(l.find("no usable snapshot (" + snapshot_dir() + "); reading topic " + topic_ +
                   " from its beginning: 5300 offsets"),
            std::string::npos)
      << l;
  stop();
}

// A snapshot dated 30 days ahead (a clock that ran ahead when it was
// written, or a seed_from file of such a host): it is not kept when kvsd
// prunes (the older good one is), and a cold start refuses it, saying
// why, and starts from the snapshot furthest along the log.
TEST_F(ColdStartTest, ASnapshotDatedInTheFutureIsNeitherKeptNorStartedFrom) {
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  test::Producer p(kafka_.bootstrap());
  produce(p, 0, 2000, 1);
  ASSERT_TRUE(p.flush());
  run_until_applied_and_stop(write_config());
  ASSERT_EQ(snapshots().size(), 1u);
  const std::string first = snapshots()[0];
  // The same snapshot, its creation time moved 30 days ahead.
  auto plant_future = [&] {
    std::string b = test::slurp(first);
    format::FileHeader h;
    std::memcpy(&h, b.data(), sizeof h);
    h.created_unix_ns = format::now_unix_ns() + uint64_t{30} * 86400 * 1000000000;
    h.checksum = format::header_checksum(h);
    std::memcpy(b.data(), &h, sizeof h);
    char name[64];
    std::snprintf(name, sizeof name, "/%020llu.snapshot",
                  static_cast<unsigned long long>(h.created_unix_ns));
    const std::string path = snapshot_dir() + name;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << b;
    return path;
  };
  std::string future = plant_future();
  EXPECT_EQ(load_error(future), "") << "a well-formed file";

  produce(p, 0, 300, 2);
  erase(p, 7);
  ASSERT_TRUE(p.flush());
  run_until_applied_and_stop(write_config());  // resumes its segment, writes a snapshot
  auto now = snapshots();
  EXPECT_EQ(std::count(now.begin(), now.end(), future), 0) << "the future one was kept";
  EXPECT_EQ(std::count(now.begin(), now.end(), first), 1) << "the good older one was removed";
  ASSERT_EQ(now.size(), 2u);
  EXPECT_NE(log().find("removed snapshot " + future), std::string::npos) << log();
  const std::string second = now[0] == first ? now[1] : now[0];

  future = plant_future();
  remove_segments();
  produce(p, 2000, 2300, 1);
  ASSERT_TRUE(p.flush());
  const size_t log_before = log().size();
  EXPECT_TRUE(same(cold_start(write_config("", "snapshot_interval_s = 0\n")), topic_state()));
  std::string l = log_once(log_before, "started from snapshot");
  EXPECT_NE(l.find("cold start from snapshot " + second), std::string::npos) << l;
  EXPECT_EQ(records_after_snapshot(l), 300) << l;
  stop();

  // Only the future one left: refused, saying why; the topic is read.
  remove_segments();
  fs::remove(first);
  fs::remove(second);
  const size_t log_before_alone = log().size();
  EXPECT_TRUE(same(cold_start(write_config("", "snapshot_interval_s = 0\n")), topic_state()));
  l = log().substr(log_before_alone);
  EXPECT_NE(l.find(future + " (taken"), std::string::npos) << l;
  EXPECT_NE(l.find("after now"), std::string::npos) << l;
  EXPECT_EQ(l.find("cold start from snapshot"), std::string::npos) << l;
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
  EXPECT_TRUE(same(got, topic_state()));
  const std::string l = log();
  EXPECT_NE(l.find("retention deleted records the snapshot does not have"), std::string::npos) << l;
  EXPECT_EQ(l.find("cold start from snapshot"), std::string::npos) << l;
  stop();
}

// kvsd is SIGKILLed 20 times while it writes a snapshot (one a second),
// at a random point of the write, with records arriving all along and a
// reader process verifying every read. Every snapshot file left under a
// snapshot's name loads whole; each next start removes the killed write's
// temporary file; and a cold start from the newest gives the topic's state.
TEST_F(ColdStartTest, KilledWhileWritingSnapshotsLeavesEveryNamedSnapshotWhole) {
  // The mock cluster keeps about 5 MB per partition: all records produced
  // here stay under it, so that the topic still holds every key.
  constexpr uint64_t n = 30000;
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  test::Producer p(kafka_.bootstrap());
  produce(p, 0, n, 1);
  ASSERT_TRUE(p.flush());
  const std::string config = write_config("", "snapshot_interval_s = 1\n");
  kvsd_ = start_kvsd(config);
  Table t = open_ready();
  test::Child reader(
      {test::helper("table_worker"), "read", shm_.prefix(), "t", std::to_string(n), "0"});
  ASSERT_EQ(reader.read_line(), "started");
  std::atomic<bool> producing{true};
  std::thread churn([&] {
    for (uint64_t version = 2; producing && version < 80; ++version) {
      const uint64_t from = (version * 7919) % (n - 500);
      produce(p, from, from + 500, version);
      (void)p.flush();
    }
  });
  // A first snapshot, whole: the kills below may all land inside writes
  // (they do with the sanitizers, whose writes are slow).
  ASSERT_TRUE(test::wait_until([&] { return !snapshots().empty(); }, 60s)) << log();
  std::mt19937 rng(::getpid());
  int landed = 0;
  for (int kill = 0; kill < 20; ++kill) {
    SCOPED_TRACE("kill " + std::to_string(kill));
    // A snapshot is being written: its temporary file is there.
    ASSERT_TRUE(test::wait_until([&] { return temporaries() > 0; }, 20s)) << log();
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 10000));
    kvsd_->kill(SIGKILL);
    kvsd_->wait();
    landed += temporaries() > 0;
    for (const auto& f : snapshots()) EXPECT_EQ(load_error(f), "") << f;
    // The segment says READY from before: the new kvsd's own READY is in
    // its log (after it removed the killed write's file).
    const size_t ready = count(log(), "table t: READY (");
    kvsd_ = start_kvsd(config);
    ASSERT_TRUE(test::wait_until([&] { return count(log(), "table t: READY (") > ready; }, 30s))
        << log();
  }
  producing = false;
  churn.join();
  ASSERT_TRUE(p.flush());
  reader.kill(SIGTERM);
  const std::string summary = reader.read_line();
  EXPECT_EQ(reader.wait(), 0) << summary;
  unsigned long reads = 0, bad = 0;
  ASSERT_EQ(std::sscanf(summary.c_str(), "reads=%lu bad=%lu", &reads, &bad), 2) << summary;
  EXPECT_EQ(bad, 0u) << summary;
  EXPECT_GT(reads, 0u);
  std::printf("[ figures  ] %d of 20 kills landed while a snapshot was written; reader: %s\n",
              landed, summary.c_str());
  EXPECT_GE(landed, 5) << "kills should land in a write";
  EXPECT_GE(count(log(), "unfinished snapshot file(s)"), static_cast<size_t>(landed) - 1);

  kvsd_->kill(SIGKILL);
  kvsd_->wait();
  remove_segments();
  const size_t log_before = log().size();
  EXPECT_TRUE(same(cold_start(write_config("", "snapshot_interval_s = 0\n")), topic_state()));
  const std::string l = log().substr(log_before);
  ASSERT_FALSE(snapshots().empty());
  EXPECT_NE(l.find("cold start from snapshot " + snapshots()[0]), std::string::npos) << l;
  EXPECT_EQ(temporaries(), 0u);
  stop();
}

// The state directory is a 4 MiB tmpfs (kvsd runs in a mount namespace of
// its own): once the table outgrows it, writing a snapshot fails with
// ENOSPC, which kvsd logs and kvsctl stats shows, while it keeps applying
// records and serving writes; the previous snapshot stays whole and no
// temporary file is left.
TEST_F(ColdStartTest, AFullDiskCostsNoGoodSnapshotAndKvsdGoesOn) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs in a mount namespace";
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  test::Producer p(kafka_.bootstrap());
  const std::string kb(1000, 'v');
  auto produce_big = [&](uint64_t from, uint64_t to) {
    for (uint64_t id = from; id < to; ++id) {
      p.send(topic_, static_cast<int>(id % kPartitions), test::make_key(id), kb);
      ++sent_[id % kPartitions];
    }
    return p.flush();
  };
  ASSERT_TRUE(produce_big(0, 1500));  // a snapshot of 1.5 MB
  fs::create_directories(state_dir());
  const std::string config = write_config("", "snapshot_interval_s = 1\n");
  const std::string script =
      "mount -t tmpfs -o size=4m,mode=0750 tmpfs \"$0\" || exit 77; exec \"$1\" --config "
      "\"$2\"";
  kvsd_ = std::make_unique<test::Child>(
      std::vector<std::string>{"/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh",
                               "-c", script, state_dir(), test::helper("../kvsd"), config},
      log_path());
  // Its files, as kvsd's mount namespace shows them.
  const std::string in_ns = "/proc/" + std::to_string(kvsd_->pid()) + "/root" + snapshot_dir();
  Table t = open_ready();
  ASSERT_TRUE(test::wait_until(
      [&] { return log().find("snapshot " + snapshot_dir()) != std::string::npos; }, 30s))
      << log();
  ASSERT_TRUE(produce_big(1500, 4000));  // 4 MB: no room beside the 1.5 MB one
  ASSERT_TRUE(test::wait_until([&] { return all_applied(t); }, 60s)) << log();
  ASSERT_TRUE(test::wait_until(
      [&] { return log().find("No space left on device") != std::string::npos; }, 30s))
      << log();
  EXPECT_NE(log().find("the newest good one stays"), std::string::npos) << log();
  // kvsd goes on: a write is applied, stats say what failed.
  auto c = Client::connect(socket_path());
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->put("t", "after", "the disk filled", WriteOptions{30000ms, true}));
  auto stats = c->stats();
  ASSERT_TRUE(stats);
  EXPECT_NE(stats->find("No space left on device"), std::string::npos) << *stats;
  // The snapshot from before is whole, and alone.
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(in_ns)) files.push_back(e.path().string());
  ASSERT_EQ(files.size(), 1u) << "a temporary file was left";
  EXPECT_EQ(load_error(files[0]), "");
  auto head = read_snapshot_header(files[0], "t");
  ASSERT_TRUE(head) << head.error().message;
  EXPECT_EQ(head->entries, 1500u);
  EXPECT_TRUE(kvsd_->running());
  stop();
}

}  // namespace
}  // namespace kvs
