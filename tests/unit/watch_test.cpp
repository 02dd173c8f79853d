// Change notification: the change log the writer keeps in the segment
// (kvs_watch_*), the futex word and kvsd's wait socket (WaitHub), with the
// writer in this process and the readers in this process or forked ones.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "kvs/kvs.hpp"
#include "protocol/wait_socket.hpp"
#include "src/registry.hpp"
#include "support/test_support.hpp"
#include "support/writer_support.hpp"
#include "wait_hub.hpp"
#include "writer/fault_points.hpp"

namespace kvs {
namespace {

using namespace std::chrono_literals;
using namespace std::string_literals;
using format::Origin;
using test::open_writer;

// A change as a watcher saw it.
struct Seen {
  Change::Kind kind;
  std::string key;
  uint32_t partition;
  int64_t offset;
};

class WatchTest : public ::testing::Test {
 protected:
  WriterOptions options(uint64_t log_entries) {
    WriterOptions o;
    o.table = "w";
    o.shm_prefix = shm_.prefix();
    o.capacity = 1 << 16;
    o.arena_bytes = 32 << 20;
    o.reader_slots = 16;
    o.max_key_bytes = 1024;
    o.max_value_bytes = 4096;
    o.change_log_entries = log_entries;
    return o;
  }
  Table open_table() {
    auto t = Table::open("w", OpenOptions{shm_.prefix()});
    EXPECT_TRUE(t) << (t ? "" : t.error().message);
    return std::move(*t);
  }
  // Applies a put (or, with value nullopt, an erase) at the partition's
  // next offset.
  void apply(TableWriter& w, const std::string& key, std::optional<std::string> value,
             uint32_t partition = 0) {
    int64_t& off = next_offset_[partition];
    std::optional<std::string_view> v;
    if (value) v = *value;
    auto r = w.apply(key, v, Origin{1000 + off, partition}, off);
    ASSERT_TRUE(r) << r.error().message;
    w.record_applied(partition, off, 1000 + off, key);
    ++off;
  }
  // A resize of `from` into a segment of `size`, its entries copied (not
  // published yet); records are applied to it meanwhile by the caller.
  static std::unique_ptr<TableWriter> resized(TableWriter& from, TableSize size) {
    auto grown = from.begin_resize(size);
    EXPECT_TRUE(grown) << grown.error().message;
    if (!grown) return nullptr;
    auto copied = (*grown)->copy_rest();
    EXPECT_TRUE(copied) << copied.error().message;
    return std::move(*grown);
  }
  static std::vector<Seen> drain(Watch& w, std::chrono::milliseconds timeout = 0ms) {
    std::vector<Seen> out;
    for (;;) {
      auto c = w.next(timeout);
      EXPECT_TRUE(c) << (c ? "" : c.error().message);
      if (!c || !*c) return out;
      out.push_back(Seen{(*c)->kind, std::string((*c)->key), (*c)->partition, (*c)->offset});
    }
  }

