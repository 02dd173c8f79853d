// libkvs's read API: errors on open, guards, batched and copying reads, the
// read-only mapping, and reads racing a writer thread (run under TSan in CI).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <limits>
#include <thread>
#include <vector>

#include "kvs/kvs.h"
#include "kvs/kvs.hpp"
#include "src/registry.hpp"
#include "support/registry_files.hpp"
#include "support/test_support.hpp"
#include "support/verified_value.hpp"
#include "writer/table_writer.hpp"

namespace kvs {
namespace {

class ReaderTest : public ::testing::Test {
 protected:
  std::unique_ptr<TableWriter> make_table(uint64_t capacity = 4096, uint64_t arena = 4 << 20) {
    WriterOptions o;
    o.table = "r";
    o.shm_prefix = shm_.prefix();
    o.capacity = capacity;
    o.arena_bytes = arena;
    o.reader_slots = 8;
    o.max_value_bytes = 4096;
    auto w = TableWriter::open(o);
    EXPECT_TRUE(w) << (w ? "" : w.error().message);
    return std::move(*w);
  }
  format::TableHeader* writable_header() {
    auto m = shm::open_segment(shm_.prefix() + "r", shm::Access::kReadWrite);
    EXPECT_TRUE(m);
    held_ = std::move(*m);
    return reinterpret_cast<format::TableHeader*>(held_->data());
  }
  test::ShmScope shm_;
  std::unique_ptr<shm::Mapping> held_;
};

TEST_F(ReaderTest, MissingTableIsRetriableNoTable) {
  auto t = Table::open("absent", {shm_.prefix()});
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, Errc::kNoTable);
  EXPECT_NE(t.error().message.find("/dev/shm/" + shm_.prefix() + "absent"), std::string::npos);
  EXPECT_NE(t.error().message.find("kvsd"), std::string::npos);
}

TEST_F(ReaderTest, OtherLayoutVersionIsAClearError) {
  auto w = make_table();
  writable_header()->layout_version = 99;
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, Errc::kLayoutMismatch);
  EXPECT_NE(t.error().message.find("has layout 99, this libkvs reads " +
                                   std::to_string(format::kLayoutVersion)),
            std::string::npos)
      << t.error().message;
}

TEST_F(ReaderTest, CorruptHeaderIsRefused) {
  auto w = make_table();
  writable_header()->group_count = 1ull << 40;  // would map past the segment
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, Errc::kCorrupt);
}

// A header whose capacity makes the group array's size wrap around 2^64 to
// exactly the real one: every size it implies matches the mapping, but a
// probe would index groups far outside it.
TEST_F(ReaderTest, CapacityThatWrapsTheGeometryIsRefused) {
  auto w = make_table();
  format::TableHeader* h = writable_header();
  const format::Geometry real =
      format::geometry(h->capacity, h->partition_capacity, h->arena_bytes, h->log_entries);
  const uint64_t target = real.group_count + (uint64_t{1} << 58);  // * 64 wraps to the same
  const auto approx = static_cast<uint64_t>(static_cast<double>(target) * 7 * format::kMaxSlotLoad);
  uint64_t crafted = 0;
  for (int64_t i = -200000; i <= 200000 && crafted == 0; ++i) {
    const uint64_t c = approx + static_cast<uint64_t>(i * 64);
    const format::Geometry g =
        format::geometry(c, h->partition_capacity, h->arena_bytes, h->log_entries);
    if (g.arena_offset == real.arena_offset && g.segment_bytes == real.segment_bytes) crafted = c;
  }
  ASSERT_NE(crafted, 0u) << "no wrapping capacity found near " << approx;
  h->capacity = crafted;
  h->group_count = format::groups_for_capacity(crafted);
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_FALSE(t) << "a header with " << h->group_count << " groups in a " << h->segment_bytes
                  << "-byte segment was accepted";
  EXPECT_EQ(t.error().code, Errc::kCorrupt);
}

