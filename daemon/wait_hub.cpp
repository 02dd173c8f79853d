#include "wait_hub.hpp"

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

Result<const std::atomic<uint32_t>*> WaitHub::listen(const std::string& table,
                                                     const std::string& registry_dir, mode_t mode,
                                                     gid_t group, uint32_t max_connections) {
  auto t = std::make_unique<Table>();
  t->name = table;
  t->path = wait_socket::path(registry_dir);
  t->max_connections = max_connections;
  sockaddr_un addr{};
  if (t->path.size() >= sizeof addr.sun_path) {
    return make_error(Errc::kInvalidArgument, t->path + " is longer than a socket path may be (" +
                                                  std::to_string(sizeof addr.sun_path - 1) +
                                                  " bytes)");
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, t->path.c_str(), t->path.size() + 1);
  // The registry directory is sticky and ours: only we (or a previous
  // kvsd) can have left something under this name.
  ::unlink(t->path.c_str());
  t->fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (t->fd < 0) return sys_error("socket for " + t->path);
  if (::bind(t->fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
      ::chmod(t->path.c_str(), mode & 0666) != 0 ||
      (group != static_cast<gid_t>(-1) &&
       ::chown(t->path.c_str(), static_cast<uid_t>(-1), group) != 0) ||
      ::listen(t->fd, 128) != 0) {
    auto e = sys_error(t->path);
    ::close(t->fd);
    ::unlink(t->path.c_str());
    return e;
  }
  tables_.push_back(std::move(t));
  return &tables_.back()->waiting;
}

Result<void> WaitHub::start() {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
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
  epoll_fd_ = stop_fd_ = -1;
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
    const int fd = ::accept4(t.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;  // EAGAIN, or out of descriptors: the reader polls
    if (t.connections >= t.max_connections) {
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
  for (ssize_t i = 0; i < n; ++i) {
    if (buf[i] == wait_socket::kWaiting) {
      if (!c.waiting) {
        // seq_cst: pairs with the apply thread's load after it moved the
        // futex word (TableWriter::publish_batch).
        c.table->waiting.fetch_add(1, std::memory_order_seq_cst);
        c.waiting = true;
      }
      const char answer = wait_socket::kCounted;
      // A peer that does not read its answers is not served further.
      if (::send(fd, &answer, 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1) return drop(fd);
    } else if (buf[i] == wait_socket::kDone) {
      if (c.waiting) c.table->waiting.fetch_sub(1, std::memory_order_relaxed);
      c.waiting = false;
    } else {
      return drop(fd);
    }
  }
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
