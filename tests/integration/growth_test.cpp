// Tables that grow online, end to end: kvsd (a process) on the mock cluster
// (another), readers in processes of their own that verify every read
// while the table is copied into larger segments and swapped.
#include <signal.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

#include "support/kvsd_fixture.hpp"
#include "support/producer.hpp"
#include "support/verified_value.hpp"

namespace kvs {
namespace {

// Records of this test are scaled down under the sanitizers.
uint64_t scaled(uint64_t n) {
  const char* s = std::getenv("KVS_STRESS_SCALE");
  const uint64_t scale = s ? std::max(1ull, std::strtoull(s, nullptr, 10)) : 1;
  return n / scale;
}

// A verified value (test::make_value) without payload, so that a million
// records fit the mock cluster's partitions: the smallest version >= from
// whose payload is empty.
std::string small_value(uint64_t id, uint64_t from) {
  while (test::payload_len(id, from) != 0) ++from;
  return test::make_value(id, from);
}

class GrowthTest : public KvsdTest {
 protected:
  static constexpr int kPartitions = 16;
  // Keys [from, to) at `version`, each to the partition id % kPartitions.
  void produce(test::Producer& p, uint64_t from, uint64_t to, uint64_t version) {
    for (uint64_t id = from; id < to; ++id) {
      p.send(topic_, static_cast<int>(id % kPartitions), test::make_key(id),
             small_value(id, version));
      ++sent_[id % kPartitions];
    }
  }
  // Every record produced is applied.
  bool all_applied(const Table& t) { return KvsdTest::all_applied(t, sent_, kPartitions); }
  int64_t sent_[kPartitions] = {};
  std::string write_growth_config(const std::string& extra = "") {
    const std::string path = (dir_ / "kvsd.toml").string();
    std::ofstream(path)
        << "[kvsd]\nmetrics_listen = \"\"\nsocket_path = \"" << socket_path()
        << "\"\nshm_prefix = \"" << shm_.prefix() << "\"\nstate_dir = \"" << state_dir()
        << "\"\npoll_timeout_ms = 20\n"
        // No snapshots: a removed segment must mean a bootstrap from the topic.
        << "snapshot_interval_s = 0\n"
        << "[kafka]\n\"bootstrap.servers\" = \"" << kafka_.bootstrap() << "\"\n"
        << "[[table]]\nname = \"t\"\ntopic = \"" << topic_ << "\"\n"
        << "capacity = 1024\nmemory_limit_bytes = 1048576\nmax_value_bytes = 65536\n"
        << extra;
    return path;
  }
  // Segments a growth left unfinished ("<table>.new.<pid>.<random>").
  size_t unfinished_segments() {
    size_t n = 0;
    for (const auto& name : shm_files()) n += name.find(".new.") != std::string::npos;
    return n;
  }
  kvs_table_stats stat(const Table& t) {
    kvs_table_stats s{};
    EXPECT_EQ(kvs_stat(t.native(), &s), KVS_OK);
    return s;
  }
  // Files in /dev/shm of this test's prefix; their bytes in *bytes.
  std::vector<std::string> shm_files(uint64_t* bytes = nullptr) {
    std::vector<std::string> names;
    if (bytes) *bytes = 0;
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
      const std::string name = e.path().filename().string();
      if (!name.starts_with(shm_.prefix())) continue;
      names.push_back(name);
      if (bytes && e.is_regular_file()) *bytes += e.file_size();
    }
    return names;
  }
  // Every key [0, n) holds a whole value of at least `version`.
  void expect_every_key(const Table& t, uint64_t n, uint64_t version) {
    auto g = t.read();
    ASSERT_TRUE(g);
    uint64_t wrong = 0;
    for (uint64_t id = 0; id < n; ++id) {
      auto v = g->get(test::make_key(id));
      uint64_t ver = 0;
      if (!v || !test::check_value(test::make_key(id), *v, &ver) || ver < version) {
        if (++wrong <= 5) ADD_FAILURE() << "key " << id << (v ? " has a wrong value" : " missing");
      }
    }
    EXPECT_EQ(wrong, 0u);
  }
};

// A table that starts at 1024 entries and 1 MiB takes a million keys: a
// 200th of them at bootstrap, the rest (and overwrites of a tenth)
// while READY, growing about ten times with
// reader processes verifying every read (whole values, versions never going
// back, a key once read never missing again) and VISIBLE writes through the
// socket, none of which fails.
TEST_F(GrowthTest, GrowsFromCapacity1024ToAMillionKeysWhileReadersVerifyEveryRead) {
  const uint64_t n = scaled(1000000);
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  test::Producer p(kafka_.bootstrap());
  produce(p, 0, n / 200, 1000);
  ASSERT_TRUE(p.flush());
  auto kvsd = start_kvsd(write_growth_config());
  Table t = open_table();
  std::vector<std::unique_ptr<test::Child>> readers;
  for (int i = 0; i < 2; ++i) {
    readers.push_back(std::make_unique<test::Child>(std::vector<std::string>{
        test::helper("table_worker"), "read", shm_.prefix(), "t", std::to_string(n), "0"}));
    ASSERT_EQ(readers.back()->read_line(), "started");
  }
  ASSERT_TRUE(t.wait_ready(120s)) << log();
  EXPECT_EQ(t.size(), n / 200);

  // VISIBLE writes through the socket while the table grows on.
  std::atomic<bool> writing{true};
  std::atomic<int> written{0}, failed{0};
  std::string first_failure;
  std::thread writer([&] {
    auto c = Client::connect(socket_path());
    if (!c) {
      ++failed;
      first_failure = c.error().message;
      return;
    }
    for (int i = 0; writing; ++i) {
      auto r = c->put("t", "w" + std::to_string(i), "visible", WriteOptions{30000ms, true});
      if (r) {
        ++written;
      } else if (failed++ == 0) {
        first_failure = r.error().message;
      }
    }
  });
  produce(p, n / 200, n, 1000);
  produce(p, 0, n / 10, 5000);  // overwrites, some of them of keys not copied yet
  ASSERT_TRUE(p.flush());
  ASSERT_TRUE(test::wait_until([&] { return all_applied(t); }, 120s)) << log();
  writing = false;
  writer.join();
  EXPECT_EQ(failed.load(), 0) << first_failure;
  EXPECT_GT(written.load(), 0);
  EXPECT_EQ(t.size(), n + static_cast<uint64_t>(written.load()));
  expect_every_key(t, n / 10, 5000);
  {
    auto g = t.read();
    ASSERT_TRUE(g);
    for (int i = 0; i < written.load(); ++i) {
      auto v = g->get("w" + std::to_string(i));
      ASSERT_TRUE(v) << "write w" << i << " was acknowledged as visible and is missing";
    }
  }
  expect_every_key(t, n, 1000);
  for (auto& r : readers) {
    r->kill(SIGTERM);
    const std::string summary = r->read_line();
    EXPECT_EQ(r->wait(), 0) << summary;
    std::printf("[ figures  ] reader: %s\n", summary.c_str());
    unsigned long reads = 0, bad = 0, absent = 0, sizes = 0;
    ASSERT_EQ(std::sscanf(summary.c_str(), "reads=%lu bad=%lu absent=%lu sizes=%lu", &reads, &bad,
                          &absent, &sizes),
              4)
        << summary;
    EXPECT_EQ(bad, 0u);
    EXPECT_GE(sizes, 2u) << "the reader never saw the table grow";
  }
  // Grown in O(log n) steps, each logged; no generation is left in /dev/shm.
  const std::string l = log();
  const size_t grown = count(l, "readers moved to the new segment");
  for (size_t at = l.find("grown to"); at != std::string::npos; at = l.find("grown to", at + 1)) {
    std::printf("[ figures  ] %s\n", l.substr(at, l.find('\n', at) - at).c_str());
  }
  std::printf("[ figures  ] %zu growth steps to %llu entries\n", grown,
              static_cast<unsigned long long>(stat(t).capacity));
  // A bootstrap grows to what it projects at its end; growth while READY
  // doubles a dimension at a time.
  EXPECT_GE(grown, 7u) << l;
  EXPECT_LE(grown, 2 * static_cast<size_t>(std::log2(static_cast<double>(n) / 1024)) + 2) << l;
  EXPECT_GE(stat(t).capacity, n);
  uint64_t bytes = 0;
  const auto files = shm_files(&bytes);
  EXPECT_EQ(files.size(), 2u) << "segment and registry only; found " << files.size();
  EXPECT_LE(bytes, stat(t).segment_bytes + (1 << 20));
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

// kvsd is killed (SIGKILL) in the middle of 20 growth steps, in turn: as a
// bootstrap from 1024 entries grows, as a restart resizes the table up to a
// raised capacity, and as a restart shrinks a table that holds far less
// than its size; each kill a few milliseconds later than the last of its
// kind. The next kvsd attaches to the segment under the table's name (the
// generation the copy came from: its offsets did not move), removes the
// unfinished one, finishes, and ends with every key right; /dev/shm holds
// the table's segment and its registry only.
TEST_F(GrowthTest, KilledWhileGrowingResumesAndLeavesNoSegmentBehind) {
  const uint64_t n = scaled(200000);
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  test::Producer p(kafka_.bootstrap());
  produce(p, 0, n, 1000);
  ASSERT_TRUE(p.flush());
  const std::string small = write_growth_config();
  const std::string big = (dir_ / "big.toml").string();
  std::filesystem::copy_file(small, big);
  std::ofstream(big, std::ios::app) << "capacity = 2097152\n";
  {
    std::string text = test::slurp(big);
    text.replace(text.find("capacity = 1024\n"), 16, "");
    std::ofstream(big, std::ios::trunc) << text;
  }
  const char* kinds[] = {"growing from", "resizing to the configured size",
                         "resizing (it holds far less"};
  int mid_growth = 0;
  for (int i = 0; i < 20; ++i) {
    const int kind = i % 3;
    SCOPED_TRACE("kill " + std::to_string(i) + " (" + kinds[kind] + ")");
    if (kind == 0) {  // a bootstrap from the beginning: the table grows from 1024 entries
      shm::remove_segment(shm_.prefix() + "t");
      std::filesystem::remove_all("/dev/shm/" + shm_.prefix() + "t.readers");
    }
    const std::string& config = kind == 1 ? big : small;
    const size_t before = count(log(), kinds[kind]);
    auto kvsd = start_kvsd(config);
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (count(log(), kinds[kind]) == before && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(200us);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(i / 3 * 3));
    kvsd->kill(SIGKILL);
    kvsd->wait_for(30s);
    ASSERT_GT(count(log(), kinds[kind]), before) << log();
    mid_growth += unfinished_segments() > 0;

    auto again = start_kvsd(config);
    Table t = open_table();
    ASSERT_TRUE(t.wait_ready(60s)) << log();
    ASSERT_TRUE(test::wait_until([&] { return all_applied(t); }, 60s)) << log();
    // A resize at a restart runs once the segment's arena was walked
    // (after READY); a read moves this reader to the resized segment.
    const uint64_t want = kind == 1 ? 2097152 : kind == 2 ? 2 * n : 0;
    if (want != 0) {
      ASSERT_TRUE(test::wait_until(
          [&] {
            (void)t.read();
            return stat(t).capacity == want;
          },
          30s))
          << log();
    }
    ASSERT_TRUE(test::wait_until([&] { return unfinished_segments() == 0; }, 30s)) << log();
    EXPECT_EQ(t.size(), n);
    expect_every_key(t, n, 1000);
    EXPECT_EQ(shm_files().size(), 2u);
    again->kill(SIGTERM);
    EXPECT_EQ(again->wait_for(30s), 0) << log();
    if (HasFailure()) break;
  }
  std::printf("[ figures  ] %d of 20 kills left a growth unfinished\n", mid_growth);
  EXPECT_GE(mid_growth, 5) << "too few kills landed in the middle of a growth";
}

// max_memory_bytes: ingest of the table stops at the first record that does
// not fit (never skipped), with the reason in the segment, kvsctl stats and
// the log; raising the limit and restarting applies everything.
TEST_F(GrowthTest, HardLimitHoldsAtTheFirstRecordPastItAndRaisingItResumes) {
  const uint64_t n = 20000;
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  test::Producer p(kafka_.bootstrap());
  for (uint64_t id = 0; id < n; ++id) p.send(topic_, 0, test::make_key(id), small_value(id, 7));
  ASSERT_TRUE(p.flush());
  // Room for 4096 entries and 1 MiB, not for 8192.
  const uint64_t limit =
      format::geometry(4096, 256, 1 << 20, /*kvsd's change_log_entries=*/65536).segment_bytes;
  auto kvsd = start_kvsd(write_growth_config("max_memory_bytes = " + std::to_string(limit) + "\n"));
  Table t = open_table();
  ASSERT_TRUE(test::wait_until([&] { return stat(t).held_partitions == 1; }, 60s)) << log();
  const kvs_table_stats s = stat(t);
  EXPECT_EQ(s.hold_reason, static_cast<uint32_t>(KVS_HOLD_LIMIT));
  EXPECT_EQ(s.capacity, 4096u);
  EXPECT_LE(s.segment_bytes, limit);
  EXPECT_EQ(s.entries, 4096u);
  auto next = t.partition_offsets(0);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->next_offset, 4096) << "the record that did not fit was skipped";
  expect_every_key(t, 4096, 7);
  EXPECT_FALSE(t.get_copy(test::make_key(4096))) << "a record past the limit was applied";
  // The log line follows the hold's publication in the segment.
  EXPECT_TRUE(test::wait_until(
      [&] {
        return log().find("reached max_memory_bytes = " + std::to_string(limit)) !=
               std::string::npos;
      },
      10s))
      << log();
  EXPECT_NE(log().find("raise max_memory_bytes and restart kvsd"), std::string::npos) << log();
  {
    test::Child ctl(
        {test::helper("../kvsctl"), "--config", (dir_ / "kvsd.toml").string(), "-t", "t", "stats"});
    std::string out;
    for (std::string line; !(line = ctl.read_line()).empty();) out += line + "\n";
    EXPECT_EQ(ctl.wait_for(10s), 0);
    EXPECT_NE(out.find("the table reached its max_memory_bytes"), std::string::npos) << out;
  }
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0) << log();