  test::ShmScope shm_;
  std::map<uint32_t, int64_t> next_offset_;
};

TEST_F(WatchTest, AWatchSeesTheChangesOfItsFilterInOrderWithTheirKeys) {
  auto w = open_writer(options(4096));
  ASSERT_TRUE(w);
  auto t = open_table();
  auto all = t.watch();
  auto prefixed = t.watch(Watch::Filter::kPrefix, "a/");
  const std::string long_key = "a/" + std::string(300, 'x');  // six entries of the log
  auto one = t.watch(Watch::Filter::kKey, long_key);
  ASSERT_TRUE(all && prefixed && one);
  apply(*w, "a/1", "v1");
  apply(*w, "b/1", "v2", 1);
  apply(*w, long_key, "v3");
  apply(*w, "a/1", std::nullopt);
  apply(*w, "b/2", std::nullopt, 1);  // absent: changes nothing, logs nothing
  apply(*w, "a/22222222222222222", "v4", 1);
  // Nothing is visible before the batch is published.
  EXPECT_TRUE(drain(*all).empty());
  w->publish_batch();
  const auto everything = drain(*all);
  ASSERT_EQ(everything.size(), 5u);
  EXPECT_EQ(everything[0].key, "a/1");
  EXPECT_EQ(everything[0].kind, Change::Kind::kPut);
  EXPECT_EQ(everything[1].key, "b/1");
  EXPECT_EQ(everything[1].partition, 1u);
  EXPECT_EQ(everything[1].offset, 0);
  EXPECT_EQ(everything[2].key, long_key);
  EXPECT_EQ(everything[3].kind, Change::Kind::kErase);
  EXPECT_EQ(everything[3].offset, 2);  // partition 0: a/1, the long key, the erase
  EXPECT_EQ(everything[4].key, "a/22222222222222222");
  const auto a = drain(*prefixed);
  ASSERT_EQ(a.size(), 4u);
  for (const auto& s : a) EXPECT_EQ(s.key.substr(0, 2), "a/");
  const auto just = drain(*one);
  ASSERT_EQ(just.size(), 1u);
  EXPECT_EQ(just[0].key, long_key);
}

TEST_F(WatchTest, APrefixWatchPassesExactlyTheKeysThatStartWithIt) {
  // Prefixes of every length around the 16 key bytes the first entry holds
  // (which decide most changes before the whole key is read).
  auto w = open_writer(options(4096));
  ASSERT_TRUE(w);
  auto t = open_table();
  const std::string alphabet = "abcdefghijklmnopqrstu";
  std::vector<std::string> prefixes;
  for (size_t n = 0; n <= alphabet.size(); ++n) prefixes.push_back(alphabet.substr(0, n));
  prefixes.insert(prefixes.end(), {"abd", "abcdefghijklmnoX", "abcdefghijklmnopX", "\0a"s});
  std::vector<Watch> watches;
  for (const auto& p : prefixes) {
    auto watch = t.watch(Watch::Filter::kPrefix, p);
    ASSERT_TRUE(watch) << watch.error().message;
    watches.push_back(std::move(*watch));
  }
  std::vector<std::string> keys;
  for (size_t n = 1; n <= alphabet.size(); ++n) {
    keys.push_back(alphabet.substr(0, n));
    keys.push_back(alphabet.substr(0, n - 1) + "X");
  }
  keys.insert(keys.end(),
              {"abd", "b", "\0a"s, "\0ab"s, "abcdefghijklmnop" + std::string(100, 'z')});
  for (const auto& k : keys) apply(*w, k, "v");
  w->publish_batch();
  for (size_t i = 0; i < prefixes.size(); ++i) {
    std::vector<std::string> expected, seen;
    for (const auto& k : keys)
      if (k.starts_with(prefixes[i])) expected.push_back(k);
    for (const auto& c : drain(watches[i])) seen.push_back(c.key);
    EXPECT_EQ(seen, expected) << "prefix \"" << prefixes[i] << "\"";
  }
}

TEST_F(WatchTest, AWatcherThatFallsBehindTheRingIsToldSoAndGoesOn) {
  auto w = open_writer(options(1024));
  ASSERT_TRUE(w);
  auto t = open_table();
  auto watch = t.watch();
  // A narrow watch, whose skipping of the changes it does not want must
  // not pass over the loss either.
  auto narrow = t.watch(Watch::Filter::kPrefix, "a");
  ASSERT_TRUE(watch && narrow);
  apply(*w, "first", "1");
  w->publish_batch();
  auto c = watch->next(0ms);
  ASSERT_TRUE(c && *c);
  EXPECT_EQ((*c)->key, "first");
  for (int i = 0; i < 3000; ++i) apply(*w, "k" + std::to_string(i), "v");
  w->publish_batch();
  for (Watch* each : {&*watch, &*narrow}) {
    c = each->next(0ms);
    ASSERT_TRUE(c && *c);
    EXPECT_EQ((*c)->kind, Change::Kind::kLost);
    EXPECT_TRUE(drain(*each).empty()) << "after the loss, the watch goes on from the newest change";
  }
  apply(*w, "after", "1");
  w->publish_batch();
  for (Watch* each : {&*watch, &*narrow}) {
    const auto rest = drain(*each);
    ASSERT_EQ(rest.size(), 1u);
    EXPECT_EQ(rest[0].key, "after");
  }
}

TEST_F(WatchTest, ANarrowWatchOvertakenWhileItSkipsIsToldSo) {
  // The published changes fit in the ring, but the writer has already
  // overwritten the oldest of them with changes it has not published: the
  // watch finds that out while it skips changes it does not want.
  auto w = open_writer(options(1024));
  ASSERT_TRUE(w);
  auto t = open_table();
  auto narrow = t.watch(Watch::Filter::kPrefix, "a");
  ASSERT_TRUE(narrow);
  for (int i = 0; i < 1000; ++i) apply(*w, "k" + std::to_string(i), "v");
  w->publish_batch();
  for (int i = 0; i < 100; ++i) apply(*w, "m" + std::to_string(i), "v");
  auto c = narrow->next(0ms);
  ASSERT_TRUE(c && *c);
  EXPECT_EQ((*c)->kind, Change::Kind::kLost);
  apply(*w, "after", "1");
  w->publish_batch();
  const auto rest = drain(*narrow);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].key, "after");
}

