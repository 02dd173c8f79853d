// Snapshot files: written by a reader of a table (kvs_snapshot_write),
// loaded into a new table (libclient/writer/snapshot.hpp), and refused,
// saying why, when damaged.
#include "writer/snapshot.hpp"

#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "kvs/kvs.hpp"
#include "support/test_support.hpp"
#include "support/writer_support.hpp"

namespace kvs {
namespace {

using test::open_writer;

namespace fs = std::filesystem;
using format::Origin;

// Writes a snapshot of table `table` as any reader does (kvs_snapshot_write).
Result<kvs_snapshot_info> snapshot_of(const std::string& prefix, const std::string& table,
                                      const std::string& path) {
  auto t = Table::open(table, OpenOptions{prefix});
  if (!t) return std::move(t).error();
  return t->write_snapshot(path);
}

class SnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvs-snapshot-test-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  WriterOptions options(const std::string& table, uint64_t capacity = 65536) {
    WriterOptions o;
    o.table = table;
    o.shm_prefix = shm_.prefix();
    o.capacity = capacity;
    o.arena_bytes = 16 << 20;
    o.reader_slots = 16;
    o.max_key_bytes = 256;
    o.max_value_bytes = 4096;
    return o;
  }
  static std::map<std::string, std::string> contents(TableWriter& w) {
    std::map<std::string, std::string> m;
    w.for_each_entry([&](std::string_view k, std::string_view v, Origin) {
      m.emplace(std::string(k), std::string(v));
    });
    return m;
  }
  // A table of n entries from two partitions, with positions and a source.
  std::unique_ptr<TableWriter> filled(const std::string& table, int n) {
    auto w = open_writer(options(table));
    EXPECT_TRUE(w->set_partition_count(2));
    for (int i = 0; i < n; ++i) {
      const std::string key = "key" + std::to_string(i) + std::string(i % 3, '\0');
      const std::string value(i % 7 == 0 ? 0 : 50 + i % 100, char('a' + i % 26));
      EXPECT_TRUE(w->apply(key, value, Origin{1000 + i, static_cast<uint32_t>(i % 2)}));
    }
    w->record_applied(0, 41, 777, "key40");
    w->record_applied(1, 99, 888, "key98");
    w->set_high_watermark(1, 120);
    w->set_source(11, 22);
    return w;
  }
  std::string path(const std::string& name = "t.snap") const { return (dir_ / name).string(); }
  static std::string bytes_of(const std::string& p) { return test::slurp(p); }
  static void put_bytes(const std::string& p, const std::string& b) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << b;
  }
  // Loads `p` into a fresh table; the error, or "" if it loaded.
  std::string load_error(const std::string& p, const std::string& table = "t") {
    shm::remove_segment(shm_.prefix() + "u");
    auto u = open_writer(options("u"));
    auto r = load_snapshot(p, table, *u);
    if (r) return "";
    EXPECT_EQ(r.error().code, Errc::kCorrupt) << r.error().message;
    return r.error().message;
  }
  test::ShmScope shm_;
  fs::path dir_;
};