// Readers trust only segments that nobody but a trusted owner can write.
TEST_F(ReaderTest, SegmentWritableByOthersIsRefused) {
  auto w = make_table();
  ASSERT_EQ(::chmod(shm_.path("r").c_str(), 0666), 0);
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, Errc::kPermission);
  EXPECT_NE(t.error().message.find("writable by others than its owner"), std::string::npos)
      << t.error().message;
}

// A segment (or registry) planted by another user before kvsd started is
// used neither by kvsd nor by readers.
TEST_F(ReaderTest, SegmentPlantedByAnotherUserIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give a segment another owner";
  auto w = make_table();
  ASSERT_EQ(::chown(shm_.path("r").c_str(), 5001, 5001), 0);
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, Errc::kPermission);
  EXPECT_NE(t.error().message.find("belongs to uid 5001"), std::string::npos) << t.error().message;
  w.reset();
  WriterOptions o;
  o.table = "r";
  o.shm_prefix = shm_.prefix();
  auto again = TableWriter::open(o);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, Errc::kPermission);
  EXPECT_NE(again.error().message.find("another user made it"), std::string::npos)
      << again.error().message;
  // The same for a planted registry directory.
  ASSERT_EQ(::chown(shm_.path("r").c_str(), 0, 0), 0);
  ASSERT_EQ(::chown((shm_.path("r") + ".readers").c_str(), 5001, 5001), 0);
  again = TableWriter::open(o);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, Errc::kPermission);
  t = Table::open("r", {shm_.prefix()});
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, Errc::kPermission);
}

TEST_F(ReaderTest, ForeignSegmentIsRefused) {
  auto w = make_table();
  writable_header()->magic = 0x1234;
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, Errc::kCorrupt);
  EXPECT_NE(t.error().message.find("not a kvs table"), std::string::npos);
}

TEST_F(ReaderTest, InvalidNameIsRefused) {
  kvs_table* t = nullptr;
  EXPECT_EQ(kvs_open("../etc/passwd", nullptr, &t), KVS_EINVAL);
  EXPECT_NE(std::string(kvs_last_error()).find("../etc/passwd"), std::string::npos);
  EXPECT_EQ(t, nullptr);
}

TEST_F(ReaderTest, CorruptSlotYieldsAnErrorNotACrash) {
  auto w = make_table();
  ASSERT_TRUE(w->put("k", "v"));
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_TRUE(t);
  // Every group claims overflow and one slot points past the arena.
  auto* h = writable_header();
  auto* groups = reinterpret_cast<format::Group*>(held_->data() + h->groups_offset);
  for (uint64_t g = 0; g < h->group_count; ++g) groups[g].overflow.store(1);
  auto g = t->read();
  ASSERT_TRUE(g);
  auto absent = g->get("not there");  // probes every group once, then stops
  ASSERT_FALSE(absent);
  EXPECT_EQ(absent.error().code, Errc::kCorrupt);
  const uint64_t hash = format::hash_key("k", 1);
  const uint64_t home = format::home_group(hash, h->group_count);
  for (int i = 0; i < format::kSlotsPerGroup; ++i) {
    groups[home].slots[i].store(
        format::make_slot(format::hash_tag(hash), h->arena_offset + h->arena_bytes - 8));
  }
  auto bad = g->get("k");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::kCorrupt);
}

