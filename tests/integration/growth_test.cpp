// Tables that grow online, end to end: kvsd (a process) on the mock cluster
// (another), readers in processes of their own that verify every read
// while the table is copied into larger segments and swapped.
#include <signal.h>

#include <atomic>
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
  bool all_applied(const Table& t) {
    for (uint32_t p = 0; p < kPartitions; ++p) {
      auto o = t.partition_offsets(p);
      if (!o || o->next_offset < sent_[p]) return false;
    }
    return true;
  }
  int64_t sent_[kPartitions] = {};
  Table open_table() {
    std::optional<Table> t;
    EXPECT_TRUE(test::wait_until(
        [&] {
          auto r = Table::open("t", {shm_.prefix()});
          if (r) t.emplace(std::move(*r));
          return r.has_value();
        },
        30s))
        << "kvsd never created the table";
    if (!t) throw std::runtime_error("no table");
    return std::move(*t);
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

// A table that starts at 1024 entries and 1 MiB takes a million keys: half
// of them at bootstrap, half (and overwrites of a tenth) while READY, with
// reader processes verifying every read (whole values, versions never going
// back, a key once read never missing again) and VISIBLE writes through the
// socket, none of which fails.
TEST_F(GrowthTest, GrowsFromCapacity1024ToAMillionKeysWhileReadersVerifyEveryRead) {
  const uint64_t n = scaled(1000000);
  ASSERT_TRUE(kafka_.create_topic(topic_, kPartitions));
  test::Producer p(kafka_.bootstrap());
  produce(p, 0, n / 2, 1000);
  ASSERT_TRUE(p.flush());
  const std::string config = (dir_ / "kvsd.toml").string();
  std::ofstream(config)
      << "[kvsd]\nsocket_path = \"" << socket_path() << "\"\nshm_prefix = \"" << shm_.prefix()
      << "\"\npoll_timeout_ms = 20\n"
      << "[kafka]\n\"bootstrap.servers\" = \"" << kafka_.bootstrap() << "\"\n"
      << "[[table]]\nname = \"t\"\ntopic = \"" << topic_ << "\"\n"
      << "capacity = 1024\nmemory_limit_bytes = 1048576\nmax_value_bytes = 65536\n";
  auto kvsd = start_kvsd(config);
  Table t = open_table();
  std::vector<std::unique_ptr<test::Child>> readers;
  for (int i = 0; i < 2; ++i) {
    readers.push_back(std::make_unique<test::Child>(std::vector<std::string>{
        test::helper("table_worker"), "read", shm_.prefix(), "t", std::to_string(n), "0"}));
    ASSERT_EQ(readers.back()->read_line(), "started");
  }
  ASSERT_TRUE(t.wait_ready(120s)) << log();
  EXPECT_EQ(t.size(), n / 2);

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
  produce(p, n / 2, n, 1000);
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
  std::printf("[ figures  ] %zu growth steps to %llu entries\n", grown,
              static_cast<unsigned long long>(stat(t).capacity));
  EXPECT_GE(grown, 9u) << l;
  EXPECT_LE(grown, 24u) << l;
  EXPECT_GE(stat(t).capacity, n);
  uint64_t bytes = 0;
  const auto files = shm_files(&bytes);
  EXPECT_EQ(files.size(), 2u) << "segment and registry only; found " << files.size();
  EXPECT_LE(bytes, stat(t).segment_bytes + (1 << 20));
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

}  // namespace
}  // namespace kvs