TEST_F(SnapshotTest, RoundTripKeepsEntriesOriginsAndPositions) {
  auto w = filled("t", 30000);  // more than one chunk
  auto info = snapshot_of(shm_.prefix(), "t", path());
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->entries, 30000u);
  EXPECT_GT(info->file_bytes, 2u * format::kSnapshotChunkBytes);
  auto head = read_snapshot_header(path(), "t");
  ASSERT_TRUE(head) << head.error().message;
  EXPECT_EQ(head->entries, 30000u);
  ASSERT_EQ(head->partitions.size(), 2u);

  auto u = open_writer(options("u"));
  auto loaded = load_snapshot(path(), "t", *u);
  ASSERT_TRUE(loaded) << loaded.error().message;
  EXPECT_EQ(contents(*u), contents(*w));
  for (uint32_t p = 0; p < 2; ++p) {
    EXPECT_EQ(u->next_offset(p), w->next_offset(p));
    EXPECT_EQ(u->high_watermark(p), w->high_watermark(p));
    EXPECT_EQ(u->last_record(p).offset, w->last_record(p).offset);
    EXPECT_EQ(u->last_record(p).timestamp_ms, w->last_record(p).timestamp_ms);
    EXPECT_EQ(u->last_record(p).key_hash, w->last_record(p).key_hash);
  }
  EXPECT_EQ(u->source_cluster(), 11u);
  EXPECT_EQ(u->source_topic(), 22u);
  // Origins came along: a record of the other partition with an older
  // timestamp loses to the loaded entry, a later one wins.
  // ("key6": partition 0, timestamp 1006.)
  auto older = u->apply("key6", std::string_view("old"), Origin{100, 1});
  ASSERT_TRUE(older);
  EXPECT_EQ(*older, TableWriter::Applied::kSuperseded);
  auto later = u->apply("key6", std::string_view("new"), Origin{999999, 1});
  ASSERT_TRUE(later);
  EXPECT_EQ(*later, TableWriter::Applied::kApplied);
}

// A snapshot taken while the writer applies records (as kvsd does while
// any reader writes one): loaded, then given the records after its
// positions again, it equals the table. Chunks of 1 MiB make the walk renew
// its guard several times on the way.
TEST_F(SnapshotTest, ASnapshotOfATableBeingWrittenCatchesUpToIt) {
  struct Rec {
    uint32_t partition;
    int64_t offset;
    std::string key;
    std::optional<std::string> value;  // nullopt: a tombstone
  };
  // One run; *overlapped: the walk overlapped the writer (records applied
  // during it were replayed), which a machine busy enough to keep the
  // writer off the CPU for the whole walk can prevent: that run is tried
  // again.
  auto run = [&](uint32_t seed, bool* overlapped) {
    *overlapped = false;
    shm::remove_segment(shm_.prefix() + "t");
    auto w = open_writer(options("t", 1 << 16));
    ASSERT_TRUE(w->set_partition_count(2));
    // Timestamps rise with the log's order, so that replaying the records
    // after the positions in that order gives the table its final state.
    std::mt19937 rng(seed);
    std::vector<Rec> log;
    int64_t next[2] = {0, 0};
    for (int i = 0; i < 120000; ++i) {
      const uint32_t p = rng() % 2;
      Rec r{p, next[p]++, "key" + std::to_string(rng() % 20000), std::nullopt};
      if (rng() % 10 != 0) r.value = std::string(100 + rng() % 100, char('a' + i % 26));
      log.push_back(std::move(r));
    }
    auto apply = [](TableWriter& t, const Rec& r, size_t i) {
      const Origin o{static_cast<int64_t>(1000 + i), r.partition};
      auto once = [&] {
        return r.value ? t.apply(r.key, std::string_view(*r.value), o)
                       : t.apply(r.key, std::nullopt, o);
      };
      // The walk's guard holds freed blocks back while it is off the CPU:
      // the record waits for it, as in kvsd.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      auto ok = once();
      while (!ok && ok.error().code == Errc::kBusy && std::chrono::steady_clock::now() < deadline) {
        t.reclaim();
        std::this_thread::yield();
        ok = once();
      }
      ASSERT_TRUE(ok) << ok.error().message;
      t.record_applied(r.partition, r.offset, o.timestamp_ms, r.key);
    };
    std::atomic<size_t> applied{0};
    std::thread writer([&] {
      for (size_t i = 0; i < log.size(); ++i) {
        apply(*w, log[i], i);
        applied.store(i + 1, std::memory_order_release);
      }
    });
    while (applied.load(std::memory_order_acquire) < 40000) std::this_thread::yield();
    auto info = snapshot_of(shm_.prefix(), "t", path());
    const size_t applied_after = applied.load(std::memory_order_acquire);
    writer.join();
    ASSERT_TRUE(info) << info.error().message;
    EXPECT_GT(info->file_bytes, 2u * format::kSnapshotChunkBytes);

    auto u = open_writer(options("u", 1 << 16));
    ASSERT_TRUE(load_snapshot(path(), "t", *u));
    size_t replayed = 0;
    for (size_t i = 0; i < log.size(); ++i) {
      if (log[i].offset < u->next_offset(log[i].partition)) continue;
      apply(*u, log[i], i);
      ++replayed;
    }
    EXPECT_EQ(contents(*u), contents(*w));
    shm::remove_segment(shm_.prefix() + "u");
    *overlapped = replayed > log.size() - applied_after;
  };
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    bool overlapped = false;
    for (int attempt = 0; attempt < 5 && !overlapped && !HasFailure(); ++attempt) {
      run(seed, &overlapped);
    }
    ASSERT_FALSE(HasFailure());
    EXPECT_TRUE(overlapped) << "the writer never ran during the walk in 5 tries";
  }
}