TEST_F(WatchTest, ForEachCallsBackUntilToldToStop) {
  auto w = open_writer(options(1024));
  ASSERT_TRUE(w);
  auto t = open_table();
  auto watch = t.watch(Watch::Filter::kKey, "flag");
  ASSERT_TRUE(watch);
  apply(*w, "flag", "on");
  apply(*w, "other", "x");
  apply(*w, "flag", std::nullopt);
  apply(*w, "flag", "off");
  w->publish_batch();
  std::vector<std::pair<Change::Kind, Token>> got;
  auto r = watch->for_each([&](const Change& c) {
    got.emplace_back(c.kind, c.token());
    return got.size() < 2;
  });
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].first, Change::Kind::kPut);
  EXPECT_EQ(got[0].second, (Token{0, 0}));
  EXPECT_EQ(got[1].first, Change::Kind::kErase);
  EXPECT_EQ(got[1].second, (Token{0, 2}));
  // The stop predicate ends a loop that has nothing to report.
  int looks = 0;
  r = watch->for_each([](const Change&) { return true; }, [&] { return ++looks > 2; }, 10ms);
  ASSERT_TRUE(r);
  EXPECT_EQ(looks, 3) << "the change after the stop was reported in the first look";
}

TEST_F(WatchTest, NextTimesOutWhenNothingChanges) {
  auto w = open_writer(options(1024));
  ASSERT_TRUE(w);
  auto t = open_table();
  auto watch = t.watch();
  ASSERT_TRUE(watch);
  const auto start = std::chrono::steady_clock::now();
  auto c = watch->next(50ms);
  ASSERT_TRUE(c);
  EXPECT_FALSE(*c);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
}

TEST_F(WatchTest, ATableWithoutAChangeLogRefusesWatches) {
  auto w = open_writer(options(0));
  ASSERT_TRUE(w);
  auto t = open_table();
  auto watch = t.watch();
  ASSERT_FALSE(watch);
  EXPECT_EQ(watch.error().code, Errc::kUnsupported);
  EXPECT_NE(watch.error().message.find("change_log_entries"), std::string::npos);
}

// A writer thread applies 100,000 records (keys of one and of two entries,
// both partitions) while a watcher thread follows one prefix: it sees each
// of that prefix's changes once, in the order applied.
TEST_F(WatchTest, AWatcherThreadSeesEveryChangeOfAPrefixWhileTheWriterRuns) {
  constexpr int kRecords = 100000;
  auto w = open_writer(options(1 << 19));  // holds every change: none may be lost
  ASSERT_TRUE(w);
  auto t = open_table();
  auto watch = t.watch(Watch::Filter::kPrefix, "p/");
  ASSERT_TRUE(watch);
  std::vector<Seen> expected;
  for (int i = 0; i < kRecords; ++i) {
    const uint32_t partition = i % 2;
    const int64_t offset = i / 2;
    const std::string key = (i % 3 == 0 ? "p/" : "q/") + std::to_string(i % 7000) +
                            (i % 5 == 0 ? "-with-a-longer-tail" : "");
    if (key.starts_with("p/")) expected.push_back(Seen{Change::Kind::kPut, key, partition, offset});
  }
  std::thread writer([&] {
    for (int i = 0; i < kRecords; ++i) {
      const std::string key = (i % 3 == 0 ? "p/" : "q/") + std::to_string(i % 7000) +
                              (i % 5 == 0 ? "-with-a-longer-tail" : "");
      apply(*w, key, "v" + std::to_string(i), i % 2);
      if (i % 64 == 63) w->publish_batch();
    }
    w->publish_batch();
  });
  std::vector<Seen> seen;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (seen.size() < expected.size() && std::chrono::steady_clock::now() < deadline) {
    auto c = watch->next(100ms);
    ASSERT_TRUE(c) << c.error().message;
    if (!*c) continue;
    ASSERT_NE((*c)->kind, Change::Kind::kLost) << "after " << seen.size() << " changes";
    seen.push_back(Seen{(*c)->kind, std::string((*c)->key), (*c)->partition, (*c)->offset});
  }
  writer.join();
  ASSERT_EQ(seen.size(), expected.size());
  for (size_t i = 0; i < seen.size(); ++i) {
    ASSERT_EQ(seen[i].key, expected[i].key) << "change " << i;
    ASSERT_EQ(seen[i].partition, expected[i].partition) << "change " << i;
    ASSERT_EQ(seen[i].offset, expected[i].offset) << "change " << i;
  }
}