TEST_F(ReaderTest, GuardsNestPerThread) {
  auto w = make_table();
  ASSERT_TRUE(w->put("k", "v1"));
  kvs_table* t = nullptr;
  ASSERT_EQ(kvs_open("r", nullptr, &t), KVS_ENOTABLE) << "the default prefix is another table";
  kvs_open_options o{shm_.prefix().c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  ASSERT_EQ(kvs_open("r", &o, &t), KVS_OK);
  kvs_txn *a = nullptr, *b = nullptr;
  ASSERT_EQ(kvs_read_begin(t, &a), KVS_OK);
  ASSERT_EQ(kvs_read_begin(t, &b), KVS_OK);
  EXPECT_EQ(a, b);
  const void* v;
  size_t n;
  ASSERT_EQ(kvs_get(a, "k", 1, &v, &n), KVS_OK);
  ASSERT_TRUE(w->put("k", "v2"));
  kvs_read_end(b);  // inner end: still pinned
  w->reclaim();
  EXPECT_GT(w->stats().retired_bytes, 0u);
  EXPECT_EQ(std::string(static_cast<const char*>(v), n), "v1");
  kvs_read_end(a);
  w->reclaim();
  EXPECT_EQ(w->stats().retired_bytes, 0u);
  EXPECT_EQ(kvs_get(a, "k", 1, &v, &n), KVS_EINVAL);  // no guard open any more
  kvs_close(t);
}

TEST_F(ReaderTest, MultiGetMatchesSingleGets) {
  auto w = make_table();
  std::vector<std::string> keys;
  for (int i = 0; i < 100; ++i) {
    keys.push_back("key" + std::to_string(i));
    if (i % 3) {
      ASSERT_TRUE(w->put(keys.back(), "value" + std::to_string(i)));
    }
  }
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_TRUE(t);
  auto g = t->read();
  ASSERT_TRUE(g);
  std::vector<std::string_view> views(keys.begin(), keys.end());
  auto many = g->multi_get(views);
  ASSERT_TRUE(many);
  ASSERT_EQ(many->size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    auto one = g->get(keys[i]);
    if (i % 3) {
      ASSERT_TRUE(one);
      ASSERT_TRUE((*many)[i].has_value());
      EXPECT_EQ(*(*many)[i], *one);
      EXPECT_EQ(*one, "value" + std::to_string(i));
    } else {
      EXPECT_FALSE(one);
      EXPECT_FALSE((*many)[i].has_value());
    }
  }
}

TEST_F(ReaderTest, GetCopyReportsTheSizeNeeded) {
  auto w = make_table();
  ASSERT_TRUE(w->put("k", "twelve bytes"));
  kvs_open_options o{shm_.prefix().c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  kvs_table* t = nullptr;
  ASSERT_EQ(kvs_open("r", &o, &t), KVS_OK);
  char buf[4];
  size_t n = 0;
  EXPECT_EQ(kvs_get_copy(t, "k", 1, buf, sizeof buf, &n), KVS_ERANGE);
  EXPECT_EQ(n, 12u);
  char big[32];
  ASSERT_EQ(kvs_get_copy(t, "k", 1, big, sizeof big, &n), KVS_OK);
  EXPECT_EQ(std::string(big, n), "twelve bytes");
  EXPECT_EQ(kvs_get_copy(t, "x", 1, big, sizeof big, &n), KVS_ENOTFOUND);
  kvs_close(t);
  auto cpp = Table::open("r", {shm_.prefix()});
  ASSERT_TRUE(cpp);
  EXPECT_EQ(*cpp->get_copy("k"), "twelve bytes");
}

// kvs_stat shows the readers as kvsd last counted them, from the header.
TEST_F(ReaderTest, StatsShowTheReadersTheWriterCounted) {
  auto w = make_table();
  kvs_open_options o{shm_.prefix().c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  kvs_table* t = nullptr;
  ASSERT_EQ(kvs_open("r", &o, &t), KVS_OK);
  kvs_txn* x = nullptr;
  ASSERT_EQ(kvs_read_begin(t, &x), KVS_OK);
  w->reclaim();  // its first call counts
  kvs_table_stats s{};
  ASSERT_EQ(kvs_stat(t, &s), KVS_OK);
  EXPECT_EQ(s.reader_slots, 8u);
  EXPECT_EQ(s.reader_slots_used, 1u);
  EXPECT_EQ(s.readers_reading, 1u);
  kvs_read_end(x);
  kvs_close(t);
}

// The backlog kvs_stat sums from the partitions' offsets is computed without
// overflow whatever a segment holds (the segment fuzzer found a next offset
// of INT64_MIN under a high watermark of 0).
TEST_F(ReaderTest, BacklogOfExtremeOffsetsDoesNotOverflow) {
  auto w = make_table();
  ASSERT_TRUE(w->set_partition_count(2));
  w->set_next_offset(0, std::numeric_limits<int64_t>::min());
  w->set_high_watermark(1, std::numeric_limits<int64_t>::max());
  w->set_next_offset(1, std::numeric_limits<int64_t>::min());
  kvs_open_options o{shm_.prefix().c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  kvs_table* t = nullptr;
  ASSERT_EQ(kvs_open("r", &o, &t), KVS_OK);
  kvs_table_stats s{};
  ASSERT_EQ(kvs_stat(t, &s), KVS_OK);
  // 2^63 (0 - INT64_MIN) plus 2^64 - 1 (INT64_MAX - INT64_MIN), modulo 2^64.
  EXPECT_EQ(s.backlog, (uint64_t{1} << 63) + std::numeric_limits<uint64_t>::max());
  kvs_close(t);
}

// Readers have no table-wide slot limit: each process keeps its own files
// of 63 slots and adds one when its threads need more.
TEST_F(ReaderTest, MoreThreadsThanOneFileHoldsReadAtOnce) {
  auto w = make_table();
  ASSERT_TRUE(w->put("k", "v"));
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_TRUE(t);
  constexpr int kThreads = 70;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0}, holding{0};
  std::atomic<bool> release{false};
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      auto g = t->read();
      if (g && g->get("k") && *g->get("k") == "v") ++ok;
      ++holding;
      while (!release.load()) std::this_thread::yield();
    });
  }
  ASSERT_TRUE(test::wait_until([&] { return holding.load() == kThreads; }));
  EXPECT_EQ(test::reader_files(shm_.path("r") + ".readers", ::getpid()).size(), 2u);
  release = true;
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), kThreads);
  // Exited threads gave their slots back: a new thread can read.
  std::thread([&] { EXPECT_TRUE(t->read()); }).join();
}

