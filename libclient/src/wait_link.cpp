#include "src/wait_link.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "protocol/wait_socket.hpp"

namespace kvs {

namespace {

// How long a process that found no kvsd listening (or whose connection
// kvsd closed at once: it serves a bounded number) waits before it tries
// again.
constexpr auto kRetryAfter = std::chrono::milliseconds(200);

// Every link, for the fork handlers. Lock order: g_links_mu, then a link's mu_.
std::mutex g_links_mu;
std::vector<WaitLink*> g_links;

int connect_to(const std::string& path, uid_t owner) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) return -1;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  ucred peer{};
  socklen_t len = sizeof peer;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 || peer.uid != owner) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_byte(int fd, char c) { return ::send(fd, &c, 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1; }

}  // namespace

WaitLink::WaitLink(std::string socket_path, uid_t owner)
    : WaitLink([path = std::move(socket_path), owner] { return connect_to(path, owner); }) {}

WaitLink::WaitLink(std::function<int()> connect) : connect_(std::move(connect)) {
  static std::once_flag handlers;
  std::call_once(handlers, [] {
    ::pthread_atfork(WaitLink::before_fork, WaitLink::after_fork_in_parent,
                     WaitLink::after_fork_in_child);
  });
  std::lock_guard lock(g_links_mu);
  g_links.push_back(this);
}

WaitLink::~WaitLink() {
  {
    std::lock_guard lock(g_links_mu);
    std::erase(g_links, this);
  }
  std::lock_guard lock(mu_);
  close_locked();
}

bool WaitLink::enter(bool watch) {
  std::lock_guard lock(mu_);
  ++waiting_;
  if (watch) ++watches_;
  // An answer that came meanwhile, or a kvsd that went away since.
  if (fd_ >= 0 && !drain_locked()) close_locked();
  if (!announced_) announce_locked();
  return counted_;
}

void WaitLink::leave(bool watch) {
  std::lock_guard lock(mu_);
  if (waiting_ == 0) return;
  if (watch && watches_ > 0) --watches_;
  if (--waiting_ > 0 || !announced_) return;
  if (!send_byte(fd_, wait_socket::kDone)) {
    close_locked();
    return;
  }
  announced_ = false;
  counted_ = false;
}

bool WaitLink::counted() {
  std::lock_guard lock(mu_);
  if (fd_ >= 0 && !drain_locked()) close_locked();
  if (waiting_ > 0 && !announced_) announce_locked();
  return counted_;
}

void WaitLink::announce_locked() {
  const auto now = std::chrono::steady_clock::now();
  if (fd_ < 0) {
    if (now < next_try_) return;
    fd_ = connect_();
    if (fd_ < 0) {
      next_try_ = now + kRetryAfter;
      return;
    }
    connected_at_ = now;
  }
  if (!send_byte(fd_, wait_socket::kWaiting)) {
    close_locked();
    return;
  }
  // The answer is read later (counted()): a waiter never blocks on kvsd.
  announced_ = true;
  ++unanswered_;
}

bool WaitLink::drain_locked() {
  char buf[64];
  for (;;) {
    const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return false;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    // One answer per announcement, in order: the last one answers the
    // announcement that stands (if one does).
    const auto answers = static_cast<uint32_t>(std::count(buf, buf + n, wait_socket::kCounted));
    unanswered_ -= std::min(unanswered_, answers);
    counted_ = announced_ && unanswered_ == 0;
  }
}

void WaitLink::close_locked() {
  const auto now = std::chrono::steady_clock::now();
  if (fd_ >= 0 && now - connected_at_ < kRetryAfter) next_try_ = now + kRetryAfter;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  announced_ = false;
  counted_ = false;
  unanswered_ = 0;
}

void WaitLink::before_fork() {
  g_links_mu.lock();
  for (WaitLink* l : g_links) l->mu_.lock();
}

void WaitLink::after_fork_in_parent() {
  for (WaitLink* l : g_links) l->mu_.unlock();
  g_links_mu.unlock();
}

void WaitLink::after_fork_in_child() {
  for (WaitLink* l : g_links) {
    // The connection is the parent's: closing our copy leaves it open for
    // the parent; the child announces its own waits on a connection of its own.
    if (l->fd_ >= 0) ::close(l->fd_);
    l->fd_ = -1;
    l->announced_ = false;
    l->counted_ = false;
    l->unanswered_ = 0;
    l->next_try_ = {};
    // The parent's waiting threads are not in the child; its open watches are.
    l->waiting_ = l->watches_;
    l->mu_.unlock();
  }
  g_links_mu.unlock();
}

}  // namespace kvs