TEST_F(WatchTest, AWatchKeepsItsPlaceThroughAGrowth) {
  auto w = open_writer(options(4096));
  ASSERT_TRUE(w);
  auto t = open_table();
  auto watch = t.watch();
  ASSERT_TRUE(watch);
  apply(*w, "before", "1");
  w->publish_batch();
  auto grown = resized(*w, TableSize{1 << 17, 64 << 20});
  ASSERT_TRUE(grown);
  apply(*grown, "during", "2");
  grown->publish_batch();
  ASSERT_TRUE(w->publish_replacement(*grown));
  apply(*grown, "after", "3");
  grown->publish_batch();
  const auto seen = drain(*watch, 200ms);
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].key, "before");
  EXPECT_EQ(seen[1].key, "during");
  EXPECT_EQ(seen[2].key, "after");
}

// The watcher reads nothing while the table grows twice: when it looks, the
// segment it has was replaced by one that was replaced in turn.
TEST_F(WatchTest, AWatchKeepsItsPlaceThroughTwoGrowthsInARow) {
  auto w = open_writer(options(4096));
  ASSERT_TRUE(w);
  auto t = open_table();
  auto watch = t.watch();
  ASSERT_TRUE(watch);
  std::vector<std::unique_ptr<TableWriter>> segments;
  TableWriter* cur = w.get();
  for (int growth = 0; growth < 2; ++growth) {
    apply(*cur, "before-" + std::to_string(growth), "1");
    cur->publish_batch();
    auto grown = resized(*cur, TableSize{uint64_t{1} << (17 + growth), 64 << 20});
    ASSERT_TRUE(grown);
    apply(*grown, "during-" + std::to_string(growth), "2");
    ASSERT_TRUE(cur->publish_replacement(*grown));
    grown->publish_batch();
    segments.push_back(std::move(grown));
    cur = segments.back().get();
  }
  const auto seen = drain(*watch, 200ms);
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[0].key, "before-0");
  EXPECT_EQ(seen[1].key, "during-0");
  EXPECT_EQ(seen[2].key, "before-1");
  EXPECT_EQ(seen[3].key, "during-1");
  for (const auto& s : seen) EXPECT_NE(s.kind, Change::Kind::kLost);
}

// What a watch promises (kvs.h): every change of its filter, in order, or
// KVS_CHANGE_LOST where changes were lost; never a silent gap. "" if `seen`
// keeps that promise for the changes of `expected` (keys, each applied
// once, in order), else what went unreported. A change may be seen twice
// (a writer that died has its records applied again).
std::string unreported(const std::vector<std::string>& expected, const std::vector<Seen>& seen) {
  auto name = [](const std::string& k) { return k.size() > 24 ? k.substr(0, 24) + "..." : k; };
  size_t next = 0;    // the first expected change not seen yet
  bool told = false;  // a LOST since the last change seen
  for (const Seen& s : seen) {
    if (s.kind == Change::Kind::kLost) {
      told = true;
      continue;
    }
    const auto it =
        std::find(expected.begin() + static_cast<ptrdiff_t>(next), expected.end(), s.key);
    if (it == expected.end()) continue;  // seen again, or not one of these
    const auto at = static_cast<size_t>(it - expected.begin());
    if (at > next && !told) {
      return std::to_string(at - next) + " change(s) from " + name(expected[next]) +
             " missing before " + name(s.key) + " with no LOST";
    }
    next = at + 1;
    told = false;
  }
  if (next < expected.size() && !told) {
    return std::to_string(expected.size() - next) + " change(s) from " + name(expected[next]) +
           " missing at the end with no LOST";
  }
  return "";
}

std::vector<std::string> keys(const std::string& prefix, int n, size_t pad = 0) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    std::string k = prefix + std::to_string(i);
    out.push_back(k + std::string(pad > k.size() ? pad - k.size() : 0, '.'));
  }
  return out;
}

