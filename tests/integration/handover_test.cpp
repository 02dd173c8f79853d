// Readers in containers that do not share kvsd's /dev/shm: they ask kvsd's
// socket for the table's descriptors (docs/protocol.md, OPEN) and then read
// as any reader does. Each reader here runs in its own mount, pid and IPC
// namespaces with a private tmpfs over /dev/shm (as Docker and every
// Kubernetes pod give it), sees only the socket, and is the real kvsd's
// reader on the mock cluster: it reads every key, follows a growth and a
// rebuild, keeps reading through a SIGKILL of kvsd and catches up after
// the restart, and its watch sees the table's changes. In a user namespace
// that does not map kvsd's uid it reads too; a uid kvsd does not allow is
// refused, saying why.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "format/layout.hpp"
#include "protocol/frame.hpp"
#include "support/kvsd_fixture.hpp"
#include "support/producer.hpp"

namespace kvs {
namespace {

constexpr auto npos = std::string::npos;

bool can_unshare(const char* flags) {
  return ::geteuid() == 0 &&
         std::system(("unshare " + std::string(flags) + " true 2>/dev/null").c_str()) == 0;
}

// As uid 65533: a user namespace that maps it to root (unshare -U -r).
bool can_userns() {
  return can_unshare("-m") && std::system(
                                  "setpriv --reuid 65533 --regid 65533 --clear-groups "
                                  "unshare -U -r -m -p -i -f true 2>/dev/null") == 0;
}

class HandoverTest : public KvsdTest {
 protected:
  void reads_follows_restarts_watches(bool userns);
  // The reader in a container of its own: `as_user` (if not empty) is the
  // setpriv prefix and `userns` a new user namespace mapping it to root.
  std::unique_ptr<test::Child> container_reader(const std::string& as_user = "",
                                                bool userns = false) {
    const std::string dir = as_user.empty() ? test::helper(".") : helpers();
    const std::string shell = "mount -t tmpfs tmpfs /dev/shm && test ! -e /dev/shm/" +
                              shm_.prefix() + "t && exec env LD_LIBRARY_PATH=" + dir +
                              " KVS_HANDOVER=auto KVS_SOCKET=" + socket_path() +
                              " KVS_SHM_PREFIX=" + shm_.prefix() + " \"$0\"";
    std::vector<std::string> argv;
    if (!as_user.empty()) {
      for (const char* a :
           {"/usr/bin/setpriv", "--reuid", "65533", "--regid", "65533", "--clear-groups"}) {
        argv.push_back(a);
      }
    }
    argv.push_back("/usr/bin/unshare");
    if (userns) {
      argv.push_back("-U");
      argv.push_back("-r");
    }
    for (const char* a : {"-m", "-p", "-i", "-f", "--mount-proc", "--propagation", "private"}) {
      argv.push_back(a);
    }
    for (const std::string& a :
         std::vector<std::string>{"/bin/sh", "-c", shell, dir + "/handover_reader"}) {
      argv.push_back(a);
    }
    return std::make_unique<test::Child>(argv, (dir_ / "reader.log").string());
  }
  std::string helpers() { return test::world_readable_helpers({"handover_reader"}); }
  // Opens `t` in the reader, waiting for kvsd to have created it.
  static std::string open(test::Child& r) {
    std::string line;
    test::wait_until([&] {
      r.write_line("open t");
      line = r.read_line();
      return line == "open 0" || line.empty() || line.find("not served") != npos ||
             line.find("may not") != npos;
    });
    return line;
  }
  static std::map<std::string, std::string> dump(test::Child& r) {
    std::map<std::string, std::string> m;
    r.write_line("dump");
    for (std::string l = r.read_line(); l.rfind("entry ", 0) == 0; l = r.read_line()) {
      const size_t sp = l.find(' ', 6);
      m[l.substr(6, sp - 6)] = l.substr(sp + 1);
    }
    return m;
  }
  static std::string ask(test::Child& r, const std::string& cmd) {
    r.write_line(cmd);
    return r.read_line();
  }
  std::map<std::string, std::string> produce(const std::string& prefix, int n, int partitions) {
    std::map<std::string, std::string> model;
    test::Producer p(kafka_.bootstrap());
    for (int i = 0; i < n; ++i) {
      const std::string k = prefix + std::to_string(i), v = "v" + std::to_string(i);
      p.send(topic_, i % partitions, k, v);
      model[k] = v;
    }
    EXPECT_TRUE(p.flush());
    return model;
  }
  std::string kvsd_log() const {
    return log() + "\nreader: " + test::slurp((dir_ / "reader.log").string());
  }
};

// Reads every key, follows a growth, keeps reading through a SIGKILL of
// kvsd and catches up after the restart, and watches every change. In a
// user namespace (userns) the reader runs as uid 65533, which kvsd lets in
// through the socket's group and reader_uids.
void HandoverTest::reads_follows_restarts_watches(bool userns) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 4));
  auto model = produce("key", 3000, 4);
  ::chmod(dir_.c_str(), 0711);
  const std::string kvsd_lines =
      userns ? "socket_group = \"65533\"\nallowed_uids = [0]\nreader_uids = [65533]\n" : "";
  auto kvsd = start_kvsd(write_config("", kvsd_lines));
  auto r = userns ? container_reader("65533", true) : container_reader();
  ASSERT_EQ(open(*r), "open 0") << kvsd_log();
  ASSERT_TRUE(test::wait_until([&] { return dump(*r) == model; }, 30s)) << kvsd_log();
  EXPECT_EQ(log().find("may not"), npos);

  // Growth: the reader asks kvsd for the new segment.
  const uint64_t before = std::stoull(ask(*r, "capacity").substr(9));
  for (auto& [k, v] : produce("more", static_cast<int>(before), 4)) model[k] = v;
  ASSERT_TRUE(test::wait_until([&] { return dump(*r) == model; }, 60s)) << kvsd_log();
  EXPECT_GT(std::stoull(ask(*r, "capacity").substr(9)), before) << "the table did not grow";

  // kvsd killed: the reader keeps what it has; restarted: it catches up.
  kvsd->kill(SIGKILL);
  ASSERT_EQ(kvsd->wait_for(30s), 128 + SIGKILL);
  EXPECT_EQ(ask(*r, "get key7"), "value v7");
  for (auto& [k, v] : produce("after", 100, 4)) model[k] = v;
  EXPECT_EQ(ask(*r, "get after7"), "absent");
  kvsd = start_kvsd(write_config("", kvsd_lines));
  ASSERT_TRUE(test::wait_until([&] { return dump(*r) == model; }, 60s)) << kvsd_log();

  // A watch: every change reaches the reader.
  ASSERT_EQ(ask(*r, "watch 50 30000"), "watching");
  produce("watched", 50, 4);
  EXPECT_EQ(r->read_line(), "watched 50") << kvsd_log();
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

