// Asking kvsd's socket for a table's descriptors (docs/protocol.md, OPEN):
// for a reader that cannot open the segment by name, in a container with
// its own /dev/shm or a user namespace. What is handed over is trusted as
// the socket's peer: the segment must belong to the peer's user (as this
// process sees both: in a user namespace that does not map kvsd's uid, both
// are the overflow uid) and be writable by nobody else.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "base/sys.hpp"
#include "protocol/frame.hpp"
#include "src/reader/state.hpp"

namespace kvs::reader {
namespace {

// How long kvsd may take to answer: it answers OPEN at once, so this only
// bounds a stuck kvsd.
constexpr int kTimeoutSeconds = 5;
// The longest reply: an ERROR with the longest message.
constexpr uint32_t kMaxReply = 64 + protocol::kMaxErrorMessage;

Error connect_error(const std::string& socket, int err) {
  const std::string base = "kvsd's socket " + socket + ": " + std::strerror(err);
  if (err == ENOENT || err == ECONNREFUSED) {
    return Error{Errc::kNoTable, base + " (is kvsd running, and the socket mounted here?)"};
  }
  if (err == EACCES || err == EPERM) {
    return Error{Errc::kPermission, base + "; join the socket's group (kvsd's socket_group)"};
  }
  return Error{Errc::kSystem, base};
}

Result<int> connect_socket(const std::string& socket) {
  sockaddr_un addr{};
  if (socket.empty() || socket.size() >= sizeof addr.sun_path) {
    return make_error(Errc::kInvalidArgument, "socket path '" + socket + "' is empty or too long");
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket.c_str(), socket.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return sys_error("socket", errno);
  const timeval tv{kTimeoutSeconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    ::close(fd);
    return connect_error(socket, err);
  }
  return fd;
}

// Takes the descriptors of every SCM_RIGHTS message of `msg` into `fds`.
void collect_fds(msghdr& msg, std::vector<int>& fds) {
  for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    const size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
      fds.push_back(fd);
    }
  }
}

// Reads one frame from `fd`, with the descriptors that came with it.
Result<void> read_reply(int fd, const std::string& socket, std::string& buf, std::vector<int>& fds,
                        protocol::Header* h, std::string_view* body) {
  char chunk[4096];
  alignas(cmsghdr) char control[CMSG_SPACE(8 * sizeof(int))];
  for (;;) {
    std::string why;
    const auto s = protocol::split(buf, kMaxReply, h, body, &why);
    if (s == protocol::Split::kFrame) return {};
    if (s == protocol::Split::kBad) return make_error(Errc::kProtocol, socket + ": " + why);
    iovec iov{chunk, sizeof chunk};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return make_error(n == 0 ? Errc::kNoTable : Errc::kSystem,
                        "kvsd's socket " + socket + ": " +
                            (n == 0 ? std::string("closed before it answered")
                                    : std::string(std::strerror(errno))));
    }
    collect_fds(msg, fds);
    if (msg.msg_flags & MSG_CTRUNC) {
      return make_error(Errc::kSystem, "kvsd's socket " + socket +
                                           ": descriptors kvsd sent were dropped (no descriptor "
                                           "left: raise RLIMIT_NOFILE)");
    }
    buf.append(chunk, static_cast<size_t>(n));
  }
}

// Checks kvsd's reply and puts the descriptors that came in order of the
// bits into their places in `out`.
Result<void> read_open_ok(const std::string& socket, const protocol::Header& h,
                          std::string_view body, uid_t peer, HandedFds* out) {
  if (h.type == static_cast<uint8_t>(protocol::Type::kError)) {
    auto e = protocol::decode_error(body);
    if (!e) return make_error(Errc::kProtocol, socket + ": " + e.error().message);
    return make_error(static_cast<Errc>(e->code),
                      "kvsd at " + socket + ": " + std::string(e->message));
  }
  if (h.type != static_cast<uint8_t>(protocol::Type::kOpenOk)) {
    return make_error(Errc::kProtocol,
                      socket + " answered OPEN with " + protocol::type_name(h.type));
  }
  auto ok = protocol::decode_open_ok(body);
  if (!ok) return make_error(Errc::kProtocol, socket + ": " + ok.error().message);
  std::array<int, 3> got = out->fds;
  out->fds = {-1, -1, -1};
  size_t next = 0;
  for (size_t i = 0; i < 3; ++i) {
    if (ok->sent & (1u << i)) out->fds[i] = next < 3 ? std::exchange(got[next++], -1) : -1;
  }
  for (int f : got) {
    if (f >= 0) ::close(f);
  }
  for (size_t i = 0; i < 3; ++i) {
    if ((ok->sent & (1u << i)) && out->fds[i] < 0) {
      return make_error(Errc::kProtocol, socket + " named descriptors it did not send");
    }
  }
  out->incarnation = ok->incarnation;
  out->peer = peer;
  return {};
}

}  // namespace

HandedFds::~HandedFds() {
  for (int& fd : fds) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
}

int HandedFds::take(size_t i) { return std::exchange(fds[i], -1); }

Result<void> ask_kvsd(const std::string& socket, const std::string& table, uint8_t want,
                      uint64_t incarnation, HandedFds* out) {
  auto conn = connect_socket(socket);
  if (!conn) return std::move(conn).error();
  const Fd fd(*conn);
  ucred peer{};
  socklen_t len = sizeof peer;
  if (::getsockopt(fd.fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0) {
    return sys_error("SO_PEERCRED of " + socket, errno);
  }
  std::string frame;
  protocol::encode_open(frame, 1, protocol::Open{table, want, incarnation});
  if (::send(fd.fd, frame.data(), frame.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(frame.size())) {
    return connect_error(socket, errno);
  }
  std::string buf;
  std::vector<int> fds;
  protocol::Header h;
  std::string_view body;
  auto got = read_reply(fd.fd, socket, buf, fds, &h, &body);
  // Whatever came is this process's to close, unless it is taken below.
  size_t next = 0;
  for (int f : fds) {
    if (next < out->fds.size()) {
      out->fds[next++] = f;
    } else {
      ::close(f);
    }
  }
  if (!got) return std::move(got).error();
  return read_open_ok(socket, h, body, peer.uid, out);
}

}  // namespace kvs::reader