// Writers that die before they publish a batch: the next one publishes the
// whole changes the last one logged, and never older ones that an earlier
// writer logged past the head. A batch larger than the ring is told as
// LOST to a watch that did not keep up, never skipped silently.
TEST_F(WatchTest, WritersKilledBeforeTheyPublishLeaveOnlyTheirOwnChanges) {
  auto a = open_writer(options(32));
  ASSERT_TRUE(a);
  auto t = open_table();
  auto watch = t.watch();
  ASSERT_TRUE(watch);
  const auto from_a = keys("a", 40);
  for (const auto& k : from_a) apply(*a, k, "1");
  a.reset();  // killed before its batch was published
  auto b = open_writer(options(32));
  ASSERT_TRUE(b);
  b->publish_batch();
  EXPECT_EQ(unreported(from_a, drain(*watch, 200ms)), "");
  for (int i = 0; i < 4; ++i) apply(*b, "b" + std::to_string(i), "2");
  b->publish_batch();
  for (int i = 0; i < 4; ++i) apply(*b, "b-unpublished" + std::to_string(i), "2");
  b.reset();
  auto c = open_writer(options(32));
  ASSERT_TRUE(c);
  const auto seen = drain(*watch, 200ms);
  ASSERT_EQ(seen.size(), 8u) << "a writer's stale changes were published as new";
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(seen[i].key, "b" + std::to_string(i));
    EXPECT_EQ(seen[4 + i].key, "b-unpublished" + std::to_string(i))
        << "the last writer's whole changes were not kept";
  }
}

// A batch that logs more than the ring holds (long keys: 18 entries each),
// its records' offsets published one by one, and the writer killed before
// the batch ends. A watch that keeps reading sees every change; one that
// reads only afterwards is told LOST. Neither misses a change silently.
TEST_F(WatchTest, AWriterKilledInsideABatchLargerThanTheRingLosesNoChangeUnannounced) {
  auto a = open_writer(options(1024));
  ASSERT_TRUE(a);
  auto t = open_table();
  auto steady = t.watch();
  auto idle = t.watch();
  ASSERT_TRUE(steady && idle);
  const auto batch = keys("long-", 100, 1000);
  std::vector<Seen> steady_seen;
  for (size_t i = 0; i < batch.size(); ++i) {
    apply(*a, batch[i], "v");
    if (i % 10 == 9) {
      for (auto& c : drain(*steady)) steady_seen.push_back(c);
    }
  }
  a.reset();  // killed: the batch was never ended
  auto b = open_writer(options(1024));
  ASSERT_TRUE(b);
  b->publish_batch();
  for (auto& c : drain(*steady, 200ms)) steady_seen.push_back(c);
  EXPECT_EQ(unreported(batch, steady_seen), "");
  size_t lost = 0;
  for (const auto& c : steady_seen) lost += c.kind == Change::Kind::kLost;
  EXPECT_EQ(lost, 0u) << "a watch that kept up lost changes";
  EXPECT_EQ(unreported(batch, drain(*idle, 200ms)), "");
}

// A writer killed after it cleared an erased key's slot: the next one
// applies the tombstone again and finds the key absent, so the erase must
// be in the log already.
TEST_F(WatchTest, AnEraseCutAfterItsSlotWasClearedIsStillReported) {
  auto a = open_writer(options(4096));
  ASSERT_TRUE(a);
  auto t = open_table();
  auto watch = t.watch();
  ASSERT_TRUE(watch);
  apply(*a, "k", "v");
  a->publish_batch();
  a.reset();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto w = TableWriter::open(options(4096));
    if (!w) ::_exit(2);
    fault::g_hook.store([](fault::Point p) {
      if (p == fault::Point::kEraseCleared) ::_exit(0);
    });
    (void)(*w)->apply("k", std::nullopt, Origin{1001, 0}, 1);
    ::_exit(3);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  auto b = open_writer(options(4096));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->next_offset(0), 1) << "the erase's offset was not published";
  apply(*b, "k", std::nullopt);  // applied again: the key is absent now
  b->publish_batch();
  const auto seen = drain(*watch, 200ms);
  ASSERT_GE(seen.size(), 2u);
  EXPECT_EQ(seen[0].kind, Change::Kind::kPut);
  EXPECT_EQ(seen[1].kind, Change::Kind::kErase) << "the erase was never reported";
  EXPECT_EQ(seen[1].key, "k");
}

