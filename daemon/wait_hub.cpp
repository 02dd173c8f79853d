#include "wait_hub.hpp"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "log.hpp"
#include "protocol/wait_socket.hpp"

namespace kvs::daemon {

namespace {

// epoll data: the stop eventfd, a table's listening socket (by index), or
// a connection (by descriptor).
constexpr uint64_t kStop = uint64_t{1} << 62;
constexpr uint64_t kListener = uint64_t{1} << 61;

Error sys_error(const std::string& what) {
  return Error{Errc::kSystem, what + ": " + std::strerror(errno)};
}

}  // namespace

WaitHub::~WaitHub() { stop(); }

// Binds a socket at `path`. It is bound under a name of its own first and
// then renamed over `path`, replacing whatever is there: the registry
// directory lets readers create entries, and one may have put something
// under the name (a directory there is moved aside: kvsd owns the sticky
// directory, so it may).
static Result<int> bind_socket(const std::string& path, mode_t mode, gid_t group) {
  sockaddr_un addr{};
  const std::string temp = path + ".new." + std::to_string(::getpid());
  if (temp.size() >= sizeof addr.sun_path) {
    return make_error(Errc::kInvalidArgument,
                      path + " is longer than a socket path may be (" +
                          std::to_string(sizeof addr.sun_path - 1 - (temp.size() - path.size())) +
                          " bytes)");
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, temp.c_str(), temp.size() + 1);
  ::unlink(temp.c_str());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return sys_error("socket for " + path);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
      ::chmod(temp.c_str(), mode & 0666) != 0 ||
      (group != static_cast<gid_t>(-1) &&
       ::chown(temp.c_str(), static_cast<uid_t>(-1), group) != 0) ||
      ::listen(fd, 128) != 0) {
    auto e = sys_error(path);
    ::close(fd);
    ::unlink(temp.c_str());
    return e;
  }
  for (int attempt = 0;; ++attempt) {
    if (::rename(temp.c_str(), path.c_str()) == 0) return fd;
    const int err = errno;
    if (attempt < 3 && (err == EISDIR || err == ENOTEMPTY || err == EEXIST)) {
      const std::string aside =
          path + ".removed." + std::to_string(::getpid()) + "." + std::to_string(attempt);
      if (::rename(path.c_str(), aside.c_str()) == 0) {
        KVS_LOG_WARN("%s was a directory kvsd did not make; moved to %s", path.c_str(),
                     aside.c_str());
        continue;
      }
    }
    errno = err;
    auto e = sys_error("rename to " + path);
    ::close(fd);
    ::unlink(temp.c_str());
    return e;
  }
}

Result<const std::atomic<uint32_t>*> WaitHub::listen(const std::string& table,
                                                     const std::string& registry_dir, mode_t mode,
                                                     gid_t group, uint32_t max_connections) {
  auto t = std::make_unique<Table>();
  t->name = table;
  t->path = wait_socket::path(registry_dir);
  t->max_connections = max_connections;
  auto fd = bind_socket(t->path, mode, group);
  if (!fd) return std::move(fd).error();
  t->fd = *fd;
  tables_.push_back(std::move(t));
  return &tables_.back()->waiting;
}

Result<void> WaitHub::start() {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (epoll_fd_ < 0 || stop_fd_ < 0) return sys_error("wait sockets: epoll");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kStop;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, stop_fd_, &ev) != 0) return sys_error("epoll_ctl");
  for (size_t i = 0; i < tables_.size(); ++i) {
    ev.data.u64 = kListener | i;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, tables_[i]->fd, &ev) != 0)
      return sys_error("epoll_ctl");
  }
  thread_ = std::thread([this] { run(); });
  return {};
}

void WaitHub::stop() {
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
  if (spare_fd_ >= 0) ::close(spare_fd_);
  epoll_fd_ = stop_fd_ = spare_fd_ = -1;
}

void WaitHub::run() {
  epoll_event events[64];
  for (;;) {
    const int n = ::epoll_wait(epoll_fd_, events, 64, -1);
    if (n < 0 && errno != EINTR) {
      KVS_LOG_ERROR("wait sockets: epoll_wait: %s; waiting readers poll", std::strerror(errno));
      return;
    }
    for (int i = 0; i < n; ++i) {
      const uint64_t d = events[i].data.u64;
      if (d == kStop) return;
      if (d & kListener) {
        accept_all(*tables_[d & ~kListener]);
      } else {
        serve(static_cast<int>(d));
      }
    }
  }
}

void WaitHub::accept_all(Table& t) {
  for (;;) {
    int fd = ::accept4(t.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE) && spare_fd_ >= 0) {
      // Out of descriptors: the pending connection would keep the
      // listener readable (and this thread spinning). It is taken with the
      // spare descriptor and closed; its reader polls.
      ::close(spare_fd_);
      fd = ::accept4(t.fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) ::close(fd);
      spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      continue;
    }
    if (fd < 0) return;  // EAGAIN
    // At the limit, a connection that does not wait now makes room: only
    // the waiting ones count against it (a process keeps its connection
    // between waits).
    if (t.connections >= t.max_connections && !drop_idle(t)) {
      ::close(fd);
      continue;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = static_cast<uint64_t>(fd);
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      ::close(fd);
      continue;
    }
    conns_[fd] = Conn{&t, false};
    ++t.connections;
  }
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
      const char answer = wait_socket::kCounted;
      // A peer that does not read its answers is not served further.
      if (::send(fd, &answer, 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1) return drop(fd);
    } else if (buf[i] == wait_socket::kDone && c.waiting) {
      c.table->waiting.fetch_sub(1, std::memory_order_relaxed);
      c.waiting = false;
    } else {
      return drop(fd);
    }
  }
}

bool WaitHub::drop_idle(Table& t) {
  for (const auto& [fd, c] : conns_) {
    if (c.table == &t && !c.waiting) {
      drop(fd);
      return true;
    }
  }
  return false;
}

void WaitHub::drop(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  if (it->second.waiting) it->second.table->waiting.fetch_sub(1, std::memory_order_relaxed);
  --it->second.table->connections;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  ::close(fd);
  conns_.erase(it);
}

}  // namespace kvs::daemon
