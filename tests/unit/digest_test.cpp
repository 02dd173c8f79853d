// The table's digest (docs/format.md, "The digest"; kvs_table_digest): kept
// by the writer as it stores slots, equal to a count from the contents
// through puts, overwrites, erases, growth and a writer dying at any store,
// independent of the order the contents came in, and read with the offsets
// it covers.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvs/kvs.hpp"
#include "support/test_support.hpp"
#include "support/writer_support.hpp"
#include "writer/fault_points.hpp"

namespace kvs {
namespace {

using format::Origin;
using test::open_writer;

class DigestTest : public ::testing::Test {
 protected:
  WriterOptions options(const std::string& table) {
    WriterOptions o;
    o.table = table;
    o.shm_prefix = shm_.prefix();
    o.capacity = 4096;
    o.arena_bytes = 4 << 20;
    o.reader_slots = 16;
    o.max_key_bytes = 256;
    o.max_value_bytes = 4096;
    return o;
  }
  Table open_table(const std::string& name) {
    auto t = Table::open(name, OpenOptions{shm_.prefix()});
    EXPECT_TRUE(t) << (t ? "" : t.error().message);
    return std::move(*t);
  }
  static kvs_digest digest_of(const Table& t) {
    kvs_digest d{};
    EXPECT_EQ(kvs_table_digest(t.native(), &d), KVS_OK) << kvs_last_error();
    return d;
  }
  // The contents' digest counted from what a reader sees.
  static uint64_t counted(const Table& t) {
    uint64_t sum = 0;
    auto g = t.read();
    EXPECT_TRUE(g);
    auto ok = g->for_each([&](std::string_view k, std::string_view v) {
      const std::string kv = std::string(k) + std::string(v);
      sum += format::entry_digest(kv.data(), static_cast<uint32_t>(k.size()),
                                  static_cast<uint32_t>(v.size()));
      return true;
    });
    EXPECT_TRUE(ok);
    return sum;
  }
  // A put (or, without a value, an erase) at the partition's next offset,
  // published as kvsd publishes it.
  void apply(TableWriter& w, const std::string& key, std::optional<std::string> value,
             uint32_t partition) {
    int64_t& off = next_[partition];
    std::optional<std::string_view> v;
    if (value) v = *value;
    auto r = w.apply(key, v, Origin{1000 + off, partition}, off);
    ASSERT_TRUE(r) << r.error().message;
    w.record_applied(partition, off, 1000 + off, key);
    ++off;
  }
  // Random puts, overwrites (values of 0..300 bytes) and erases over 300 keys.
  void churn(TableWriter& w, int n, std::mt19937& rng) {
    for (int i = 0; i < n; ++i) {
      const std::string key = "k" + std::to_string(rng() % 300);
      if (rng() % 4 == 0) {
        apply(w, key, std::nullopt, rng() % 2);
      } else {
        apply(w, key, std::string(rng() % 301, static_cast<char>('a' + rng() % 26)), rng() % 2);
      }
    }
  }

  test::ShmScope shm_;
  std::map<uint32_t, int64_t> next_;
};

TEST_F(DigestTest, FollowsPutsOverwritesAndErasesAndEqualsACountFromTheContents) {
  auto w = open_writer(options("t"));
  ASSERT_TRUE(w);
  ASSERT_TRUE(w->set_partition_count(2));
  auto t = open_table("t");
  std::mt19937 rng(7);
  EXPECT_EQ(digest_of(t).contents, 0u);
  for (int round = 0; round < 20; ++round) {
    churn(*w, 200, rng);
    ASSERT_EQ(digest_of(t).contents, counted(t)) << "round " << round;
  }
  EXPECT_GT(t.size(), 0u);
}

// Equal contents give equal contents digests whatever the history; the
// digest proper also covers the offsets; one changed value shows.
TEST_F(DigestTest, DependsOnTheContentsAndOffsetsNotOnTheOrderTheyCameIn) {
  auto a = open_writer(options("a"));
  auto b = open_writer(options("b"));
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->set_partition_count(2) && b->set_partition_count(2));
  std::mt19937 rng(3);
  churn(*a, 3000, rng);
  auto ta = open_table("a");
  auto tb = open_table("b");
  std::map<std::string, std::string> contents;
  {
    auto g = ta.read();
    ASSERT_TRUE(g);
    ASSERT_TRUE(g->for_each([&](std::string_view k, std::string_view v) {
      contents.emplace(k, v);
      return true;
    }));
  }
  for (auto it = contents.rbegin(); it != contents.rend(); ++it) {
    ASSERT_TRUE(b->put(it->first, "first " + it->second));
    ASSERT_TRUE(b->put(it->first, it->second));
  }
  ASSERT_TRUE(b->put("gone", "soon"));
  ASSERT_TRUE(b->erase("gone"));
  EXPECT_EQ(digest_of(ta).contents, digest_of(tb).contents);
  EXPECT_NE(digest_of(ta).digest, digest_of(tb).digest) << "b is at other offsets";
  for (uint32_t p = 0; p < 2; ++p) b->set_next_offset(p, a->next_offset(p));
  EXPECT_EQ(digest_of(ta).digest, digest_of(tb).digest);
  EXPECT_EQ(digest_of(tb).partitions, 2u);