// Lines of /proc/self/maps that map a removed (replaced) segment of `prefix`.
int removed_mappings(const std::string& prefix) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) {
    if (line.find("/dev/shm/" + prefix) != std::string::npos &&
        line.find("(deleted)") != std::string::npos && line.find(".readers") == std::string::npos) {
      ++n;
    }
  }
  return n;
}

// kvsd replaces a table's segment (a rebuild): an open Table follows it at
// its next read, a guard open across the switch keeps its old views, and the
// old segment is unmapped once no thread reads it.
TEST_F(ReaderTest, OpenTableFollowsAReplacedSegment) {
  auto w = make_table();
  ASSERT_TRUE(w->put("old", "1"));
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_TRUE(t);
  auto g = t->read();
  ASSERT_TRUE(g);
  auto old_view = g->get("old");
  ASSERT_TRUE(old_view);

  auto next = w->begin_replacement();
  ASSERT_TRUE(next) << next.error().message;
  ASSERT_TRUE((*next)->put("new", "2"));
  (*next)->set_state(format::TableState::kReady);
  ASSERT_TRUE(w->publish_replacement(**next));
  w = std::move(*next);

  {
    auto inner = t->read();  // nested: still the old segment
    ASSERT_TRUE(inner);
    EXPECT_TRUE(inner->get("old"));
    EXPECT_FALSE(inner->get("new"));
  }
  EXPECT_EQ(*old_view, "1");
  g = Result<ReadGuard>(make_error(Errc::kInvalidArgument, "ended"));  // ends the guard
  EXPECT_EQ(removed_mappings(shm_.prefix()), 1);

  auto fresh = t->read();
  ASSERT_TRUE(fresh);
  EXPECT_FALSE(fresh->get("old"));
  EXPECT_EQ(*fresh->get("new"), "2");
  EXPECT_EQ(t->state(), State::kReady);
  EXPECT_EQ(removed_mappings(shm_.prefix()), 0) << "the old segment is still mapped";
}

