#include "wait_hub.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>

#include "base/sys.hpp"
#include "log.hpp"
#include "protocol/wait_socket.hpp"

namespace kvs::daemon {

namespace {

// epoll data: the stop eventfd, a table's listening socket (by index), or
// a connection (by descriptor).
constexpr uint64_t kStop = uint64_t{1} << 62;
constexpr uint64_t kListener = uint64_t{1} << 61;
constexpr uint64_t kAdopt = uint64_t{1} << 60;

// A name beside `path` that a reader cannot guess in advance.
std::string beside(const std::string& path, const char* what) {
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", static_cast<unsigned>(std::random_device{}()));
  return path + what + hex;
}

// Removes the sockets a kvsd of this user left beside `path` (it died
// between binding and renaming).
void remove_leftovers(const std::string& path) {
  const std::string dir = path.substr(0, path.rfind('/'));
  const std::string prefix = path.substr(dir.size() + 1) + ".new.";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (const dirent* e = ::readdir(d)) {
    if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) != 0) continue;
    struct stat st {};
    const std::string p = dir + "/" + e->d_name;
    if (::lstat(p.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_uid == ::geteuid())
      ::unlink(p.c_str());
  }
  ::closedir(d);
}

// Connections a burst may bring per listener before the others are served.
constexpr int kAcceptsPerWakeup = 64;
// How long a listener rests when kvsd is out of descriptors.
constexpr auto kListenerRest = std::chrono::milliseconds(100);

}  // namespace

WaitHub::~WaitHub() { stop(); }

// Binds a listening socket at `path`: under a random name beside it first,
// then renamed over it, replacing whatever is there. The registry directory
// lets readers create entries, and one may have put something under these
// names (a directory under `path` is moved aside: kvsd owns the sticky
// directory, so it may).
static Result<int> bind_socket(const std::string& path, mode_t mode, gid_t group) {
  sockaddr_un addr{};
  if (beside(path, ".new.").size() >= sizeof addr.sun_path) {
    return make_error(Errc::kInvalidArgument, path + " is too long for a socket path (" +
                                                  std::to_string(sizeof addr.sun_path - 1 - 13) +
                                                  " bytes at most)");
  }
  remove_leftovers(path);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return sys_error("socket for " + path, errno);
  std::string temp;
  bool bound = false;
  for (int attempt = 0; attempt < 4 && !bound; ++attempt) {
    temp = beside(path, ".new.");
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, temp.c_str(), temp.size() + 1);
    bound = ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
    if (!bound && errno != EADDRINUSE) break;
  }
  auto fail = [&](const std::string& what) {
    auto e = sys_error(what, errno);
    ::close(fd);
    if (bound) ::unlink(temp.c_str());
    return e;
  };
  if (!bound) return fail("bind beside " + path);
  if (::chmod(temp.c_str(), mode & 0666) != 0 ||
      (group != static_cast<gid_t>(-1) &&
       ::chown(temp.c_str(), static_cast<uid_t>(-1), group) != 0) ||
      ::listen(fd, 128) != 0)
    return fail(path);
  for (int attempt = 0; attempt < 4; ++attempt) {
    if (::rename(temp.c_str(), path.c_str()) == 0) return fd;
    if (errno != EISDIR && errno != ENOTEMPTY && errno != EEXIST) break;
    const std::string aside = beside(path, ".removed.");
    if (::rename(path.c_str(), aside.c_str()) == 0) {
      KVS_LOG_WARN("%s was a directory kvsd did not make; moved to %s", path.c_str(),
                   aside.c_str());
    }
  }
  return fail("rename to " + path);
}

Result<const std::atomic<uint32_t>*> WaitHub::listen(const std::string& table,
                                                     const std::string& registry_dir, mode_t mode,
                                                     gid_t group, uint32_t max_connections,
                                                     uint32_t max_per_uid) {
  auto t = std::make_unique<Table>();
  t->name = table;
  t->path = wait_socket::path(registry_dir);
  t->max_connections = max_connections;
  t->max_per_uid = max_per_uid != 0
                       ? max_per_uid
                       : std::min(max_connections, std::max<uint32_t>(16, max_connections / 4));
  auto fd = bind_socket(t->path, mode, group);
  if (!fd) return std::move(fd).error();
  t->fd = *fd;
  tables_.push_back(std::move(t));
  return &tables_.back()->waiting;
}