// A ring that a writer which died mid-batch overwrote past its published
// head (as kvsd before it published mid-batch could leave it): the next
// writer cannot chain those changes, and says so to the watchers. Also
// when the writer died writing the first entry that laps the head (torn,
// its word 0 is 0, so no entry holds a position past head + ring).
TEST_F(WatchTest, ARingLappedByAWriterThatDiedIsReportedLost) {
  for (const uint64_t last : {uint64_t{40}, uint64_t{36}}) {
    SCOPED_TRACE("last position " + std::to_string(last));
    shm::remove_segment(shm_.prefix() + "w");
    next_offset_.clear();
    auto a = open_writer(options(32));
    ASSERT_TRUE(a);
    auto t = open_table();
    auto watch = t.watch();
    ASSERT_TRUE(watch);
    for (int i = 0; i < 4; ++i) apply(*a, "k" + std::to_string(i), "v");
    a->publish_batch();
    ASSERT_EQ(drain(*watch).size(), 4u);
    {
      // Positions 4..last logged, one entry each, never published; at 36
      // (the slot of 4) the writer died inside the entry.
      auto m = shm::open_segment(a->segment_name(), shm::Access::kReadWrite);
      ASSERT_TRUE(m);
      auto* h = reinterpret_cast<format::TableHeader*>((*m)->data());
      auto* log = reinterpret_cast<format::ChangeEntry*>((*m)->data() + h->log_offset);
      for (uint64_t p = 4; p <= last; ++p) {
        auto& e = log[p % h->log_entries];
        const std::string key = "x" + std::to_string(p);
        uint64_t words[2] = {0, 0};
        std::memcpy(words, key.data(), key.size());
        e.w[1].store(format::hash_key(key.data(), key.size()));
        e.w[2].store(p);
        e.w[3].store(1000);
        e.w[4].store(uint64_t{static_cast<uint32_t>(format::ChangeKind::kPut)} << 32);
        e.w[5].store(key.size());
        e.w[6].store(words[0]);
        e.w[7].store(words[1]);
        e.w[0].store(p == 36 && last == 36 ? 0 : p + 1);
      }
    }
    a.reset();
    auto b = open_writer(options(32));
    ASSERT_TRUE(b);
    b->publish_batch();
    std::vector<std::string> lapped;
    for (uint64_t p = 4; p < std::min<uint64_t>(last + 1, 36); ++p)
      lapped.push_back("x" + std::to_string(p));
    const auto seen = drain(*watch, 200ms);
    EXPECT_EQ(unreported(lapped, seen), "");
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen[0].kind, Change::Kind::kLost);
  }
}

// The segment deleted from under the watch and made anew by the next
// writer: the watch follows the name, telling LOST (another log).
TEST_F(WatchTest, ASegmentDeletedFromUnderAWatchIsFollowed) {
  auto a = open_writer(options(4096));
  ASSERT_TRUE(a);
  auto t = open_table();
  auto watch = t.watch();
  ASSERT_TRUE(watch);
  shm::remove_segment(a->segment_name());
  a.reset();
  auto b = open_writer(options(4096));
  ASSERT_TRUE(b);
  auto c = watch->next(2000ms);
  ASSERT_TRUE(c && *c) << "the watch did not notice";
  EXPECT_EQ((*c)->kind, Change::Kind::kLost);
  apply(*b, "fresh", "1");
  b->publish_batch();
  const auto seen = drain(*watch, 200ms);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].key, "fresh");
}

TEST_F(WatchTest, ARebuildIsReportedAsLost) {
  auto w = open_writer(options(4096));
  ASSERT_TRUE(w);
  auto t = open_table();
  auto watch = t.watch();
  ASSERT_TRUE(watch);
  auto fresh = w->begin_replacement();
  ASSERT_TRUE(fresh);
  apply(**fresh, "rebuilt", "1");
  ASSERT_TRUE(w->publish_replacement(**fresh));
  (*fresh)->publish_batch();
  auto c = watch->next(1000ms);
  ASSERT_TRUE(c && *c);
  EXPECT_EQ((*c)->kind, Change::Kind::kLost);
  apply(**fresh, "next", "2");
  (*fresh)->publish_batch();
  const auto rest = drain(*watch, 200ms);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].key, "next");
}

// kvsd's side: the wait socket counts the processes that wait, and the
// writer wakes them (and only then makes the syscall).
class WakeTest : public WatchTest {
 protected:
  void SetUp() override {
    writer_ = open_writer(options(4096));
    ASSERT_TRUE(writer_);
    auto counted = hub_.listen("w", registry::dir_path(writer_->segment_name()), 0660,
                               static_cast<gid_t>(-1), 4);
    ASSERT_TRUE(counted) << counted.error().message;
    waiting_ = *counted;
    writer_->wake_for(waiting_);
    ASSERT_TRUE(writer_->set_partition_count(2));
    ASSERT_TRUE(hub_.start());
  }
  void TearDown() override { hub_.stop(); }
  uint64_t wakes() const { return writer_->header().wakes.load(); }

  daemon::WaitHub hub_;
  const std::atomic<uint32_t>* waiting_ = nullptr;
  std::unique_ptr<TableWriter> writer_;
};