// A segment deleted from under its readers (by hand, or systemd's
// RemoveIPC= for a user that is not a system user) and made anew by the
// next writer: a reader notices at its next slow-path call (kvs_stat,
// a wait, a first read in a thread) and follows the name.
TEST_F(ReaderTest, ASegmentDeletedFromUnderItsReadersIsFollowed) {
  auto w = make_table();
  ASSERT_TRUE(w->put("old", "1"));
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->get_copy("old"));
  shm::remove_segment(shm_.prefix() + "r");
  w.reset();
  w = make_table();
  ASSERT_EQ(w->attach_kind(), AttachKind::kCreated);
  ASSERT_TRUE(w->put("new", "2"));
  kvs_table_stats st{};
  ASSERT_EQ(kvs_stat(t->native(), &st), KVS_OK);
  EXPECT_EQ(st.entries, 1u) << "the reader still reads the deleted segment";
  EXPECT_TRUE(t->get_copy("new"));
  EXPECT_FALSE(t->get_copy("old"));
}

// During a rebuild, a reader of the old segment holds back reuse in the old
// segment only: the new segment's writer frees what its own readers no
// longer see (epochs of two segments are never compared).
TEST_F(ReaderTest, ReaderOfTheOldSegmentDoesNotHoldBackTheRebuild) {
  auto w = make_table();
  ASSERT_TRUE(w->put("k", "old"));
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_TRUE(t);
  auto g = t->read();  // held on the old segment throughout
  ASSERT_TRUE(g);
  auto next = w->begin_replacement();
  ASSERT_TRUE(next) << next.error().message;
  for (int i = 0; i < 100; ++i) ASSERT_TRUE((*next)->put("k", "new" + std::to_string(i)));
  EXPECT_EQ((*next)->reclaim(), 0u) << "the rebuild's retired blocks wait for a reader of the "
                                       "old segment";
  EXPECT_EQ(*g->get("k"), "old");
}

// A writer that died between flagging its segment replaced and renaming
// the new one into place: readers keep reading the segment under the name,
// and the next writer clears the flag, so readers stay with it.
TEST_F(ReaderTest, ReplacedFlagOfAnUnfinishedSwapIsClearedByTheNextWriter) {
  auto w = make_table();
  ASSERT_TRUE(w->put("k", "1"));
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_TRUE(t);
  writable_header()->replaced.store(1);  // the swap's first step, then a crash
  {
    auto g = t->read();
    ASSERT_TRUE(g) << g.error().message;
    EXPECT_EQ(*g->get("k"), "1");
  }
  w.reset();
  w = make_table();  // attaches
  EXPECT_EQ(w->header().replaced.load(), 0u);
  ASSERT_TRUE(w->put("k2", "2"));
  auto g = t->read();
  ASSERT_TRUE(g);
  EXPECT_EQ(*g->get("k2"), "2");
}

// Many replacements with reader threads: every read sees one whole
// generation (all keys carry the generation number), generations never go
// back, and neither mappings nor registry slots pile up.
TEST_F(ReaderTest, ReadersSeeWholeGenerationsAcrossReplacements) {
  constexpr int kKeys = 64;
  constexpr int kGenerations = 30;
  auto w = make_table();
  auto fill = [&](TableWriter& tw, int gen) {
    for (int k = 0; k < kKeys; ++k) {
      ASSERT_TRUE(tw.put("k" + std::to_string(k), std::to_string(gen)));
    }
  };
  fill(*w, 0);
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_TRUE(t);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0};
  std::atomic<int> seen_last{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      int last = 0;
      while (!stop.load()) {
        auto g = t->read();
        if (!g) {
          ++bad;
          return;
        }
        auto first = g->get("k0");
        if (!first) {
          ++bad;
          continue;
        }
        const int gen = std::stoi(std::string(*first));
        if (gen < last) ++bad;
        last = gen;
        for (int k = 1; k < kKeys; ++k) {
          auto v = g->get("k" + std::to_string(k));
          if (!v || std::stoi(std::string(*v)) != gen) ++bad;
        }
        if (gen == kGenerations) seen_last.fetch_add(1);
      }
    });
  }
  for (int gen = 1; gen <= kGenerations; ++gen) {
    auto next = w->begin_replacement();
    ASSERT_TRUE(next) << next.error().message;
    fill(**next, gen);
    ASSERT_TRUE(w->publish_replacement(**next));
    w = std::move(*next);
  }
  EXPECT_TRUE(test::wait_until([&] { return seen_last.load() >= 2; }));
  stop = true;
  for (auto& th : readers) th.join();
  EXPECT_EQ(bad.load(), 0u);
  // The reader threads have exited; this thread's next read collects.
  ASSERT_TRUE(t->read());
  EXPECT_EQ(removed_mappings(shm_.prefix()), 0);
  // Slots held by this process: this thread's and the two the exited
  // readers gave back for reuse, in one file, not one per generation.
  const auto files = test::reader_files(shm_.path("r") + ".readers", ::getpid());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_LE(files[0].slots_handed_out, 3u);
}