// Entries of several MiB that share an index group: no chunk is written
// larger than a loader accepts (64 MiB), so the snapshot loads.
TEST_F(SnapshotTest, LargeEntriesInOneGroupStillLoad) {
  WriterOptions o = options("t", 8);
  o.arena_bytes = 160 << 20;
  o.max_value_bytes = 16 << 20;
  auto w = open_writer(o);
  ASSERT_TRUE(w->set_partition_count(1));
  // Seven keys of the same home group fill its seven slots.
  const uint64_t groups = w->header().group_count;
  int placed = 0;
  for (int i = 0; placed < 7; ++i) {
    const std::string key = "big" + std::to_string(i);
    if (format::home_group(format::hash_key(key.data(), key.size()), groups) != 0) continue;
    ASSERT_TRUE(w->apply(key, std::string(12 << 20, char('a' + placed)), Origin{i, 0}));
    ++placed;
  }
  auto info = snapshot_of(shm_.prefix(), "t", path());
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->entries, 7u);
  o = options("u", 8);
  o.arena_bytes = 160 << 20;
  o.max_value_bytes = 16 << 20;
  auto u = open_writer(o);
  auto loaded = load_snapshot(path(), "t", *u);
  ASSERT_TRUE(loaded) << loaded.error().message;
  EXPECT_EQ(contents(*u), contents(*w));
}

// kvs_snapshot_write inside a guard of the same table is refused: the walk
// could not end the guard to write.
TEST_F(SnapshotTest, WritingInsideAGuardIsRefused) {
  auto w = filled("t", 100);
  auto t = Table::open("t", OpenOptions{shm_.prefix()});
  ASSERT_TRUE(t);
  auto g = t->read();
  ASSERT_TRUE(g);
  auto r = t->write_snapshot(path());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  EXPECT_NE(r.error().message.find("inside a read guard"), std::string::npos);
  EXPECT_FALSE(fs::exists(path()));
}