Result<void> WaitHub::start() {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  adopt_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (epoll_fd_ < 0 || stop_fd_ < 0 || adopt_fd_ < 0) {
    return sys_error("wait sockets: epoll", errno);
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kStop;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, stop_fd_, &ev) != 0)
    return sys_error("epoll_ctl", errno);
  ev.data.u64 = kAdopt;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, adopt_fd_, &ev) != 0)
    return sys_error("epoll_ctl", errno);
  for (size_t i = 0; i < tables_.size(); ++i) {
    tables_[i]->index = i;
    ev.data.u64 = kListener | i;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, tables_[i]->fd, &ev) != 0)
      return sys_error("epoll_ctl", errno);
  }
  running_ = true;
  thread_ = std::thread([this] { run(); });
  return {};
}

bool WaitHub::adopt(const std::string& table, int fd, uid_t uid) {
  for (auto& t : tables_) {
    if (t->name != table) continue;
    std::lock_guard lock(adopt_mu_);
    if (!running_.load()) break;
    adopted_.push_back(Adopted{t.get(), fd, uid});
    const uint64_t one = 1;
    (void)!::write(adopt_fd_, &one, sizeof one);
    return true;
  }
  ::close(fd);
  return false;
}

void WaitHub::take_adopted() {
  uint64_t n = 0;
  (void)!::read(adopt_fd_, &n, sizeof n);
  std::vector<Adopted> batch;
  {
    std::lock_guard lock(adopt_mu_);
    batch.swap(adopted_);
  }
  const uint64_t round = next_seq_;
  for (const auto& a : batch) add_conn(*a.table, a.fd, a.uid, round);
}

void WaitHub::stop() {
  {
    std::lock_guard lock(adopt_mu_);
    running_ = false;
    for (const auto& a : adopted_) ::close(a.fd);
    adopted_.clear();
  }
  if (thread_.joinable()) {
    const uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof one);
    thread_.join();
  }
  while (!conns_.empty()) drop(conns_.begin()->first);
  for (auto& t : tables_) {
    if (t->fd < 0) continue;
    ::close(t->fd);
    ::unlink(t->path.c_str());
    t->fd = -1;
  }
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
  if (stop_fd_ >= 0) ::close(stop_fd_);
  if (adopt_fd_ >= 0) ::close(adopt_fd_);
  if (spare_fd_ >= 0) ::close(spare_fd_);
  epoll_fd_ = stop_fd_ = spare_fd_ = adopt_fd_ = -1;
}

void WaitHub::run() {
  epoll_event events[64];
  for (;;) {
    int timeout_ms = -1;
    if (!resting_.empty()) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(
          rest_until_ - std::chrono::steady_clock::now());
      timeout_ms = static_cast<int>(std::max<int64_t>(0, left.count()));
    }
    const int n = ::epoll_wait(epoll_fd_, events, 64, timeout_ms);
    if (!resting_.empty() && std::chrono::steady_clock::now() >= rest_until_) wake_listeners();
    if (n < 0 && errno != EINTR) {
      KVS_LOG_ERROR("wait sockets: epoll_wait: %s; waiting readers poll", std::strerror(errno));
      return;
    }
    for (int i = 0; i < n; ++i) {
      const uint64_t d = events[i].data.u64;
      if (d == kStop) return;
      if (d == kAdopt) {
        take_adopted();
      } else if (d & kListener) {
        accept_all(*tables_[d & ~kListener]);
      } else {
        serve(static_cast<int>(d));
      }
    }
  }
}