  ASSERT_TRUE(b->put(contents.begin()->first, contents.begin()->second + "!"));
  EXPECT_NE(digest_of(ta).contents, digest_of(tb).contents);
  EXPECT_NE(digest_of(ta).digest, digest_of(tb).digest);
}

// A record applied and its offset not published yet: the digest would
// count it and the offsets not, so it is not read until they agree.
TEST_F(DigestTest, IsReadOnlyWithTheOffsetsItCovers) {
  auto w = open_writer(options("t"));
  ASSERT_TRUE(w);
  auto t = open_table("t");
  apply(*w, "a", "1", 0);
  const kvs_digest before = digest_of(t);
  ASSERT_TRUE(w->apply("b", std::string_view("2"), Origin{5, 0}, 1));
  kvs_digest d{};
  EXPECT_EQ(kvs_table_digest(t.native(), &d), KVS_EBUSY);
  EXPECT_NE(std::string(kvs_last_error()).find("applied records throughout"), std::string::npos)
      << kvs_last_error();
  w->record_applied(0, 1, 5, "b");
  const kvs_digest after = digest_of(t);
  EXPECT_NE(after.contents, before.contents);
  EXPECT_EQ(after.contents, counted(t));
}

// A record that finds no room stores nothing: the digest stays readable,
// paired with the offsets, while the record waits (a table at its limit
// may hold one for hours).
TEST_F(DigestTest, ARecordThatWaitsForRoomLeavesTheDigestReadable) {
  WriterOptions o = options("t");
  o.capacity = 4;
  auto w = open_writer(o);
  ASSERT_TRUE(w);
  auto t = open_table("t");
  for (int i = 0; i < static_cast<int>(w->header().capacity); ++i)
    apply(*w, "k" + std::to_string(i), "v", 0);
  const kvs_digest full = digest_of(t);
  auto r = w->apply("one too many", std::string_view("v"), Origin{1, 0}, next_[0]);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kTableFull);
  kvs_digest d{};
  ASSERT_EQ(kvs_table_digest(t.native(), &d), KVS_OK) << kvs_last_error();
  EXPECT_EQ(d.digest, full.digest);
}

// kvsd applies records and publishes their offsets in one thread while
// another reads the digest: every digest read is the one of the contents
// at the offsets read with it (the writer's sequence is known in advance).
TEST_F(DigestTest, EveryDigestReadIsTheOneOfTheOffsetsReadWithIt) {
  auto w = open_writer(options("t"));
  ASSERT_TRUE(w);
  ASSERT_TRUE(w->set_partition_count(1));
  auto t = open_table("t");
  constexpr int kRecords = 20000;
  auto key_of = [](int i) { return "k" + std::to_string(i % 37); };
  auto value_of = [](int i) { return std::string(i % 23, 'v') + std::to_string(i); };
  // The contents' digest after records 0..i-1 (offset i).
  std::vector<uint64_t> expected(kRecords + 1, 0);
  {
    std::map<std::string, std::string> m;
    auto sum = [&] {
      uint64_t total = 0;
      for (const auto& [k, v] : m) {
        const std::string kv = k + v;
        total += format::entry_digest(kv.data(), static_cast<uint32_t>(k.size()),
                                      static_cast<uint32_t>(v.size()));
      }
      return total;
    };
    for (int i = 0; i < kRecords; ++i) {
      if (i % 5 == 4) {
        m.erase(key_of(i));
      } else {
        m[key_of(i)] = value_of(i);
      }
      expected[i + 1] = sum();
    }
  }
  std::atomic<bool> done{false};
  std::atomic<int> reads{0};
  std::thread writer([&] {
    for (int i = 0; i < kRecords; ++i) {
      // Every 500 records, a pause until the reader has read once more (at
      // most a second), so that reads land all along the sequence.
      if (i % 500 == 0) {
        const int seen = reads.load();
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
        while (reads.load() == seen && std::chrono::steady_clock::now() < until)
          std::this_thread::yield();
      }
      if (i % 5 == 4) {
        apply(*w, key_of(i), std::nullopt, 0);
      } else {
        apply(*w, key_of(i), value_of(i), 0);
      }
    }
    done = true;
  });
  while (!done.load()) {
    kvs_digest d{};
    if (kvs_table_digest(t.native(), &d) != KVS_OK) continue;
    int64_t next = 0;
    ASSERT_TRUE(t.partition_offsets(0)) << "no offsets";
    // The pair is checked through the digest proper, which covers both.
    for (int64_t o = 0; o <= kRecords; ++o) {
      const int64_t offsets[1] = {o};
      if (format::table_digest(expected[o], offsets, 1) == d.digest) {
        next = o;
        break;
      }
      ASSERT_LT(o, kRecords) << "digest " << d.digest << " is no offset's own";
    }
    EXPECT_EQ(d.contents, expected[next]);
    ++reads;
  }
  writer.join();
  EXPECT_GE(reads.load(), kRecords / 500 / 2);
  EXPECT_EQ(digest_of(t).contents, expected[kRecords]);
}

