// The small system helpers every part of kvs uses (libkvs, the table writer,
// kvsd): a failed call as an Error, a file descriptor closed on scope exit,
// and the monotonic clock in nanoseconds. Header-only, so that each library
// takes them without another link dependency.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>

#include "kvs/result.hpp"

namespace kvs {

// `what` failed with errno `err`, as a system error.
inline Error sys_error(const std::string& what, int err) {
  return Error{Errc::kSystem, what + ": " + std::strerror(err)};
}

// The same, but EACCES and EPERM are permission errors: for paths a user
// may be refused (a registry directory, a socket).
inline Error access_error(const std::string& what, int err) {
  return Error{err == EACCES || err == EPERM ? Errc::kPermission : Errc::kSystem,
               what + ": " + std::strerror(err)};
}

// A file descriptor closed on scope exit; -1 holds none.
struct Fd {
  int fd = -1;

  explicit Fd(int f = -1) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// The monotonic clock, in nanoseconds since an arbitrary start.
inline int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace kvs