void WaitHub::accept_all(Table& t) {
  const uint64_t round = next_seq_;
  for (int i = 0; i < kAcceptsPerWakeup; ++i) {
    int fd = ::accept4(t.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
      // Out of descriptors: the pending connection keeps the listener
      // readable. It is taken with the spare descriptor and closed (its
      // reader polls), or, without one, the listener rests a while.
      if (spare_fd_ < 0) return rest(t);
      ::close(spare_fd_);
      fd = ::accept4(t.fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) ::close(fd);
      spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      continue;
    }
    if (fd < 0) return;  // EAGAIN
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      ::close(fd);  // its process polls
      continue;
    }
    add_conn(t, fd, cred.uid, round);
  }
}

void WaitHub::add_conn(Table& t, int fd, uid_t uid, uint64_t round) {
  if (!admit(t, uid, round)) {
    ::close(fd);  // its process polls
    return;
  }
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.u64 = static_cast<uint64_t>(fd);
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    ::close(fd);
    return;
  }
  const uint64_t seq = next_seq_++;
  conns_[fd] = Conn{&t, false, seq, uid};
  t.idle.emplace(seq, fd);
  ++t.connections;
  ++t.per_uid[uid];
}

// At a limit (the user's share, or the table's), a connection that does
// not wait (and did not arrive in this burst) makes room: a process keeps
// its connection between waits. A user at its share makes room only among
// its own.
bool WaitHub::admit(Table& t, uid_t uid, uint64_t round) {
  const auto mine = t.per_uid.find(uid);
  if (mine != t.per_uid.end() && mine->second >= t.max_per_uid) return drop_idle(t, round, uid);
  return t.connections < t.max_connections || drop_idle(t, round);
}

void WaitHub::rest(Table& t) {
  epoll_event ev{};
  ev.events = 0;
  ev.data.u64 = kListener | t.index;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, t.fd, &ev);
  resting_.push_back(&t);
  rest_until_ = std::chrono::steady_clock::now() + kListenerRest;
}

void WaitHub::wake_listeners() {
  if (spare_fd_ < 0) spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  for (Table* t : resting_) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListener | t->index;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, t->fd, &ev);
  }
  resting_.clear();
}

void WaitHub::serve(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  char buf[256];
  const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) return drop(fd);
  // Announcements alternate with withdrawals; anything else is not libkvs
  // and closes the connection (so one connection costs one answer per
  // wait it announces).
  for (ssize_t i = 0; i < n; ++i) {
    if (buf[i] == wait_socket::kWaiting && !c.waiting) {
      // seq_cst: pairs with the apply thread's load after it moved the
      // futex word (TableWriter::publish_batch).
      c.table->waiting.fetch_add(1, std::memory_order_seq_cst);
      c.waiting = true;
      c.table->idle.erase({c.idle_seq, fd});
      const char answer = wait_socket::kCounted;
      // A peer that does not read its answers is not served further.
      if (::send(fd, &answer, 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1) return drop(fd);
    } else if (buf[i] == wait_socket::kDone && c.waiting) {
      c.table->waiting.fetch_sub(1, std::memory_order_relaxed);
      c.waiting = false;
      c.idle_seq = next_seq_++;
      c.table->idle.emplace(c.idle_seq, fd);
    } else {
      return drop(fd);
    }
  }
}

bool WaitHub::drop_idle(Table& t, uint64_t before, std::optional<uid_t> uid) {
  for (const auto& [seq, fd] : t.idle) {  // the one idle longest first
    if (seq >= before) return false;
    if (uid && conns_.at(fd).uid != *uid) continue;
    drop(fd);
    return true;
  }
  return false;
}

void WaitHub::drop(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  if (c.waiting) {
    c.table->waiting.fetch_sub(1, std::memory_order_relaxed);
  } else {
    c.table->idle.erase({c.idle_seq, fd});
  }
  --c.table->connections;
  if (auto u = c.table->per_uid.find(c.uid); u != c.table->per_uid.end() && --u->second == 0)
    c.table->per_uid.erase(u);
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  ::close(fd);
  conns_.erase(it);
}

}  // namespace kvs::daemon