TEST_F(HandoverTest, AContainerReaderReadsFollowsGrowthAndARestartAndWatches) {
  if (!can_unshare("-m -p -i -f")) GTEST_SKIP() << "needs root and unshare(1) for namespaces";
  reads_follows_restarts_watches(false);
}

// The same where the reader's user namespace does not map kvsd's uid.
TEST_F(HandoverTest, AReaderInAUserNamespaceReadsFollowsGrowthAndARestartAndWatches) {
  if (!can_userns()) GTEST_SKIP() << "needs root, and user namespaces for other users";
  reads_follows_restarts_watches(true);
}

// The topic re-created with fewer partitions while kvsd runs: kvsd rebuilds
// the table into a new segment, and the container's reader moves to it.
TEST_F(HandoverTest, AContainerReaderFollowsARebuild) {
  if (!can_unshare("-m -p -i -f")) GTEST_SKIP() << "needs root and unshare(1) for namespaces";
  if (!kafka_.is_mock()) GTEST_SKIP() << "re-creates the topic by restarting the mock cluster";
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  produce("old", 1000, 2);
  auto kvsd = start_kvsd(write_config());
  auto r = container_reader();
  ASSERT_EQ(open(*r), "open 0") << kvsd_log();
  ASSERT_TRUE(test::wait_until([&] { return dump(*r).size() == 1000; }, 30s)) << kvsd_log();
  ASSERT_TRUE(kafka_.restart_with_topic(topic_, 1)) << "the mock cluster's ports were taken";
  const auto model = produce("new", 300, 1);
  ASSERT_TRUE(test::wait_until([&] { return dump(*r) == model; }, 60s)) << kvsd_log();
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

// Under writes that reuse memory fast (16 keys overwritten with 4 KiB
// values through a 1 MiB arena that may not grow), a container reader's
// guard holds as a host reader's does: kvsd counts the reader file it
// handed over, waits for it rather than reuse what the guard may see (and
// says so), and the guarded bytes never change; once the reader leaves,
// kvsd goes on.
TEST_F(HandoverTest, AContainerReadersGuardHoldsUnderChurn) {
  if (!can_unshare("-m -p -i -f")) GTEST_SKIP() << "needs root and unshare(1) for namespaces";
  ASSERT_TRUE(kafka_.create_topic(topic_, 1));
  const uint64_t limit =
      format::geometry(1024, 256, 1 << 20, /*kvsd's change_log_entries=*/65536).segment_bytes;
  test::Producer p(kafka_.bootstrap());
  for (int i = 0; i < 16; ++i) p.send(topic_, 0, "key" + std::to_string(i), "first");
  ASSERT_TRUE(p.flush());
  // A small table that may not grow.
  const std::string config = (dir_ / "churn.toml").string();
  std::ofstream(config) << "[kvsd]\nmetrics_listen = \"\"\nsocket_path = \"" << socket_path()
                        << "\"\nshm_prefix = \"" << shm_.prefix() << "\"\nstate_dir = \""
                        << state_dir()
                        << "\"\npoll_timeout_ms = 20\n[kafka]\n\"bootstrap.servers\" = \""
                        << kafka_.bootstrap() << "\"\n[[table]]\nname = \"t\"\ntopic = \"" << topic_
                        << "\"\ncapacity = 1024\nmemory_limit_bytes = 1048576\n"
                        << "max_value_bytes = 65536\nmax_memory_bytes = " << limit << "\n";
  auto kvsd = start_kvsd(config);
  auto r = container_reader();
  ASSERT_EQ(open(*r), "open 0") << kvsd_log();
  ASSERT_TRUE(test::wait_until([&] { return ask(*r, "get key3") == "value first"; })) << kvsd_log();
  ASSERT_EQ(ask(*r, "pin key3"), "pinned");

  constexpr int kRecords = 600;
  std::string last;
  for (int i = 0; i < kRecords; ++i) {
    const std::string v = std::to_string(i) + std::string(4096, 'v');
    p.send(topic_, 0, "key" + std::to_string(i % 16), v);
    if (i % 16 == 3) last = v;
  }
  ASSERT_TRUE(p.flush());
  auto host = Table::open("t", {shm_.prefix()});
  ASSERT_TRUE(host) << host.error().message;
  kvs_table_stats s{};
  ASSERT_TRUE(test::wait_until(
      [&] { return kvs_stat(host->native(), &s) == KVS_OK && s.held_partitions == 1; }, 30s))
      << "kvsd never waited for the container's reader\n"
      << kvsd_log();
  EXPECT_EQ(s.hold_reason, static_cast<uint32_t>(KVS_HOLD_READERS));
  EXPECT_EQ(ask(*r, "check"), "same") << "memory under a container reader's guard was reused";

  r->close_stdin();  // the reader exits: its reader file's lock goes with it
  EXPECT_EQ(r->wait_for(30s), 0);
  ASSERT_TRUE(test::wait_until(
      [&] {
        auto v = host->get_copy("key3");
        return v && *v == last;
      },
      30s))
      << kvsd_log();
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

// A user namespace that does not map kvsd's uid (the segment's owner shows
// as the overflow uid): the descriptors come from the socket's peer, so the
// reader trusts them without trusting a uid by number. Its host uid must be
// allowed (reader_uids); without that kvsd refuses it and says why.
TEST_F(HandoverTest, AReaderInAUserNamespaceIsHandedTheTableOnlyIfAllowed) {
  if (!can_userns()) GTEST_SKIP() << "needs root, and user namespaces for other users";
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  const auto model = produce("key", 500, 2);
  // The reader (uid 65533) reaches the socket through its group, and may
  // not write (allowed_uids).
  ::chmod(dir_.c_str(), 0711);
  const std::string socket = "socket_group = \"65533\"\nallowed_uids = [0]\n";
  auto kvsd = start_kvsd(write_config("", socket));
  {
    auto refused = container_reader("65533", true);
    const std::string line = open(*refused);
    EXPECT_NE(line.find("may not read the tables"), npos) << line << "\n" << kvsd_log();
    EXPECT_NE(line.find("uid 65533"), npos) << line;
  }
  kvsd->kill(SIGTERM);
  ASSERT_EQ(kvsd->wait_for(30s), 0) << log();
  // Allowed by uid, then by group.
  for (const char* allowed : {"reader_uids = [65533]\n", "reader_gids = [65533]\n"}) {
    kvsd = start_kvsd(write_config("", socket + allowed));
    auto r = container_reader("65533", true);
    ASSERT_EQ(open(*r), "open 0") << allowed << kvsd_log();
    EXPECT_TRUE(test::wait_until([&] { return dump(*r) == model; }, 30s)) << kvsd_log();
    kvsd->kill(SIGTERM);
    EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
  }
}

size_t reader_files(const std::string& registry) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(registry)) {
    if (e.path().filename().string().rfind("r.", 0) == 0) ++n;
  }
  return n;
}