TEST_F(DigestTest, AGrownTableKeepsItsDigest) {
  auto w = open_writer(options("t"));
  ASSERT_TRUE(w);
  ASSERT_TRUE(w->set_partition_count(2));
  std::mt19937 rng(5);
  churn(*w, 2000, rng);
  auto t = open_table("t");
  const kvs_digest before = digest_of(t);
  auto grown = w->begin_resize(TableSize{16384, 16 << 20});
  ASSERT_TRUE(grown) << grown.error().message;
  TableWriter& next = **grown;
  ASSERT_TRUE(next.copy_step(64));
  // Records applied while copying go to the new segment.
  apply(next, "k1", "during the copy", 0);
  apply(next, "k2", std::nullopt, 1);
  ASSERT_TRUE(next.copy_rest());
  ASSERT_TRUE(w->publish_replacement(next));
  auto t2 = open_table("t");
  EXPECT_EQ(digest_of(t2).contents, counted(t2));
  EXPECT_NE(digest_of(t2).contents, before.contents);
}

// A writer killed at either point of a slot store's bracket, on a put of a
// new key, an overwrite or an erase: the next writer's attach settles the
// digest to the table's contents.
TEST_F(DigestTest, AWriterDyingInsideASlotStoreLeavesADigestTheNextSettles) {
  static int g_stores_left;
  static fault::Point g_point;
  for (fault::Point point : {fault::Point::kDigestBracketed, fault::Point::kSlotStored}) {
    for (int kill_at : {1, 350, 600, 999}) {
      const std::string name =
          "t" + std::to_string(static_cast<int>(point)) + "_" + std::to_string(kill_at);
      const pid_t child = ::fork();
      ASSERT_GE(child, 0);
      if (child == 0) {
        auto w = TableWriter::open(options(name));
        if (!w) ::_exit(2);
        g_stores_left = kill_at;
        g_point = point;
        fault::g_hook.store([](fault::Point p) {
          if (p == g_point && --g_stores_left == 0) ::_exit(0);
        });
        std::mt19937 rng(kill_at);
        // Puts of 300 keys, then overwrites and erases.
        for (int i = 0; i < 2000; ++i) {
          const std::string key = "k" + std::to_string(i < 300 ? i : rng() % 300);
          auto r = i >= 300 && i % 3 == 0 ? (*w)->erase(key).has_value()
                                          : (*w)->put(key, std::string(i % 50, 'v')).has_value();
          if (!r) ::_exit(4);
        }
        ::_exit(3);
      }
      int status = 0;
      ASSERT_EQ(::waitpid(child, &status, 0), child);
      ASSERT_TRUE(WIFEXITED(status));
      ASSERT_EQ(WEXITSTATUS(status), 0) << "the writer did not reach store " << kill_at;
      auto w = open_writer(options(name));
      ASSERT_TRUE(w);
      EXPECT_EQ(w->attach_kind(), AttachKind::kAttached);
      auto t = open_table(name);
      EXPECT_EQ(digest_of(t).contents, counted(t)) << name;
      // And it goes on from there.
      ASSERT_TRUE(w->put("after", "the restart"));
      ASSERT_TRUE(w->erase("k1").has_value());
      EXPECT_EQ(digest_of(t).contents, counted(t)) << name;
    }
  }
}

// A writer killed after a record's slot store and before its offset's
// publication: the digest counts the record, the offsets do not. The next
// writer's attach keeps the digest unpaired until the record is applied
// again and its offset published.
TEST_F(DigestTest, ARecordAppliedAndNotPublishedAtACrashKeepsTheDigestUnpaired) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto w = TableWriter::open(options("t"));
    if (!w) ::_exit(2);
    if (!(*w)->apply("a", std::string_view("1"), Origin{1, 0}, 0)) ::_exit(3);
    (*w)->record_applied(0, 0, 1, "a");
    fault::g_hook.store([](fault::Point p) {
      if (p == fault::Point::kPutStored) ::_exit(0);
    });
    (void)(*w)->apply("b", std::string_view("2"), Origin{2, 0}, 1);
    ::_exit(4);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  auto w = open_writer(options("t"));
  ASSERT_TRUE(w);
  auto t = open_table("t");
  EXPECT_EQ(w->next_offset(0), 1);
  kvs_digest d{};
  EXPECT_EQ(kvs_table_digest(t.native(), &d), KVS_EBUSY)
      << "a digest counting offset 1 was paired with offset " << w->next_offset(0);
  // kvsd resumes at offset 1: the record again, then its offset.
  ASSERT_TRUE(w->apply("b", std::string_view("2"), Origin{2, 0}, 1));
  w->record_applied(0, 1, 2, "b");
  EXPECT_EQ(digest_of(t).contents, counted(t));
}

}  // namespace
}  // namespace kvs
