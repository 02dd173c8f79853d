// A bare HTTP/1.x client over TCP on loopback for tests of kvsd's metrics
// endpoint and of Prometheus's API: sends bytes as given (so that tests
// can send what no client library would), reads until the server closes.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <string>

namespace kvs::test {

struct HttpReply {
  int status = 0;  // 0: no status line (closed, or nothing within the timeout)
  std::string head, body;
};

// A TCP connection to 127.0.0.1:port, or -1 if it is not established
// within `timeout` (a server whose accept queue is full drops the SYN).
inline int tcp_connect(int port, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int err = 0;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    pollfd p{fd, POLLOUT, 0};
    socklen_t len = sizeof err;
    if (errno != EINPROGRESS || ::poll(&p, 1, static_cast<int>(timeout.count())) != 1 ||
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
      err = -1;
    }
  }
  if (err != 0) {
    ::close(fd);
    return -1;
  }
  ::fcntl(fd, F_SETFL, 0);  // blocking again
  return fd;
}

// Reads until the peer closes or `timeout` passes.
inline std::string read_all(int fd, std::chrono::milliseconds timeout) {
  std::string out;
  const auto until = std::chrono::steady_clock::now() + timeout;
  char buf[65536];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

inline HttpReply parse_reply(const std::string& raw) {
  HttpReply r;
  const size_t end = raw.find("\r\n\r\n");
  r.head = raw.substr(0, end);
  if (end != std::string::npos) r.body = raw.substr(end + 4);
  if (raw.rfind("HTTP/1.", 0) == 0 && raw.size() > 12) r.status = std::atoi(raw.c_str() + 9);
  return r;
}

// Sends `request` as is and reads the reply.
inline HttpReply http_raw(int port, const std::string& request,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const int fd = tcp_connect(port);
  if (fd < 0) return {};
  if (!request.empty()) (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  HttpReply r = parse_reply(read_all(fd, timeout));
  ::close(fd);
  return r;
}

inline HttpReply http_get(int port, const std::string& target,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  return http_raw(
      port, "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", timeout);
}

// A port nobody listens on now (the system's pick for a socket bound to 0).
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return -1;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace kvs::test