TEST_F(SnapshotTest, EveryDamageIsRefusedSayingWhat) {
  auto w = filled("t", 3000);
  ASSERT_TRUE(snapshot_of(shm_.prefix(), "t", path()));
  const std::string good = bytes_of(path());
  ASSERT_EQ(load_error(path()), "");
  const std::string damaged = path("damaged.snap");
  // Truncated anywhere, empty included.
  for (size_t n : {size_t{0}, size_t{8}, sizeof(format::FileHeader) - 1,
                   sizeof(format::FileHeader) + 20, good.size() / 2, good.size() - 1}) {
    SCOPED_TRACE("truncated to " + std::to_string(n));
    put_bytes(damaged, good.substr(0, n));
    EXPECT_NE(load_error(damaged).find("truncated"), std::string::npos) << load_error(damaged);
  }
  // A byte flipped anywhere: header, partitions, chunk headers, payload,
  // trailer.
  std::mt19937_64 rng(3);
  std::vector<size_t> at{0, 9, 40, 87, 90, 100, good.size() - 1, good.size() - 20};
  for (int i = 0; i < 40; ++i) at.push_back(rng() % good.size());
  for (size_t i : at) {
    SCOPED_TRACE("byte " + std::to_string(i) + " flipped");
    std::string b = good;
    b[i] = static_cast<char>(b[i] ^ 0x40);
    put_bytes(damaged, b);
    // Refused, naming the file and what did not match.
    const std::string e = load_error(damaged);
    EXPECT_EQ(e.rfind("snapshot " + damaged + ": ", 0), 0u) << e;
    EXPECT_TRUE(e.find("checksum") != std::string::npos ||
                e.find("not a kvs snapshot") != std::string::npos ||
                e.find("format version") != std::string::npos ||
                e.find("trailer") != std::string::npos || e.find("truncated") != std::string::npos)
        << e;
  }
  // Bytes after the trailer.
  put_bytes(damaged, good + "x");
  EXPECT_NE(load_error(damaged), "");
  // Another table's, another format's, not a snapshot at all.
  EXPECT_NE(load_error(path(), "other").find("another table"), std::string::npos);
  {
    std::string b = good;
    format::FileHeader h;
    std::memcpy(&h, b.data(), sizeof h);
    h.version = 2;
    h.checksum = format::header_checksum(h);
    std::memcpy(b.data(), &h, sizeof h);
    put_bytes(damaged, b);
    EXPECT_NE(load_error(damaged).find("format version 2"), std::string::npos)
        << load_error(damaged);
  }
  put_bytes(damaged, std::string(4096, 'z'));
  EXPECT_NE(load_error(damaged).find("not a kvs snapshot"), std::string::npos);
  auto missing = read_snapshot_header(path("absent.snap"), "t");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, Errc::kNoTable);
}

// A snapshot file whose checksums were recomputed over crafted contents
// (checksums are no secret): every count, size and position is checked
// against the file and the table before it is used.
class CraftedSnapshotTest : public SnapshotTest {
 protected:
  struct Parsed {
    format::FileHeader h;
    std::vector<format::SnapshotPartition> parts;
    std::vector<std::pair<format::ChunkHeader, std::string>> chunks;
    format::Trailer t;
  };
  static Parsed parse(const std::string& b) {
    Parsed p;
    size_t at = 0;
    std::memcpy(&p.h, b.data(), sizeof p.h);
    at += sizeof p.h;
    p.parts.resize(p.h.partition_count);
    std::memcpy(p.parts.data(), b.data() + at, p.parts.size() * sizeof(format::SnapshotPartition));
    at += p.parts.size() * sizeof(format::SnapshotPartition) + 8;
    while (b.size() - at > sizeof(format::Trailer)) {
      format::ChunkHeader c;
      std::memcpy(&c, b.data() + at, sizeof c);
      at += sizeof c;
      p.chunks.emplace_back(c, b.substr(at, c.payload_bytes));
      at += c.payload_bytes;
    }
    std::memcpy(&p.t, b.data() + at, sizeof p.t);
    return p;
  }
  // Serialises with every checksum recomputed.
  static std::string build(Parsed p, bool keep_payload_sizes = false) {
    std::string b;
    p.h.checksum = format::header_checksum(p.h);
    b.append(reinterpret_cast<const char*>(&p.h), sizeof p.h);
    const size_t pb = p.parts.size() * sizeof(format::SnapshotPartition);
    b.append(reinterpret_cast<const char*>(p.parts.data()), pb);
    const uint64_t psum = XXH3_64bits(p.parts.data(), pb);
    b.append(reinterpret_cast<const char*>(&psum), 8);
    std::vector<uint64_t> sums;
    for (auto& [c, payload] : p.chunks) {
      if (!keep_payload_sizes) c.payload_bytes = static_cast<uint32_t>(payload.size());
      c.checksum = XXH3_64bits(payload.data(), payload.size());
      sums.push_back(c.checksum);
      b.append(reinterpret_cast<const char*>(&c), sizeof c);
      b += payload;
    }
    p.t.checksum = XXH3_64bits(sums.data(), sums.size() * 8);
    b.append(reinterpret_cast<const char*>(&p.t), sizeof p.t);
    return b;
  }
  std::string refused(const std::function<void(Parsed&)>& craft, bool keep_sizes = false) {
    Parsed p = parse(good_);
    craft(p);
    put_bytes(path("crafted.snap"), build(p, keep_sizes));
    return load_error(path("crafted.snap"));
  }
  void SetUp() override {
    SnapshotTest::SetUp();
    auto w = filled("t", 500);
    EXPECT_TRUE(snapshot_of(shm_.prefix(), "t", path()));
    good_ = bytes_of(path());
    ASSERT_EQ(refused([](Parsed&) {}), "") << "the rebuilt file should load";
  }
  std::string good_;
};

