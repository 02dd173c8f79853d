// Who may do what on kvsd's socket, from the peer's credentials
// (SO_PEERCRED, SO_PEERGROUPS): write (allowed_uids, allowed_gids), and be
// handed a table's descriptors (docs/protocol.md, OPEN). Reading through
// the socket is allowed to exactly those who could open the segments on
// the host (root, kvsd's user, the segments' group or everyone as
// data_mode says), and to reader_uids / reader_gids, for readers whose
// users exist only in their containers: handing over never widens who
// reads.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "config/config.hpp"
#include "kvs/result.hpp"

namespace kvs::daemon::server {

struct Peer {
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  std::vector<gid_t> groups;  // supplementary groups (SO_PEERGROUPS)
};

// The credentials of the process at the other end of `fd`. Errors: kSystem.
Result<Peer> peer_of(int fd);

class PeerAccess {
 public:
  // Resolves the segments' group (shm_group). Errors: kInvalidArgument.
  static Result<PeerAccess> from(const config::Config& cfg);
  // Why `p` may not write ("" if it may).
  std::string write_refusal(const Peer& p) const;
  // Why `p` may not be handed a table's descriptors ("" if it may).
  std::string read_refusal(const Peer& p) const;

 private:
  const config::Config* cfg_ = nullptr;
  gid_t segment_gid_ = 0;
};

}  // namespace kvs::daemon::server
