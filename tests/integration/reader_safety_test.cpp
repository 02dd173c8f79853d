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
#include <filesystem>
#include <string>
#include <vector>

#include "kvs/kvs.h"
#include "kvs/kvs.hpp"
#include "support/registry_files.hpp"
#include "support/test_support.hpp"
#include "support/verified_value.hpp"
#include "writer/table_writer.hpp"

namespace kvs {
namespace {

using test::Child;
using test::helper;

constexpr gid_t kTableGid = 5002;  // the readers' group in the hostile tests
constexpr uid_t kHostileUid = 5001;
constexpr uid_t kVictimUid = 5003;

std::string value_of(int i) {
  return std::string(200, static_cast<char>('a' + i % 26)) + std::to_string(i);
}

bool have_root() { return ::geteuid() == 0; }

class ReaderSafetyTest : public ::testing::Test {
 protected:
  std::unique_ptr<TableWriter> open_writer(gid_t group = static_cast<gid_t>(-1)) {
    WriterOptions o;
    o.table = "s";
    o.shm_prefix = shm_.prefix();
    o.shm_dir = shm_dir_;
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
  // A table with "k", a pinning reader started under `wrapper` (a command
  // that runs the rest of its arguments), and the churn around it.
  void expect_pin_holds_under(const std::vector<std::string>& wrapper) {
    auto w = open_writer();
    ASSERT_TRUE(w->put("k", value_of(0)));
    std::vector<std::string> argv = wrapper;
    for (auto& a : worker("pin")) argv.push_back(a);
    Child c(argv);
    expect_pin_holds(*w, c);
  }
  test::ShmScope shm_;
  std::string shm_dir_;  // the segments' directory; "": /dev/shm
};

TEST_F(ReaderSafetyTest, PinnedValueHoldsForAPlainReader) { expect_pin_holds_under({}); }

// A container sidecar: the reader in its own pid namespace, where its pid
// means another process (or none) to kvsd.
TEST_F(ReaderSafetyTest, ReaderInItsOwnPidNamespaceIsSeenAlive) {
  if (!have_root() || std::system("unshare -p -f --mount-proc true 2>/dev/null") != 0) {
    GTEST_SKIP() << "needs root and unshare(1) to make a pid namespace";
  }
  expect_pin_holds_under({"/usr/bin/unshare", "-p", "-f", "--mount-proc"});
}

// A reader without /proc (a minimal container, or hidepid): liveness must
// not depend on reading /proc.
TEST_F(ReaderSafetyTest, ReaderWithoutProcIsSeenAlive) {
  if (!have_root() || std::system("unshare -m true 2>/dev/null") != 0) {
    GTEST_SKIP() << "needs root and unshare(1) to make a mount namespace";
  }
  expect_pin_holds_under(
      {"/usr/bin/unshare", "-m", "/bin/sh", "-c", "umount -l /proc && exec \"$0\" \"$@\""});
}

// A reader in a container of its own: mount, pid and IPC namespaces, and a
// private tmpfs over /dev/shm (as Docker and every Kubernetes pod give it).
// It finds the table in the directory the deployment shares with kvsd (a
// memory-backed volume, mounted here at another path than kvsd's), named by
// KVS_SHM_DIR, and its guard holds there as on the host.
TEST_F(ReaderSafetyTest, ReaderWithAPrivateDevShmReadsTheSharedSegmentDirectory) {
  if (!have_root() || std::system("unshare -m -p -i -f true 2>/dev/null") != 0) {
    GTEST_SKIP() << "needs root and unshare(1) to make mount, pid and IPC namespaces";
  }
  const std::string pid = std::to_string(::getpid());
  shm_dir_ = "/dev/shm/kvs-pod-volume-" + pid;                  // kvsd's side of the volume
  const std::string mount_point = "/tmp/kvs-pod-mount-" + pid;  // the reader's side
  std::filesystem::create_directories(shm_dir_);
  std::filesystem::create_directories(mount_point);
  struct Cleanup {
    std::string a, b;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(a, ec);
      std::filesystem::remove_all(b, ec);
    }
  } cleanup{shm_dir_, mount_point};
  const std::string in_container = "mount --bind " + shm_dir_ + " " + mount_point +
                                   " && mount -t tmpfs tmpfs /dev/shm && test ! -e " + shm_dir_ +
                                   " && KVS_SHM_DIR=" + mount_point + " exec \"$0\" \"$@\"";
  expect_pin_holds_under({"/usr/bin/unshare", "-m", "-p", "-i", "-f", "--mount-proc",
                          "--propagation", "private", "/bin/sh", "-c", in_container});
}

// kvsd under hidepid or without /proc (as an unprivileged service sees it):
// a writer process that cannot read /proc still sees live readers alive.
TEST_F(ReaderSafetyTest, WriterWithoutProcSeesLiveReadersAlive) {
  if (!have_root() || std::system("unshare -m true 2>/dev/null") != 0) {
    GTEST_SKIP() << "needs root and unshare(1) to make a mount namespace";
  }
  Child writer({"/usr/bin/unshare", "-m", "/bin/sh", "-c", "umount -l /proc && exec \"$0\" \"$@\"",
                helper("table_worker"), "write", shm_.prefix(), "s", "200", "0", "131072"});
  ASSERT_EQ(writer.read_line(), "ready");
  // Pin a key the churning writer overwrites.
  Child c({helper("table_worker"), "pin", shm_.prefix(), "s", test::make_key(7)});
  ASSERT_EQ(c.read_line(), "pinned");
  // Once the writer has carved its whole arena (128 KiB for 200 keys), every
  // put must reuse a block: let it overwrite every key a thousand times (it
  // stalls instead, with nothing reusable, until the deadline).
  kvs_open_options o{shm_.prefix().c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  kvs_table* t = nullptr;
  ASSERT_EQ(kvs_open("s", &o, &t), KVS_OK);
  kvs_table_stats st{};
  ASSERT_TRUE(test::wait_until([&] {
    return kvs_stat(t, &st) == KVS_OK && st.arena_used_bytes + 4096 > st.arena_bytes;
  })) << "the writer never filled its arena";
  const uint64_t puts = st.puts;
  test::wait_until([&] { return kvs_stat(t, &st) == KVS_OK && st.puts > puts + 200000; },
                   std::chrono::seconds(1));
  kvs_close(t);
  ASSERT_TRUE(writer.running());
  c.write_line("check");
  EXPECT_EQ(c.read_line(), "same") << "a writer without /proc reused memory under a live reader";
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

// Short-lived readers that die without kvs_close (killed inside a guard):
// each is let in at once, whatever the dead before it left behind, and the
// writer removes what they left and reuses their memory.
TEST_F(ReaderSafetyTest, ReadersKilledInsideGuardsNeverLockOutTheNextOnes) {
  WriterOptions o;
  o.table = "s";
  o.shm_prefix = shm_.prefix();
  o.capacity = 1024;
  o.arena_bytes = 256 << 10;
  o.reader_slots = 16;  // fewer than the readers alive at once below
  o.max_value_bytes = 4096;
  o.dead_reader_check = std::chrono::milliseconds(1);
  auto w = TableWriter::open(o);
  ASSERT_TRUE(w) << w.error().message;
  ASSERT_TRUE((*w)->put("k", value_of(0)));
  constexpr int kRounds = 8, kAtOnce = 25;
  int let_in = 0;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::unique_ptr<Child>> readers;
    for (int i = 0; i < kAtOnce; ++i) {
      readers.push_back(std::make_unique<Child>(
          std::vector<std::string>{helper("table_worker"), "hold", shm_.prefix(), "s"}));
    }
    for (auto& r : readers) let_in += r->read_line() == "holding";
    for (auto& r : readers) r->kill(SIGKILL);
    for (auto& r : readers) EXPECT_EQ(r->wait(), 128 + SIGKILL);
    ASSERT_TRUE((*w)->put("k", value_of(round + 1)));
    (*w)->reclaim();
  }
  EXPECT_EQ(let_in, kRounds * kAtOnce);
  EXPECT_TRUE(test::wait_until([&] { return (*w)->reclaim() == 0; }, std::chrono::seconds(5)))
      << "the dead readers' announcements still hold memory back";
  (*w)->sweep_dead_readers();
  EXPECT_EQ(test::reader_files(shm_.path("s") + ".readers").size(), 0u)
      << "files of dead readers stay in the registry";
  EXPECT_GE((*w)->stats().dead_readers_recovered, static_cast<uint64_t>(kRounds * kAtOnce));
}

// argv run as uid:uid with the supplementary group `group`; a helper
// program is run from world_readable_helpers().
std::vector<std::string> as_user(uid_t uid, gid_t group, std::vector<std::string> argv) {
  std::vector<std::string> out = {"/usr/bin/setpriv", "--reuid=" + std::to_string(uid),
                                  "--regid=" + std::to_string(uid),
                                  "--groups=" + std::to_string(group), "--"};
  if (argv[0] == helper("table_worker")) {
    const std::string dir = test::world_readable_helpers({"table_worker"});
    out.insert(out.end(), {"/usr/bin/env", "LD_LIBRARY_PATH=" + dir});
    argv[0] = dir + "/table_worker";
  }
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

// A process with a reader's permissions (the readers' group, another uid)
// attacks the table: it may delay the reuse of what it can see, nothing
// more. It cannot lock kvsd out, touch another reader's announcements, forge
// a reader, or crash kvsd.
TEST_F(ReaderSafetyTest, HostileReaderCannotExposeOthersOrStopTheWriter) {
  if (!have_root()) GTEST_SKIP() << "needs root to run processes as other users (setpriv)";
  auto w = open_writer(kTableGid);
  ASSERT_TRUE(w->put("k", value_of(0)));
  Child victim(as_user(kVictimUid, kTableGid, worker("pin")));
  ASSERT_EQ(victim.read_line(), "pinned");
  const std::string dir = shm_.path("s") + ".readers";
  const auto files = test::reader_files(dir, victim.pid());
  ASSERT_EQ(files.size(), 1u);

  // The hostile process strikes while kvsd is down (a restart).
  w.reset();
  Child hostile(as_user(kHostileUid, kTableGid,
                        {helper("table_worker"), "hostile", shm_.prefix(), "s", files[0].path}));
  std::vector<std::string> attempts;
  for (std::string l = hostile.read_line(); l != "attacked" && !l.empty();
       l = hostile.read_line()) {
    attempts.push_back(l);
  }
  ASSERT_EQ(attempts.size(), 6u);
  EXPECT_EQ(attempts[0].rfind("lock-registry: refused", 0), 0u) << attempts[0];
  EXPECT_EQ(attempts[2].rfind("zero-registry: refused", 0), 0u) << attempts[2];
  EXPECT_EQ(attempts[3].rfind("write-victim: refused", 0), 0u) << attempts[3];
  EXPECT_EQ(attempts[4].rfind("truncate-victim: refused", 0), 0u) << attempts[4];

  // kvsd starts while the hostile process holds whatever it could lock.
  w = open_writer(kTableGid);
  ASSERT_TRUE(w) << "a reader locked the writer out";
  // The victim's pinned value holds while the writer churns.
  churn(*w);
  victim.write_line("check");
  EXPECT_EQ(victim.read_line(), "same") << "the writer reused memory under the victim's guard";

  // Once the victim lets go, the forged reader (no process holds its lock)
  // does not hold reuse back.
  victim.close_stdin();
  EXPECT_EQ(victim.wait_for(std::chrono::seconds(10)), 0);
  ASSERT_TRUE(w->put("k", value_of(1)));
  EXPECT_TRUE(test::wait_until([&] { return w->reclaim() == 0; }, std::chrono::seconds(5)))
      << "retired memory stays held back after every real reader let go";
  hostile.close_stdin();
  EXPECT_EQ(hostile.wait_for(std::chrono::seconds(10)), 0);
}

// A user who may read the segment but not register as a reader (the
// registry gives its group no create right) is refused a guard with a clear
// error, and can still monitor the table: kvs_stat needs no reader slot.
TEST_F(ReaderSafetyTest, ReaderThatCannotRegisterIsRefusedButCanMonitor) {
  if (!have_root()) GTEST_SKIP() << "needs root to run processes as other users (setpriv)";
  WriterOptions o;
  o.table = "s";
  o.shm_prefix = shm_.prefix();
  o.capacity = 1024;
  o.arena_bytes = 256 << 10;
  o.max_value_bytes = 4096;
  o.group = kTableGid;
  o.registry_mode = 0600;  // the group may read the table, not register
  auto w = TableWriter::open(o);
  ASSERT_TRUE(w) << w.error().message;
  ASSERT_TRUE((*w)->put("k", value_of(0)));
  Child c(as_user(kVictimUid, kTableGid,
                  {helper("table_worker"), "stat-then-read", shm_.prefix(), "s"}));
  EXPECT_EQ(c.read_line(), "stat 0 1");
  const std::string read = c.read_line();
  EXPECT_EQ(read.rfind("read " + std::to_string(KVS_EACCES), 0), 0u) << read;
  EXPECT_NE(read.find("cannot register as a reader"), std::string::npos) << read;
  EXPECT_EQ(c.wait(), 0);
}

}  // namespace
}  // namespace kvs
