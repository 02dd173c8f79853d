// The server's listening Unix socket: created with the configured mode and
// group before it listens, after checking that no other process serves
// the path (a socket file a dead kvsd left is replaced).
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "server/connections.hpp"

namespace kvs::daemon::server {
namespace {
std::string errno_text(int e) { return std::strerror(e); }
}  // namespace

Result<int> open_listening_socket(const config::Config& cfg) {
  const std::string& path = cfg.socket_path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return make_error(Errc::kInvalidArgument, "kvsd.socket_path = \"" + path + "\": must be 1.." +
                                                  std::to_string(sizeof addr.sun_path - 1) +
                                                  " bytes");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  auto gid = config::resolve_group(cfg.socket_group, "socket_group");
  if (!gid) return std::move(gid).error();

  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return make_error(Errc::kSystem, path +
                                           " exists and is not a socket; remove it or set "
                                           "kvsd.socket_path");
    }
    // A socket file left by a kvsd that died, or one that still serves it.
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool live = ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(probe);
    if (live) {
      return make_error(Errc::kBusy, "another process serves " + path +
                                         "; stop it, or give this kvsd its own socket_path");
    }
    ::unlink(path.c_str());
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(Errc::kSystem, "socket(): " + errno_text(errno));
  // Closed on every error below.
  auto fail = [fd](Unexpected e) -> Result<int> {
    ::close(fd);
    return e;
  };
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int e = errno;
    return fail(
        make_error(Errc::kSystem, "cannot create socket " + path + ": " + errno_text(e) +
                                      (e == ENOENT ? " (create its directory)" : "") +
                                      (e == EACCES ? " (no permission in its directory)" : "")));
  }
  // Before listen(): no peer can connect while the mode is still umask's.
  if (::chmod(path.c_str(), cfg.socket_mode) != 0) {
    return fail(make_error(Errc::kSystem, "chmod " + path + ": " + errno_text(errno)));
  }
  if (*gid != static_cast<gid_t>(-1) && ::chown(path.c_str(), static_cast<uid_t>(-1), *gid) != 0) {
    return fail(make_error(Errc::kSystem, "chown " + path + " to group " + cfg.socket_group + ": " +
                                              errno_text(errno)));
  }
  if (::listen(fd, 512) != 0) {
    return fail(make_error(Errc::kSystem, "listen on " + path + ": " + errno_text(errno)));
  }
  return fd;
}

}  // namespace kvs::daemon::server
