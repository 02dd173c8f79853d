// Resizing a table (TableWriter::begin_resize, copy_step): the copy of the
// live entries into a new segment while records are applied to it, read
// back through libkvs, in one process.
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvs/kvs.hpp"
#include "support/table_contents.hpp"
#include "support/test_support.hpp"
#include "support/writer_support.hpp"
#include "writer/fault_points.hpp"
#include "writer/table_writer.hpp"

namespace kvs {
namespace {

using test::open_writer;

using format::Origin;

class ResizeTest : public ::testing::Test {
 protected:
  WriterOptions options(const std::string& table, uint64_t capacity = 1024,
                        uint64_t arena = 1 << 20) {
    WriterOptions o;
    o.table = table;
    o.shm_prefix = shm_.prefix();
    o.capacity = capacity;
    o.arena_bytes = arena;
    o.reader_slots = 16;
    o.max_key_bytes = 256;
    o.max_value_bytes = 4096;
    return o;
  }
  Table open_reader(const std::string& table) {
    auto t = Table::open(table, {shm_.prefix()});
    EXPECT_TRUE(t) << (t ? "" : t.error().message);
    return std::move(*t);
  }
  std::unique_ptr<TableWriter> resize(TableWriter& w, TableSize size) {
    auto r = w.begin_resize(size);
    EXPECT_TRUE(r) << (r ? "" : r.error().message);
    return r ? std::move(*r) : nullptr;
  }
  kvs_table_stats stat(const std::string& table) {
    kvs_open_options o{shm_.prefix().c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
    kvs_table* t = nullptr;
    kvs_table_stats s{};
    EXPECT_EQ(kvs_open(table.c_str(), &o, &t), KVS_OK);
    if (t) {
      kvs_stat(t, &s);
      kvs_close(t);
    }
    return s;
  }
  static std::map<std::string, std::string> contents(const Table& t) { return test::contents(t); }
  test::ShmScope shm_;
};

// Random records from two partitions (so that format::replaces decides
// between them), applied to a table that is resized in the middle, with
// copy steps between them, and to a reference table that never is: both
// end equal, and the old segment's readers saw the old table throughout.
TEST_F(ResizeTest, RecordsAppliedDuringTheCopyEndAsIfAppliedToTheWholeTable) {
  for (uint64_t seed : {1u, 2u, 3u, 4u, 5u}) {
    SCOPED_TRACE(seed);
    shm::remove_segment(shm_.prefix() + "t");
    shm::remove_segment(shm_.prefix() + "ref");
    auto w = open_writer(options("t", 1024, 1 << 20));
    auto ref = open_writer(options("ref", 8192, 8 << 20));
    std::mt19937_64 rng(seed);
    auto record = [&](TableWriter& target) {
      const std::string key = "key" + std::to_string(rng() % 1500);
      // Timestamps in no order: across partitions, records often lose.
      const Origin origin{static_cast<int64_t>(rng() % 100000), static_cast<uint32_t>(rng() % 2)};
      std::optional<std::string> value;
      if (rng() % 4 != 0) value = std::string(rng() % 64, char('a' + rng() % 26));
      std::optional<std::string_view> v;
      if (value) v = *value;
      auto a = target.apply(key, v, origin);
      ASSERT_TRUE(a) << a.error().message;
      auto b = ref->apply(key, v, origin);
      ASSERT_TRUE(b) << b.error().message;
      EXPECT_EQ(*a, *b) << key;
    };
    for (int i = 0; i < 1500; ++i) record(*w);
    auto reader = open_reader("t");
    const auto before = contents(reader);
    auto next = resize(*w, TableSize{4096, 4 << 20});
    ASSERT_TRUE(next);
    EXPECT_TRUE(next->copying());
    bool done = false;
    for (int i = 0; i < 4000; ++i) {
      record(*next);
      if (i % 16 == 0 && !done) {
        auto step = next->copy_step(3);
        ASSERT_TRUE(step) << step.error().message;
        done = *step;
      }
    }
    ASSERT_TRUE(done) << "the copy should have ended within the records";
    EXPECT_FALSE(next->copying());
    // The old segment was never written: its readers saw the same table.
    EXPECT_EQ(contents(reader), before);
    ASSERT_TRUE(w->publish_replacement(*next));
    EXPECT_EQ(contents(reader), contents(open_reader("ref")));
    EXPECT_EQ(stat("t").capacity, 4096u);
    EXPECT_EQ(next->stats().size, ref->stats().size);
  }
}

// A key erased during the copy, before the copy reached it, stays erased;
// a key put during the copy keeps the new value.
TEST_F(ResizeTest, KeysErasedOrPutBeforeTheCopyReachesThemKeepTheirLaterState) {
  auto w = open_writer(options("t"));
  for (int i = 0; i < 500; ++i) ASSERT_TRUE(w->put("k" + std::to_string(i), "old"));
  auto next = resize(*w, TableSize{2048, 2 << 20});
  ASSERT_TRUE(next);
  for (int i = 0; i < 500; i += 2) ASSERT_TRUE(next->erase("k" + std::to_string(i)));
  for (int i = 1; i < 500; i += 4) ASSERT_TRUE(next->put("k" + std::to_string(i), "new"));
  auto done = next->copy_step(UINT64_MAX);
  ASSERT_TRUE(done && *done);
  ASSERT_TRUE(w->publish_replacement(*next));
  auto t = open_reader("t");
  const auto c = contents(t);
  EXPECT_EQ(c.size(), 250u);
  for (int i = 0; i < 500; ++i) {
    auto it = c.find("k" + std::to_string(i));
    if (i % 2 == 0) {
      EXPECT_EQ(it, c.end()) << i;
    } else {
      ASSERT_NE(it, c.end()) << i;
      EXPECT_EQ(it->second, i % 4 == 1 ? "new" : "old") << i;
    }
  }
}

// The partitions' positions, the fingerprint and the source travel with the
// data; the copy itself counts no puts.
TEST_F(ResizeTest, PositionsSourceAndCountersAreCarriedOver) {
  auto w = open_writer(options("t"));
  ASSERT_TRUE(w->set_partition_count(3));
  ASSERT_TRUE(w->put("a", "1"));
  w->record_applied(2, 41, 77, "a");
  w->set_high_watermark(2, 50);
  w->set_source(11, 22);
  w->set_state(format::TableState::kReady);
  auto next = resize(*w, TableSize{2048, 2 << 20});
  ASSERT_TRUE(next);
  EXPECT_EQ(next->next_offset(2), 42);
  EXPECT_EQ(next->last_record(2).offset, 41);
  EXPECT_EQ(next->last_record(2).timestamp_ms, 77);
  EXPECT_EQ(next->source_cluster(), 11u);
  EXPECT_EQ(next->source_topic(), 22u);
  EXPECT_EQ(next->header().partition_count.load(), 3u);
  EXPECT_EQ(next->header().state.load(), static_cast<uint32_t>(format::TableState::kReady));
  auto done = next->copy_step(UINT64_MAX);
  ASSERT_TRUE(done && *done);
  EXPECT_EQ(next->header().puts.load(), w->header().puts.load());
  EXPECT_EQ(next->stats().size, 1u);
  EXPECT_EQ(next->stats().live_bytes, w->stats().live_bytes);
}

// A record that would take the room the entries still to copy need makes
// the copy finish first: no entry is ever lost for lack of room.
TEST_F(ResizeTest, RecordsNeverTakeTheRoomOfEntriesStillToCopy) {
  auto w = open_writer(options("t", 1024, 1 << 20));
  for (int i = 0; i < 1000; ++i)
    ASSERT_TRUE(w->put("k" + std::to_string(i), std::string(100, 'x')));
  const WriterStats st = w->stats();
  auto next = resize(*w, TableSize{1100, st.live_bytes + 8192});
  ASSERT_TRUE(next);
  int added = 0;
  for (int i = 0; i < 200; ++i) {
    auto r = next->put("new" + std::to_string(i), std::string(100, 'y'));
    if (!r) {
      EXPECT_EQ(r.error().code, Errc::kTableFull) << r.error().message;
      break;
    }
    ++added;
  }
  EXPECT_FALSE(next->copying()) << "the copy should have been finished to make room";
  EXPECT_GT(added, 0);
  EXPECT_LT(added, 200);
  ASSERT_TRUE(w->publish_replacement(*next));
  const auto c = contents(open_reader("t"));
  EXPECT_EQ(c.size(), 1000u + added);
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(c.count("k" + std::to_string(i))) << i;
}

// Free blocks too small for the entries still to copy are not room for
// them: records that fill the arena's end make the copy finish first, and
// the copy never finds itself without room.
TEST_F(ResizeTest, FreeBlocksTooSmallForTheEntriesToCopyAreNotTheirRoom) {
  auto w = open_writer(options("t"));
  const std::string big(1000, 'B'), small(16, 's'), mid(30, 'm');
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(w->put("b" + std::to_string(i), big));
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(w->put("s" + std::to_string(100 + i), small));
  auto next = resize(*w, TableSize{1024, 16384});
  ASSERT_TRUE(next);
  // Each small key is copied, then erased: its blocks become free blocks
  // of a size no big entry fits.
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(next->erase("s" + std::to_string(100 + i)));
  next->reclaim_now();
  int added = 0;
  for (; added < 200; ++added) {
    auto r = next->put("n" + std::to_string(100 + added), mid);
    if (!r) {
      EXPECT_EQ(r.error().code, Errc::kTableFull) << r.error().message;
      break;
    }
  }
  auto done = next->copy_step(UINT64_MAX);
  ASSERT_TRUE(done) << done.error().message;
  EXPECT_TRUE(*done);
  ASSERT_TRUE(w->publish_replacement(*next));
  const auto c = contents(open_reader("t"));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(c.count("b" + std::to_string(i)), 1u) << i;
  EXPECT_EQ(c.size(), 10u + added);
}

// A resize right after an attach finishes the attach's arena walk first: an
// arena the walk finds off is not copied from (kCorrupt; the walk's report
// stays for kvsd, which rebuilds the table from the topic).
TEST_F(ResizeTest, AnArenaTheAttachWalkFindsOffIsNotCopiedFrom) {
  auto o = options("t");
  {
    auto w = open_writer(o);
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(w->put("k" + std::to_string(i), "value"));
  }
  {
    // The first block claims twice its size: the chain skips the second.
    auto m = shm::open_segment(shm_.prefix() + "t", shm::Access::kReadWrite);
    ASSERT_TRUE(m);
    auto* h = reinterpret_cast<format::TableHeader*>((*m)->data());
    uint32_t claimed = 0;
    std::memcpy(&claimed, (*m)->data() + h->arena_offset, sizeof claimed);
    claimed *= 2;
    std::memcpy((*m)->data() + h->arena_offset, &claimed, sizeof claimed);
  }
  o.attach_walk_bytes = 8;
  auto w = open_writer(o);
  ASSERT_EQ(w->attach_kind(), AttachKind::kAttached);  // the index is sound
  auto next = w->begin_resize(TableSize{2048, 2 << 20});
  ASSERT_FALSE(next);
  EXPECT_EQ(next.error().code, Errc::kCorrupt) << next.error().message;
  auto report = w->take_attach_walk_report();
  ASSERT_TRUE(report);
  EXPECT_TRUE(report->corrupt);
}

TEST_F(ResizeTest, TooSmallASizeIsRefusedAndAnUnpublishedSegmentIsRemoved) {
  auto w = open_writer(options("t"));
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(w->put("k" + std::to_string(i), "v"));
  auto small = w->begin_resize(TableSize{50, 1 << 20});
  ASSERT_FALSE(small);
  EXPECT_EQ(small.error().code, Errc::kInvalidArgument);
  EXPECT_NE(small.error().message.find("cannot hold its 100 entries"), std::string::npos)
      << small.error().message;
  std::string temp;
  {
    auto next = resize(*w, TableSize{2048, 2 << 20});
    ASSERT_TRUE(next);
    temp = next->segment_name();
    EXPECT_TRUE(std::filesystem::exists(shm::path_of(temp)));
  }
  EXPECT_FALSE(std::filesystem::exists(shm::path_of(temp)));
  // The source is the table still.
  EXPECT_EQ(contents(open_reader("t")).size(), 100u);
}

// Shrinking: a table that once held many entries is copied into a segment
// sized for what it holds now.
TEST_F(ResizeTest, ShrinkCopiesOnlyTheLiveEntries) {
  auto w = open_writer(options("t", 16384, 16 << 20));
  for (int i = 0; i < 10000; ++i)
    ASSERT_TRUE(w->put("k" + std::to_string(i), std::string(500, 'v')));
  for (int i = 100; i < 10000; ++i) ASSERT_TRUE(w->erase("k" + std::to_string(i)));
  const WriterStats st = w->stats();
  EXPECT_EQ(st.size, 100u);
  EXPECT_TRUE(st.live_bytes_exact);
  EXPECT_EQ(st.live_bytes, 100 * format::block_bytes_for(3, 500));  // 2- and 3-byte keys alike
  auto next = resize(*w, TableSize{1024, 1 << 20});
  ASSERT_TRUE(next);
  auto done = next->copy_step(UINT64_MAX);
  ASSERT_TRUE(done && *done);
  ASSERT_TRUE(w->publish_replacement(*next));
  auto t = open_reader("t");
  EXPECT_EQ(contents(t).size(), 100u);
  EXPECT_LT(stat("t").segment_bytes, 2u << 20);
}

// A read that begins between the old segment being flagged replaced and
// the new one taking its name must not leave its reader on the old segment
// for long: the next read after the swap sees what was written to the new
// segment since (a write acknowledged VISIBLE is visible to every reader).
TEST_F(ResizeTest, AReadInsideTheSwapWindowDoesNotKeepTheReaderOnTheOldSegment) {
  auto w = open_writer(options("t", 1024, 1 << 20));
  ASSERT_TRUE(w->put("before", "1"));
  static Table* reader = nullptr;
  auto t = open_reader("t");
  reader = &t;
  ASSERT_TRUE(t.get_copy("before"));
  auto next = resize(*w, TableSize{4096, 4 << 20});
  ASSERT_TRUE(next);
  auto done = next->copy_step(UINT64_MAX);
  ASSERT_TRUE(done && *done);
  // The window the swap opens: the reader begins a read right there.
  fault::g_hook.store([](fault::Point p) {
    if (p != fault::Point::kReplacementFlagged) return;
    auto v = reader->get_copy("before");
    EXPECT_TRUE(v) << "the old segment is still whole";
  });
  auto published = w->publish_replacement(*next);
  fault::g_hook.store(nullptr);
  ASSERT_TRUE(published);
  ASSERT_TRUE(next->put("after", "2"));
  auto v = t.get_copy("after");
  EXPECT_TRUE(v) << "the reader still reads the replaced segment after the swap: "
                 << v.error().message;
  reader = nullptr;
}

// Reader threads read while the writer resizes the table three times,
// applying records between copy steps: every value they read is whole and
// a key's version never goes back (also across the swaps); each reader
// follows the table to its last segment.
TEST_F(ResizeTest, ReaderThreadsFollowResizesWithoutATornOrOlderRead) {
  constexpr int kKeys = 2000;
  auto w = open_writer(options("t", 4096, 1 << 20));
  auto value = [](int k, uint32_t version) {
    std::string v(8 + (k + version) % 40, char('a' + version % 26));
    std::memcpy(v.data(), &version, 4);
    std::memcpy(v.data() + 4, &k, 4);
    return v;
  };
  for (int k = 0; k < kKeys; ++k) ASSERT_TRUE(w->put("k" + std::to_string(k), value(k, 1)));
  std::atomic<bool> done{false};
  std::atomic<uint64_t> bad{0}, reads{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&, r] {
      auto t = Table::open("t", {shm_.prefix()});
      if (!t) {
        ++bad;
        return;
      }
      std::vector<uint32_t> last(kKeys, 0);
      for (uint64_t i = r; !done; i += 7) {
        const int k = static_cast<int>(i % kKeys);
        auto g = t->read();
        if (!g) {
          ++bad;
          continue;
        }
        auto v = g->get("k" + std::to_string(k));
        ++reads;
        uint32_t version = 0;
        int key = -1;
        if (!v || v->size() < 8) {
          ++bad;
          continue;
        }
        std::memcpy(&version, v->data(), 4);
        std::memcpy(&key, v->data() + 4, 4);
        if (key != k || *v != value(k, version) || version < last[k]) ++bad;
        last[k] = version;
      }
    });
  }
  uint32_t version = 1;
  std::unique_ptr<TableWriter> cur = std::move(w);
  for (uint64_t size : {8192u, 16384u, 4096u}) {
    auto next = resize(*cur, TableSize{size, 2 << 20});
    ASSERT_TRUE(next);
    bool copied = false;
    while (!copied) {
      ++version;
      for (int k = 0; k < kKeys; k += 13) {
        ASSERT_TRUE(next->put("k" + std::to_string(k), value(k, version)));
      }
      auto step = next->copy_step(16);
      ASSERT_TRUE(step) << step.error().message;
      copied = *step;
      next->reclaim_now();
    }
    ASSERT_TRUE(cur->publish_replacement(*next));
    cur = std::move(next);
    const uint64_t seen = reads;
    ASSERT_TRUE(test::wait_until([&] { return reads > seen + 1000; }, std::chrono::seconds(30)));
  }
  done = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(reads.load(), 3000u);
}

// A growth that /dev/shm has no room for is an error before anything is
// copied (kNoMemory, never a SIGBUS), the table stays as it was, and the
// unfinished segment is gone.
TEST(ResizeShmFullTest, NoRoomInDevShmIsAnErrorAndTheTableStays) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::unshare(CLONE_NEWNS) != 0) ::_exit(77);
    if (::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) ::_exit(77);
    if (::mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=4m") != 0) ::_exit(77);
    WriterOptions o;
    o.table = "full";
    o.shm_prefix = "kvsfull.";
    o.reader_slots = 16;
    o.capacity = 4096;
    o.arena_bytes = 4 << 20;
    auto w = TableWriter::open(o);
    if (!w) ::_exit(2);
    const std::string value(1000, 'v');
    for (int i = 0; i < 2200; ++i) {
      if (!(*w)->put("k" + std::to_string(i), value)) ::_exit(3);
    }
    auto next = (*w)->begin_resize(TableSize{8192, 8 << 20});
    if (next || next.error().code != Errc::kNoMemory ||
        next.error().message.find("/dev/shm has no room") == std::string::npos) {
      std::fprintf(stderr, "begin_resize: %s\n", next ? "succeeded" : next.error().message.c_str());
      ::_exit(4);
    }
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
      if (e.path().filename().string().find(".new.") != std::string::npos) ::_exit(5);
    }
    // (A reader could not register in the full /dev/shm: the header says.)
    auto t = Table::open("full", {"kvsfull."});
    kvs_table_stats st{};
    if (!t || kvs_stat(t->native(), &st) != KVS_OK || st.entries != 2200) ::_exit(6);
    if (st.capacity != 4096) ::_exit(7);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
    GTEST_SKIP() << "needs CAP_SYS_ADMIN to mount a small tmpfs over /dev/shm in a mount "
                    "namespace";
  }
  ASSERT_TRUE(WIFEXITED(status)) << "died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace kvs