  auto again = start_kvsd(write_growth_config());
  ASSERT_TRUE(t.wait_ready(60s)) << log();
  ASSERT_TRUE(test::wait_until([&] { return t.size() == n; }, 60s)) << log();
  EXPECT_EQ(stat(t).held_partitions, 0u);
  expect_every_key(t, n, 7);
  again->kill(SIGTERM);
  EXPECT_EQ(again->wait_for(30s), 0) << log();
}

// A reader process keeps one read open while the table's values are
// overwritten through a 1 MiB arena: the room it holds back would stop the
// table for as long as it reads. Once a record has waited a second for it,
// the table grows into a new segment and goes on; the reader keeps the old
// one (its read stays valid) until it ends.
TEST_F(GrowthTest, AStuckReaderDoesNotStopItsTable) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  auto kvsd = start_kvsd(write_growth_config());
  Table t = open_table();
  ASSERT_TRUE(t.wait_ready(30s)) << log();
  test::Child reader({test::helper("table_worker"), "hold", shm_.prefix(), "t"});
  ASSERT_EQ(reader.read_line(), "holding");
  constexpr int kRecords = 600;
  test::Producer p(kafka_.bootstrap());
  for (int i = 0; i < kRecords; ++i) {
    p.send(topic_, 0, "key" + std::to_string(i % 16), std::to_string(i) + std::string(4096, 'v'));
  }
  ASSERT_TRUE(p.flush());
  ASSERT_TRUE(test::wait_until(
      [&] {
        auto o = t.partition_offsets(0);
        return o && o->next_offset == kRecords;
      },
      60s))
      << "the table stopped behind the stuck reader\n"
      << log();
  EXPECT_NE(log().find("the table grows into a new segment"), std::string::npos) << log();
  EXPECT_EQ(stat(t).held_partitions, 0u);
  const auto m = contents(t);
  ASSERT_EQ(m.size(), 16u);
  for (int k = 0; k < 16; ++k) {
    const int last = k + 16 * ((kRecords - 1 - k) / 16);
    EXPECT_TRUE(m.at("key" + std::to_string(k)) == std::to_string(last) + std::string(4096, 'v'))
        << "key" << k << " is not its last value, " << last;
  }
  // The reader still holds its guard on the old segment; once it is gone,
  // only the table's segment and registry remain.
  EXPECT_EQ(::kill(reader.pid(), 0), 0) << "the stuck reader died";
  reader.kill(SIGKILL);
  EXPECT_EQ(reader.wait(), 128 + SIGKILL);
  EXPECT_EQ(shm_files().size(), 2u);
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

}  // namespace
}  // namespace kvs