TEST_F(CraftedSnapshotTest, CountsSizesAndPositionsAreCheckedBeforeUse) {
  auto says = [](const std::string& e, const char* what) {
    return e.find(what) != std::string::npos ? ::testing::AssertionSuccess()
                                             : ::testing::AssertionFailure() << e;
  };
  // Counts that would size a huge table.
  EXPECT_TRUE(says(refused([](Parsed& p) { p.h.entries = uint64_t{1} << 40; }), "more than its"));
  // More partitions than the table tracks (options: 256).
  EXPECT_TRUE(says(refused([](Parsed& p) {
                     p.parts.resize(300, p.parts[0]);
                     p.h.partition_count = 300;
                   }),
                   "more than the table tracks"));
  // Impossible positions.
  EXPECT_TRUE(says(refused([](Parsed& p) { p.parts[1].next_offset = -5; }), "impossible"));
  EXPECT_TRUE(says(refused([](Parsed& p) { p.parts[1].high_watermark = 0; }), "impossible"));
  EXPECT_TRUE(says(refused([](Parsed& p) { p.parts[0].last_offset = 1000; }), "impossible"));
  // A chunk that claims more than a chunk may hold.
  EXPECT_TRUE(says(refused([](Parsed& p) { p.chunks[0].first.payload_bytes = 100 << 20; }, true),
                   "larger than allowed"));
  // An entry whose lengths overrun its chunk, and one of a partition the
  // snapshot does not have: refused before any entry of the chunk is applied.
  EXPECT_TRUE(says(refused([](Parsed& p) {
                     format::EntryHeader e;
                     std::memcpy(&e, p.chunks[0].second.data(), sizeof e);
                     e.value_len = 1 << 30;
                     std::memcpy(p.chunks[0].second.data(), &e, sizeof e);
                   }),
                   "overruns"));
  EXPECT_TRUE(says(refused([](Parsed& p) {
                     format::EntryHeader e;
                     std::memcpy(&e, p.chunks[0].second.data(), sizeof e);
                     e.partition = 7;
                     std::memcpy(p.chunks[0].second.data(), &e, sizeof e);
                   }),
                   "of partition 7"));
  // Chunks with more entries than the header counts.
  EXPECT_TRUE(says(refused([](Parsed& p) { p.h.entries -= 1; }), "more entries than the header"));
}

