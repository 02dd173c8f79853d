// OPEN: a table's descriptors for a reader (see handover.hpp).
#include "server/handover.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "base/sys.hpp"
#include "format/layout.hpp"
#include "src/registry.hpp"
#include "src/shm.hpp"
#include "wait_hub.hpp"

namespace kvs::daemon::server {
namespace {

// The incarnation of the segment open at `fd` (kvsd's own file).
Result<uint64_t> incarnation_of(int fd, const std::string& path) {
  void* p = ::mmap(nullptr, sizeof(format::TableHeader), PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return sys_error("map " + path, errno);
  const uint64_t inc = static_cast<const format::TableHeader*>(p)->incarnation;
  ::munmap(p, sizeof(format::TableHeader));
  return inc;
}

// One end of a new pair for the wait hub, the other for the reader; -1 if
// the table has no wait socket (the reader's waits poll).
int wait_link(WaitHub* hub, const std::string& table, uid_t uid) {
  int sv[2];
  if (hub == nullptr || ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -1;
  if (!hub->adopt(table, sv[0], uid)) {
    ::close(sv[1]);
    return -1;
  }
  return sv[1];
}

}  // namespace

void Handover::open(Conn& c, uint64_t id, const Table& t, const proto::Open& o) {
  if (!c.read_refusal.empty()) return conns_.reply_error(c, id, Errc::kPermission, c.read_refusal);
  if (c.handed >= kMaxPerConnection) {
    return conns_.reply_error(c, id, Errc::kBusy,
                              "a connection is handed at most " +
                                  std::to_string(kMaxPerConnection) +
                                  " sets of descriptors; ask on a new connection");
  }
  auto seg = shm::segment_in(cfg_.shm_dir, cfg_.shm_prefix, t.name);
  if (!seg) return conns_.reply_error(c, id, seg.error().code, seg.error().message);
  const std::string path = shm::path_of(*seg);
  Fd segment(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (segment.fd < 0) {
    const int err = errno;
    return conns_.reply_error(c, id, err == ENOENT ? Errc::kNoTable : Errc::kSystem,
                              "open " + path + ": " + std::strerror(err));
  }
  auto incarnation = incarnation_of(segment.fd, path);
  if (!incarnation) return conns_.reply_error(c, id, Errc::kSystem, incarnation.error().message);
  proto::OpenOk ok{0, *incarnation};
  std::vector<int> fds;
  if (o.want & proto::kOpenSegment) {
    fds.push_back(segment.fd);
    segment.fd = -1;
    ok.sent |= proto::kOpenSegment;
  }
  if (o.want & proto::kOpenReaderFile) {
    if (o.incarnation != 0) ok.incarnation = o.incarnation;
    auto f = registry::create_reader_file(registry::dir_path(*seg), ok.incarnation, c.pid);
    if (!f) {
      for (int fd : fds) ::close(fd);
      return conns_.reply_error(c, id, f.error().code, f.error().message);
    }
    fds.push_back(*f);
    ok.sent |= proto::kOpenReaderFile;
  }
  if (o.want & proto::kOpenWaitLink) {
    if (const int fd = wait_link(hub_, t.name, c.uid); fd >= 0) {
      fds.push_back(fd);
      ok.sent |= proto::kOpenWaitLink;
    }
  }
  ++handed_;
  ++c.handed;
  conns_.attach(c, std::move(fds));
  proto::encode_open_ok(c.out, id, ok);
  conns_.mark_dirty(c);
}

}  // namespace kvs::daemon::server