TEST(ReaderDeathTest, WritingThroughAReadersMappingCrashes) {
  test::ShmScope shm;
  WriterOptions o;
  o.table = "d";
  o.shm_prefix = shm.prefix();
  o.capacity = 16;
  o.arena_bytes = 1 << 16;
  o.max_value_bytes = 1024;
  auto w = TableWriter::open(o);
  ASSERT_TRUE(w);
  ASSERT_TRUE((*w)->put("k", "v"));
  auto t = Table::open("d", {shm.prefix()});
  ASSERT_TRUE(t);
  auto g = t->read();
  ASSERT_TRUE(g);
  auto v = g->get("k");
  ASSERT_TRUE(v);
  char* p = const_cast<char*>(v->data());
  EXPECT_DEATH({ *reinterpret_cast<volatile char*>(p) = 'x'; }, "");
}

// Threads in one process, so that ThreadSanitizer sees both sides: one writer
// churns verified values, readers check every read is whole and per key
// never goes back in version.
TEST_F(ReaderTest, ConcurrentReadersSeeOnlyWholeMonotonicValues) {
  constexpr uint64_t kKeys = 500;
  auto w = make_table(kKeys * 2, 1 << 20);
  for (uint64_t k = 0; k < kKeys; ++k)
    ASSERT_TRUE(w->put(test::make_key(k), test::make_value(k, 1)));
  auto t = Table::open("r", {shm_.prefix()});
  ASSERT_TRUE(t);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0}, reads{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&, r] {
      std::vector<uint64_t> last(kKeys, 0);
      uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed) || n < 20000) {
        auto g = t->read();
        if (!g) {
          ++bad;
          return;
        }
        for (int i = 0; i < 16; ++i, ++n) {
          const uint64_t k = (n * 7919 + r) % kKeys;
          const std::string key = test::make_key(k);
          auto v = g->get(key);
          if (!v) continue;  // erased right now
          uint64_t ver = 0;
          if (!test::check_value(key, *v, &ver) || ver < last[k]) ++bad;
          last[k] = ver;
        }
      }
      reads += n;
    });
  }
  std::vector<uint64_t> version(kKeys, 1);
  for (uint64_t op = 0; op < 60000; ++op) {
    const uint64_t k = (op * 131) % kKeys;
    if (op % 5 == 0) {
      ASSERT_TRUE(w->erase(test::make_key(k)));
    } else {
      const std::string value = test::make_value(k, ++version[k]);
      Result<void> r;
      // A reader preempted inside its guard holds space back: wait for it.
      while (!(r = w->put(test::make_key(k), value)) && r.error().code == Errc::kBusy) {
        std::this_thread::yield();
        w->reclaim();
      }
      ASSERT_TRUE(r) << r.error().message;
    }
    if (op % 64 == 0) w->reclaim();
  }
  stop = true;
  for (auto& th : readers) th.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GE(reads.load(), 40000u);
}

}  // namespace
}  // namespace kvs
