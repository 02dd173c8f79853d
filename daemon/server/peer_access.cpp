// Who may write and who may be handed a table: see peer_access.hpp.
#include "server/peer_access.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/sys.hpp"

namespace kvs::daemon::server {
namespace {

bool listed(const std::vector<int64_t>& list, int64_t id) {
  return std::find(list.begin(), list.end(), id) != list.end();
}

bool in_group(const Peer& p, gid_t g) {
  return p.gid == g || std::find(p.groups.begin(), p.groups.end(), g) != p.groups.end();
}

std::string who(const Peer& p) {
  return "peer uid " + std::to_string(p.uid) + " gid " + std::to_string(p.gid) + " (pid " +
         std::to_string(p.pid) + ")";
}

}  // namespace

Result<Peer> peer_of(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return sys_error("SO_PEERCRED", errno);
  }
  Peer p{cred.uid, cred.gid, cred.pid, {}};
  // Supplementary groups: a reader in the segments' group by a secondary
  // group reads on the host, so it is handed the table too.
  p.groups.resize(64);
  for (;;) {
    len = static_cast<socklen_t>(p.groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, p.groups.data(), &len) == 0) break;
    if (errno != ERANGE || p.groups.size() >= 65536) return sys_error("SO_PEERGROUPS", errno);
    p.groups.resize(len / sizeof(gid_t) + 1);
  }
  p.groups.resize(len / sizeof(gid_t));
  return p;
}

Result<PeerAccess> PeerAccess::from(const config::Config& cfg) {
  auto gid = config::resolve_group(cfg.shm_group, "shm_group");
  if (!gid) return std::move(gid).error();
  PeerAccess a;
  a.cfg_ = &cfg;
  a.segment_gid_ = *gid == static_cast<gid_t>(-1) ? ::getegid() : *gid;
  return a;
}

std::string PeerAccess::write_refusal(const Peer& p) const {
  const auto& c = *cfg_;
  if ((c.allowed_uids.empty() && c.allowed_gids.empty()) || listed(c.allowed_uids, p.uid) ||
      listed(c.allowed_gids, p.gid)) {
    return "";
  }
  return who(p) + " may not write: not in kvsd.allowed_uids or kvsd.allowed_gids";
}

std::string PeerAccess::read_refusal(const Peer& p) const {
  const auto& c = *cfg_;
  const bool as_on_host = p.uid == 0 || p.uid == ::geteuid() || (c.data_mode & S_IROTH) ||
                          ((c.data_mode & S_IRGRP) && in_group(p, segment_gid_));
  if (as_on_host || listed(c.reader_uids, p.uid)) return "";
  if (std::any_of(c.reader_gids.begin(), c.reader_gids.end(),
                  [&](int64_t g) { return in_group(p, static_cast<gid_t>(g)); })) {
    return "";
  }
  return who(p) + " may not read the tables: not in their group (gid " +
         std::to_string(segment_gid_) + "), kvsd.reader_uids or kvsd.reader_gids";
}

}  // namespace kvs::daemon::server
