// Reader safety where readers really run: a reader that pins a value inside
// one guard must see the same bytes however the writer churns, when it runs
// in its own pid namespace, without /proc, after fork(), out of file
// descriptors, or next to a hostile process of the readers' group.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "kvs/kvs.h"
#include "kvs/kvs.hpp"
#include "support/registry_files.hpp"
#include "support/test_support.hpp"
#include "writer/table_writer.hpp"

namespace kvs {
namespace {

using test::Child;
using test::helper;

constexpr gid_t kTableGid = 5002;  // the readers' group in the hostile tests
constexpr uid_t kHostileUid = 5001;
constexpr uid_t kVictimUid = 5003;

std::string value_of(int i) { return std::string(200, static_cast<char>('a' + i % 26)) + std::to_string(i); }

bool have_root() { return ::geteuid() == 0; }

class ReaderSafetyTest : public ::testing::Test {
 protected:
  std::unique_ptr<TableWriter> open_writer(gid_t group = static_cast<gid_t>(-1)) {
    WriterOptions o;
    o.table = "s";
    o.shm_prefix = shm_.prefix();
    o.capacity = 1024;
    o.arena_bytes = 256 << 10;
    o.reader_slots = 64;
    o.max_value_bytes = 4096;
    o.group = group;
    o.dead_reader_check = std::chrono::milliseconds(1);
    auto w = TableWriter::open(o);
    EXPECT_TRUE(w) << w.error().message;
    return w ? std::move(*w) : nullptr;
  }
  std::vector<std::string> worker(const std::string& mode) {
    return {helper("table_worker"), mode, shm_.prefix(), "s", "k"};
  }
  // Overwrites "k" and other keys for `duration`, reclaiming after each, so
  // that every block a dead or unseen reader could see is reused. Stops early
  // when the arena is full of blocks that readers may still see.
  void churn(TableWriter& w, std::chrono::milliseconds duration = std::chrono::milliseconds(300)) {
    const auto end = std::chrono::steady_clock::now() + duration;
    for (int i = 1; std::chrono::steady_clock::now() < end; ++i) {
      auto a = w.put("k", value_of(i));
      auto b = w.put("x" + std::to_string(i % 50), value_of(i + 1));
      if ((!a && a.error().code == Errc::kBusy) || (!b && b.error().code == Errc::kBusy)) return;
      ASSERT_TRUE(a) << a.error().message;
      ASSERT_TRUE(b) << b.error().message;
      w.reclaim();
    }
  }
  // `c` pins "k"; after the churn its pinned bytes must be unchanged.
  void expect_pin_holds(TableWriter& w, Child& c) {
    ASSERT_EQ(c.read_line(), "pinned");
    churn(w);
    c.write_line("check");
    EXPECT_EQ(c.read_line(), "same") << "the writer reused memory under a live reader's guard";
  }
  test::ShmScope shm_;
};

TEST_F(ReaderSafetyTest, PinnedValueHoldsForAPlainReader) {
  auto w = open_writer();
  ASSERT_TRUE(w->put("k", value_of(0)));
  Child c(worker("pin"));
  expect_pin_holds(*w, c);
}

// A container sidecar: the reader in its own pid namespace, where its pid
// means another process (or none) to kvsd.
TEST_F(ReaderSafetyTest, ReaderInItsOwnPidNamespaceIsSeenAlive) {
  if (!have_root() || std::system("unshare -p -f --mount-proc true 2>/dev/null") != 0) {
    GTEST_SKIP() << "needs root and unshare(1) to make a pid namespace";
  }
  auto w = open_writer();
  ASSERT_TRUE(w->put("k", value_of(0)));
  std::vector<std::string> argv = {"/usr/bin/unshare", "-p", "-f", "--mount-proc"};
  for (auto& a : worker("pin")) argv.push_back(a);
  Child c(argv);
  expect_pin_holds(*w, c);
}

// A reader without /proc (a minimal container, or hidepid): liveness must
// not depend on reading /proc.
TEST_F(ReaderSafetyTest, ReaderWithoutProcIsSeenAlive) {
  if (!have_root() || std::system("unshare -m true 2>/dev/null") != 0) {
    GTEST_SKIP() << "needs root and unshare(1) to make a mount namespace";
  }
  auto w = open_writer();
  ASSERT_TRUE(w->put("k", value_of(0)));
  std::vector<std::string> argv = {"/usr/bin/unshare", "-m", "/bin/sh", "-c",
                                   "umount -l /proc && exec \"$0\" \"$@\""};
  for (auto& a : worker("pin")) argv.push_back(a);
  Child c(argv);
  expect_pin_holds(*w, c);
}

// fork(): the child reads in its own guard while the parent reads again and
// exits; neither may end the other's protection.
TEST_F(ReaderSafetyTest, ForkedChildKeepsItsOwnProtection) {
  auto w = open_writer();
  ASSERT_TRUE(w->put("k", value_of(0)));
  Child c(worker("fork-pin"));
  ASSERT_EQ(c.read_line(), "pinned");
  EXPECT_EQ(c.wait_for(std::chrono::seconds(10)), 0) << "the parent reads again and exits";
  churn(*w);
  c.write_line("check");
  EXPECT_EQ(c.read_line(), "same") << "the writer reused memory under the forked child's guard";
}

// A reader that cannot register (no descriptor left) is refused with a clear
// error instead of reading unprotected.
TEST_F(ReaderSafetyTest, ReaderOutOfDescriptorsIsRefusedNotUnprotected) {
  auto w = open_writer();
  ASSERT_TRUE(w->put("k", value_of(0)));
  Child c(worker("pin-no-fds"));
  const std::string line = c.read_line();
  if (line == "pinned") {
    churn(*w);
    c.write_line("check");
    EXPECT_EQ(c.read_line(), "same");
    FAIL() << "a reader without a descriptor for its reader file read anyway";
  }
  EXPECT_EQ(line.rfind("refused " + std::to_string(KVS_ESYS), 0), 0u) << line;
  EXPECT_NE(line.find("RLIMIT_NOFILE"), std::string::npos) << line;
}

}  // namespace
}  // namespace kvs