// Replies on `fd` (descriptors that come with them are closed) until
// `n` frames came or the deadline: how many were OPEN_OK, and whether the
// connection was closed after them.
struct Replies {
  int ok = 0, busy = 0, other = 0;
  bool closed = false;
};
Replies read_replies(int fd, int n, std::chrono::seconds within) {
  Replies r;
  std::string buf;
  const auto deadline = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < deadline) {
    protocol::Header h;
    std::string_view body;
    std::string why;
    if (protocol::split(buf, 1 << 16, &h, &body, &why) == protocol::Split::kFrame) {
      if (h.type == static_cast<uint8_t>(protocol::Type::kOpenOk)) {
        ++r.ok;
      } else if (auto e = protocol::decode_error(body);
                 e && e->code == static_cast<int32_t>(Errc::kBusy)) {
        ++r.busy;
      } else {
        ++r.other;
      }
      buf.erase(0, protocol::kHeaderBytes + body.size());
      continue;
    }
    if (r.ok + r.busy + r.other >= n && n > 0) break;
    char chunk[4096];
    alignas(cmsghdr) char control[CMSG_SPACE(16 * sizeof(int))];
    iovec iov{chunk, sizeof chunk};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t got = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); got > 0 && cm; cm = CMSG_NXTHDR(&msg, cm)) {
      for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
        int f;
        std::memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof f);
        ::close(f);
      }
    }
    if (got == 0) {
      r.closed = true;
      break;
    }
    if (got > 0) {
      buf.append(chunk, static_cast<size_t>(got));
    } else {
      pollfd p{fd, POLLIN, 0};
      ::poll(&p, 1, 100);
    }
  }
  return r;
}