TEST_F(WakeTest, NobodyWaitingCostsTheWriterNoWake) {
  for (int i = 0; i < 100; ++i) {
    apply(*writer_, "k" + std::to_string(i), "v");
    EXPECT_FALSE(writer_->publish_batch());
  }
  EXPECT_EQ(wakes(), 0u);
  EXPECT_EQ(writer_->header().changes.load(), 100u) << "the word moves per batch regardless";
}

TEST_F(WakeTest, AWaitingThreadIsWokenByTheBatchThatAppliesItsToken) {
  auto t = open_table();
  Result<void> result;
  // Waiters look again every KVS_WAIT_RECHECK_MS (60 s in these tests, set
  // by CMake): only kvsd's wake can end this wait in time.
  std::thread waiter([&] { result = t.wait(Token{0, 0}, 20s); });
  ASSERT_TRUE(test::wait_until([&] { return waiting_->load() == 1; }))
      << "the waiting process never announced itself on the wait socket";
  apply(*writer_, "token", "v");
  EXPECT_TRUE(writer_->publish_batch()) << "a process waits: the batch must wake it";
  waiter.join();
  EXPECT_TRUE(result) << result.error().message;
  EXPECT_GE(wakes(), 1u);
  ASSERT_TRUE(test::wait_until([&] { return waiting_->load() == 0; }))
      << "the process still counts as waiting after its wait returned";
  apply(*writer_, "later", "v");
  EXPECT_FALSE(writer_->publish_batch());
}

TEST_F(WakeTest, AWaitThatTimesOutStopsCounting) {
  auto t = open_table();
  const auto start = std::chrono::steady_clock::now();
  auto r = t.wait(Token{1, 0}, 50ms);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kTimeout);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
  EXPECT_TRUE(test::wait_until([&] { return waiting_->load() == 0; }));
  auto ready = t.wait_ready(20ms);
  EXPECT_EQ(ready.error().code, Errc::kTimeout);
  EXPECT_TRUE(test::wait_until([&] { return waiting_->load() == 0; }));
}

TEST_F(WakeTest, WaitReadyIsWokenWhenTheTableTurnsReady) {
  auto t = open_table();
  Result<void> result;
  std::thread waiter([&] { result = t.wait_ready(20s); });
  ASSERT_TRUE(test::wait_until([&] { return waiting_->load() == 1; }));
  const uint64_t before = wakes();
  writer_->set_state(format::TableState::kReady);  // publishes at once
  waiter.join();
  EXPECT_TRUE(result) << result.error().message;
  EXPECT_EQ(wakes(), before + 1);
}

TEST_F(WakeTest, AWatcherKilledWhileItSleepsStopsCounting) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto t = Table::open("w", OpenOptions{shm_.prefix()});
    if (!t) ::_exit(2);
    auto w = t->watch();
    if (!w) ::_exit(3);
    (void)w->next(-1ms);  // sleeps until killed
    ::_exit(0);
  }
  ASSERT_TRUE(test::wait_until([&] { return waiting_->load() == 1; }));
  apply(*writer_, "a", "v");
  EXPECT_TRUE(writer_->publish_batch());
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(test::wait_until([&] { return waiting_->load() == 0; }))
      << "a killed watcher left kvsd waking for nobody";
  apply(*writer_, "b", "v");
  EXPECT_FALSE(writer_->publish_batch());
}