// A crafted seed file whose entry is stamped INT64_MAX would win
// format::replaces against every later record and tombstone of its key from
// another partition: entries and fingerprints stamped more than a day after
// the snapshot was created are refused.
TEST_F(CraftedSnapshotTest, RecordsStampedFarAfterTheSnapshotAreRefused) {
  auto says = [](const std::string& e, const char* what) {
    return e.find(what) != std::string::npos ? ::testing::AssertionSuccess()
                                             : ::testing::AssertionFailure() << e;
  };
  EXPECT_TRUE(says(refused([](Parsed& p) {
                     format::EntryHeader e;
                     std::memcpy(&e, p.chunks[0].second.data(), sizeof e);
                     e.timestamp_ms = INT64_MAX;
                     std::memcpy(p.chunks[0].second.data(), &e, sizeof e);
                   }),
                   "more than a day after the snapshot was created"));
  EXPECT_TRUE(says(refused([](Parsed& p) {
                     p.parts[0].last_offset = 0;
                     p.parts[0].last_timestamp_ms = INT64_MAX;
                   }),
                   "stamped more than a day after"));
  // A producer's clock an hour ahead of the snapshot's host is fine.
  EXPECT_EQ(refused([](Parsed& p) {
              format::EntryHeader e;
              std::memcpy(&e, p.chunks[0].second.data(), sizeof e);
              e.timestamp_ms = static_cast<int64_t>(p.h.created_unix_ns / 1000000) + 3600 * 1000;
              std::memcpy(p.chunks[0].second.data(), &e, sizeof e);
            }),
            "");
}

// A writer killed while it writes leaves the previous snapshot whole: the
// name holds either it or the new one, complete.
TEST_F(SnapshotTest, AWriterKilledWhileWritingLeavesTheLastSnapshotWhole) {
  auto w = filled("t", 20000);
  ASSERT_TRUE(snapshot_of(shm_.prefix(), "t", path()));
  for (int i = 0; i < 20; ++i) {
    SCOPED_TRACE("kill " + std::to_string(i));
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (;;) (void)snapshot_of(shm_.prefix(), "t", path());
    }
    ::usleep(static_cast<useconds_t>(1000 + i * 1500));
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    EXPECT_EQ(load_error(path()), "");
  }
  // Temporary files of killed writers are never taken for snapshots.
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (name == "t.snap") continue;
    EXPECT_NE(name.find(".tmp."), std::string::npos) << name;
  }
}

// A disk that fills while a snapshot is written: an error naming it, the
// previous snapshot untouched, no temporary file left.
// The child of the disk-full test, in its mount namespace: an exit code
// (its table's segments are removed when it returns).
int write_until_the_disk_is_full(const std::string& dir) {
  test::ShmScope shm;
  WriterOptions o;
  o.table = "t";
  o.shm_prefix = shm.prefix();
  o.capacity = 8192;
  o.arena_bytes = 8 << 20;
  o.reader_slots = 16;
  auto w = TableWriter::open(o);
  if (!w || !(*w)->set_partition_count(1)) return 2;
  for (int i = 0; i < 100; ++i) (void)(*w)->put("k" + std::to_string(i), "small");
  const std::string p = dir + "/t.snap";
  if (!snapshot_of(shm.prefix(), "t", p)) return 3;
  for (int i = 0; i < 3000; ++i) (void)(*w)->put("k" + std::to_string(i), std::string(1000, 'v'));
  auto full = snapshot_of(shm.prefix(), "t", p);
  if (full || full.error().message.find("No space left on device") == std::string::npos) {
    std::fprintf(stderr, "%s\n", full ? "written" : full.error().message.c_str());
    return 4;
  }
  auto head = read_snapshot_header(p, "t");
  if (!head || head->entries != 100) return 5;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string() != "t.snap") return 6;
  }
  return 0;
}

TEST(SnapshotDiskFullTest, AFullDiskIsAnErrorAndTheLastSnapshotStays) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string dir = "/tmp/kvs-snapshot-full-" + std::to_string(::getpid());
    fs::create_directories(dir);
    if (::unshare(CLONE_NEWNS) != 0) ::_exit(77);
    if (::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) ::_exit(77);
    if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=1m") != 0) ::_exit(77);
    ::_exit(write_until_the_disk_is_full(dir));
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  fs::remove_all("/tmp/kvs-snapshot-full-" + std::to_string(pid));  // the mount point
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
    GTEST_SKIP() << "needs CAP_SYS_ADMIN to mount a small tmpfs in a mount namespace";
  }
  ASSERT_TRUE(WIFEXITED(status)) << "died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace kvs