// Peers that ask for descriptors again and again on one connection, and
// leave a request half-sent: each connection is handed at most
// Handover::kMaxPerConnection sets (then told kBusy), the half-sent
// request is dropped with its connection at hello_timeout_ms, kvsd stays
// up and hands the table to the next reader, the reader files of peers
// that left are removed, and a table kvsd does not serve is named so.
TEST_F(HandoverTest, HostilePeersAreBoundedAndOthersAreStillServed) {
  ASSERT_TRUE(kafka_.create_topic(topic_, 2));
  const auto model = produce("key", 200, 2);
  auto kvsd = start_kvsd(write_config("", "hello_timeout_ms = 2000\n"));
  OpenOptions handed(shm_.prefix());
  handed.socket_path = socket_path();
  handed.handover = KVS_HANDOVER_ALWAYS;
  ASSERT_TRUE(test::wait_until([&] { return Table::open("t", handed).has_value(); })) << log();

  constexpr int kPeers = 20, kAsks = 50;
  std::string asks;
  for (int i = 0; i < kAsks; ++i) {
    protocol::encode_open(asks, i, protocol::Open{"t", protocol::kOpenAll, 0});
  }
  std::vector<int> peers;
  for (int i = 0; i < kPeers; ++i) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, socket_path().c_str());
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    // The last request stays half-sent.
    ASSERT_EQ(::send(fd, asks.data(), asks.size() - 3, MSG_NOSIGNAL),
              static_cast<ssize_t>(asks.size() - 3));
    peers.push_back(fd);
  }
  // Served meanwhile: another reader, and a table that is not there.
  auto t = Table::open("t", handed);
  ASSERT_TRUE(t) << t.error().message;
  ASSERT_TRUE(t->wait_ready(30s));
  EXPECT_EQ(contents(*t), model);
  auto nosuch = Table::open("nosuch", handed);
  ASSERT_FALSE(nosuch);
  EXPECT_EQ(nosuch.error().code, Errc::kInvalidArgument);
  EXPECT_NE(nosuch.error().message.find("not served"), npos) << nosuch.error().message;

  for (int fd : peers) {
    const Replies r = read_replies(fd, -1, 30s);
    EXPECT_EQ(r.ok, 8);
    EXPECT_EQ(r.busy, kAsks - 1 - 8);
    EXPECT_EQ(r.other, 1);  // the hello timeout's error
    EXPECT_TRUE(r.closed) << "the half-sent request kept its connection";
    ::close(fd);
  }
  const std::string registry = "/dev/shm/" + shm_.prefix() + "t.readers";
  EXPECT_TRUE(test::wait_until([&] { return reader_files(registry) <= 2; }, 30s))
      << reader_files(registry) << " reader files left";
  EXPECT_TRUE(kvsd->running());
  kvsd->kill(SIGTERM);
  EXPECT_EQ(kvsd->wait_for(30s), 0) << log();
}

}  // namespace
}  // namespace kvs
