// The table across real processes: a writer churning verified values while
// reader processes check every read; readers and writers killed with SIGKILL.
// KVS_STRESS_SCALE (default 1) divides the read counts for slow sanitizer builds.
#include <gtest/gtest.h>

#include <cstdlib>
#include <sstream>
#include <string>

#include "kvs/kvs.h"
#include "kvs/kvs.hpp"
#include "support/test_support.hpp"
#include "support/verified_value.hpp"
#include "writer/table_writer.hpp"

namespace kvs {
namespace {

using test::Child;
using test::helper;

uint64_t scaled(uint64_t n) {
  const char* s = std::getenv("KVS_STRESS_SCALE");
  const uint64_t div = s ? std::max(1ull, std::strtoull(s, nullptr, 10)) : 1;
  return n / div;
}

struct ReadReport {
  uint64_t reads = 0, bad = 0, absent = 0;
};
ReadReport parse_report(const std::string& line) {
  ReadReport r;
  std::sscanf(line.c_str(), "reads=%lu bad=%lu absent=%lu", &r.reads, &r.bad, &r.absent);
  return r;
}

class TableStressTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kKeys = 20000;
  std::vector<std::string> worker(const std::string& mode, uint64_t a, uint64_t b) {
    return {helper("table_worker"), mode, shm_.prefix(), "s", std::to_string(a), std::to_string(b)};
  }
  WriterOptions writer_options() {
    WriterOptions o;
    o.table = "s";
    o.shm_prefix = shm_.prefix();
    o.capacity = kKeys * 2;
    o.arena_bytes = kKeys * 512 + (1 << 20);
    o.reader_slots = 64;
    o.dead_reader_check = std::chrono::milliseconds(10);
    return o;
  }
  test::ShmScope shm_;
};

// Issue 2's bar: at least 10 million verified reads from two reader processes
// while a writer process churns puts, overwrites and erases.
TEST_F(TableStressTest, TwoReaderProcessesNeverSeeATornOrStaleValue) {
  Child writer(worker("write", kKeys, 0));
  ASSERT_EQ(writer.read_line(), "ready");
  const uint64_t per_reader = scaled(5'000'000);
  Child r1(worker("read", kKeys, per_reader));
  Child r2(worker("read", kKeys, per_reader));
  ASSERT_EQ(r1.read_line(), "started");
  ASSERT_EQ(r2.read_line(), "started");
  const ReadReport a = parse_report(r1.read_line());
  const ReadReport b = parse_report(r2.read_line());
  EXPECT_EQ(r1.wait(), 0);
  EXPECT_EQ(r2.wait(), 0);
  writer.kill(SIGKILL);
  EXPECT_EQ(writer.wait(), 128 + SIGKILL) << "the writer must still be churning at the end";
  EXPECT_EQ(a.bad + b.bad, 0u);
  EXPECT_GE(a.reads + b.reads, 2 * per_reader);
  EXPECT_GT(a.absent + b.absent, 0u) << "erases must be part of the churn";
}

TEST_F(TableStressTest, ReaderKilledInsideAGuardDoesNotBlockReuse) {
  auto w = TableWriter::open(writer_options());
  ASSERT_TRUE(w);
  for (uint64_t k = 0; k < 100; ++k)
    ASSERT_TRUE((*w)->put(test::make_key(k), test::make_value(k, 1)));
  Child holder({helper("table_worker"), "hold", shm_.prefix(), "s"});
  ASSERT_EQ(holder.read_line(), "holding");
  for (uint64_t k = 0; k < 100; ++k)
    ASSERT_TRUE((*w)->put(test::make_key(k), test::make_value(k, 2)));
  // A live holder blocks reuse, however often the writer tries.
  for (int i = 0; i < 5; ++i) (*w)->reclaim();
  EXPECT_GT((*w)->stats().retired_bytes, 0u);
  holder.kill(SIGKILL);
  EXPECT_EQ(holder.wait(), 128 + SIGKILL);
  EXPECT_TRUE(test::wait_until([&] { return (*w)->reclaim() == 0; }, std::chrono::seconds(5)));
  EXPECT_GE((*w)->stats().dead_readers_recovered, 1u);
}

TEST_F(TableStressTest, WriterKilledMidChurnLeavesAReadableTableToReattach) {
  Child writer(worker("write", kKeys, 0));
  ASSERT_EQ(writer.read_line(), "ready");
  const uint64_t per_reader = scaled(2'000'000);
  Child r1(worker("read", kKeys, per_reader));
  Child r2(worker("read", kKeys, per_reader));
  ASSERT_EQ(r1.read_line(), "started");
  ASSERT_EQ(r2.read_line(), "started");
  writer.kill(SIGKILL);
  EXPECT_EQ(writer.wait(), 128 + SIGKILL);

  // A new writer takes the segment over while the readers keep reading.
  auto w = TableWriter::open(writer_options());
  ASSERT_TRUE(w) << w.error().message;
  EXPECT_EQ((*w)->attach_kind(), AttachKind::kAttached);
  auto t = Table::open("s", {shm_.prefix()});
  ASSERT_TRUE(t);
  uint64_t present = 0;
  {
    auto g = t->read();
    ASSERT_TRUE(g);
    ASSERT_TRUE(g->for_each([&](std::string_view k, std::string_view v) {
      uint64_t ver;
      EXPECT_TRUE(test::check_value(k, v, &ver));
      ++present;
      return true;
    }));
  }
  EXPECT_EQ(present, (*w)->stats().size);
  uint64_t version = ~0ull >> 1;  // above every wall-clock version
  for (uint64_t op = 0; op < 50000; ++op) {
    const uint64_t k = (op * 7) % kKeys;
    auto put = (*w)->put(test::make_key(k), test::make_value(k, ++version));
    ASSERT_TRUE(put) << put.error().message;
    if (op % 64 == 0) (*w)->reclaim();
  }
  const ReadReport a = parse_report(r1.read_line());
  const ReadReport b = parse_report(r2.read_line());
  EXPECT_EQ(r1.wait(), 0);
  EXPECT_EQ(r2.wait(), 0);
  EXPECT_EQ(a.bad + b.bad, 0u);
  EXPECT_GE(a.reads + b.reads, 2 * per_reader);
}

TEST_F(TableStressTest, ReaderWithoutPermissionGetsAccessError) {
  auto w = TableWriter::open(writer_options());  // mode 0640, group of the creator
  ASSERT_TRUE(w);
  Child c({helper("table_worker"), "open-as-nobody", shm_.prefix(), "s"});
  const std::string line = c.read_line();
  const int status = c.wait();
  if (status == 77) GTEST_SKIP() << "needs root to drop to uid 65534";
  ASSERT_EQ(status, 0);
  EXPECT_EQ(line.substr(0, line.find(' ')), std::to_string(KVS_EACCES)) << line;
  EXPECT_NE(line.find("permission denied"), std::string::npos) << line;
}

}  // namespace
}  // namespace kvs