// A connection to the table's wait socket, as a hostile process makes it.
class RawConnection {
 public:
  explicit RawConnection(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_STREAM, 0)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawConnection() { ::close(fd_); }
  bool connected() const { return connected_; }
  bool send(const std::string& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // The next byte kvsd sent; 0 once it closed the connection.
  char receive() {
    char c = 0;
    return ::recv(fd_, &c, 1, 0) == 1 ? c : 0;
  }

 private:
  int fd_;
  bool connected_ = false;
};

TEST_F(WakeTest, AConnectionCountsOnceAndWhatIsNotTheProtocolClosesIt) {
  const std::string path = wait_socket::path(registry::dir_path(writer_->segment_name()));
  RawConnection twice(path);
  ASSERT_TRUE(twice.connected());
  ASSERT_TRUE(twice.send("+"));
  EXPECT_EQ(twice.receive(), wait_socket::kCounted);
  EXPECT_EQ(waiting_->load(), 1u);
  ASSERT_TRUE(twice.send("+"));  // a repeated announcement
  EXPECT_EQ(twice.receive(), 0) << "kvsd answered an announcement that repeats itself";
  EXPECT_TRUE(test::wait_until([&] { return waiting_->load() == 0; }));
  RawConnection garbage(path);
  ASSERT_TRUE(garbage.send("+"));
  EXPECT_EQ(garbage.receive(), wait_socket::kCounted);
  ASSERT_TRUE(garbage.send("x"));
  EXPECT_EQ(garbage.receive(), 0) << "a byte outside the protocol must close the connection";
  EXPECT_TRUE(test::wait_until([&] { return waiting_->load() == 0; }));
}

// The hub serves 4 connections (SetUp): idle ones make room for a new one;
// waiting ones do not.
TEST_F(WakeTest, AtTheConnectionLimitAnIdleConnectionMakesRoom) {
  const std::string path = wait_socket::path(registry::dir_path(writer_->segment_name()));
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 4; ++i) {
    idle.push_back(std::make_unique<RawConnection>(path));
    ASSERT_TRUE(idle.back()->send("+"));
    ASSERT_EQ(idle.back()->receive(), wait_socket::kCounted);
    ASSERT_TRUE(idle.back()->send("-"));
  }
  ASSERT_TRUE(test::wait_until([&] { return waiting_->load() == 0; }));
  std::vector<std::unique_ptr<RawConnection>> waiting;
  for (int i = 0; i < 4; ++i) {
    waiting.push_back(std::make_unique<RawConnection>(path));
    ASSERT_TRUE(waiting.back()->send("+"));
    ASSERT_EQ(waiting.back()->receive(), wait_socket::kCounted) << "connection " << i;
  }
  EXPECT_EQ(waiting_->load(), 4u);
  for (auto& c : idle) EXPECT_EQ(c->receive(), 0) << "an idle connection was kept at the limit";
  RawConnection one_more(path);
  (void)one_more.send("+");
  EXPECT_EQ(one_more.receive(), 0) << "a fifth waiting connection was served";
  EXPECT_EQ(waiting_->load(), 4u);
}

// One user holds at most its share of a table's connections: a process
// that keeps many waiting connections cannot push every other user's
// waiters to polling. At its share, a user's idle connection makes room
// for its new one.
TEST_F(WatchTest, OneUserHoldsAtMostItsShareOfTheWaitConnections) {
  auto w = open_writer(options(1024));
  ASSERT_TRUE(w);
  daemon::WaitHub hub;
  auto counted = hub.listen("w", registry::dir_path(w->segment_name()), 0660,
                            static_cast<gid_t>(-1), /*max_connections=*/8, /*max_per_uid=*/2);
  ASSERT_TRUE(counted) << counted.error().message;
  ASSERT_TRUE(hub.start());
  const std::string path = wait_socket::path(registry::dir_path(w->segment_name()));
  RawConnection idle(path);
  ASSERT_TRUE(idle.send("+"));
  ASSERT_EQ(idle.receive(), wait_socket::kCounted);
  ASSERT_TRUE(idle.send("-"));
  ASSERT_TRUE(test::wait_until([&] { return (*counted)->load() == 0; }));
  RawConnection first(path);
  ASSERT_TRUE(first.send("+"));
  ASSERT_EQ(first.receive(), wait_socket::kCounted);
  RawConnection second(path);  // the idle one makes room
  ASSERT_TRUE(second.send("+"));
  EXPECT_EQ(second.receive(), wait_socket::kCounted);
  EXPECT_EQ(idle.receive(), 0) << "the user's idle connection was kept past its share";
  RawConnection third(path);
  (void)third.send("+");
  EXPECT_EQ(third.receive(), 0) << "a user got more than its share of a table with room";
  EXPECT_EQ((*counted)->load(), 2u);
  hub.stop();
}

// A reader of the table's group may create entries in the registry: one
// that put a directory under the socket's name does not keep kvsd from
// listening.
TEST_F(WatchTest, ADirectoryUnderTheWaitSocketsNameIsMovedAside) {
  auto w = open_writer(options(1024));
  ASSERT_TRUE(w);
  const std::string path = wait_socket::path(registry::dir_path(w->segment_name()));
  ASSERT_EQ(::mkdir(path.c_str(), 0755), 0);
  std::ofstream(path + "/inside") << "x";
  daemon::WaitHub hub;
  auto counted =
      hub.listen("w", registry::dir_path(w->segment_name()), 0660, static_cast<gid_t>(-1), 4);
  ASSERT_TRUE(counted) << counted.error().message;
  ASSERT_TRUE(hub.start());
  RawConnection c(path);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send("+"));
  EXPECT_EQ(c.receive(), wait_socket::kCounted);
  hub.stop();
}

}  // namespace
}  // namespace kvs
