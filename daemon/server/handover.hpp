// Handing a table to a reader that cannot open its segment by name (a
// container with its own /dev/shm, a user namespace): OPEN of
// docs/protocol.md. kvsd opens the segment that carries the table's name
// read-only, makes a reader file for the peer in the registry (locked, so
// that the roster counts it while the reader holds it), and connects the
// reader to the table's wait hub, and sends these descriptors with the
// reply (SCM_RIGHTS). The peer was checked when it connected
// (Conn::read_refusal, server/peer_access.hpp).
#pragma once

#include <cstdint>

#include "config/config.hpp"
#include "server/connections.hpp"
#include "server/request.hpp"

namespace kvs::daemon {
class WaitHub;
}

namespace kvs::daemon::server {

class Handover {
 public:
  // `hub` (may be null): the tables' wait sockets.
  Handover(const config::Config& cfg, Connections& conns, WaitHub* hub)
      : cfg_(cfg), conns_(conns), hub_(hub) {}

  // A connection is handed at most this many sets of descriptors (a
  // reader asks on a connection of its own each time): with
  // max_connections and hello_timeout_ms, this bounds the reader files
  // and wait connections peers that never use them can make kvsd create.
  static constexpr uint32_t kMaxPerConnection = 8;

  // Answers OPEN `o` of c for the served table `t`.
  void open(Conn& c, uint64_t id, const Table& t, const proto::Open& o);

  uint64_t handed() const { return handed_; }

 private:
  const config::Config& cfg_;
  Connections& conns_;
  WaitHub* hub_;
  uint64_t handed_ = 0;
};

}  // namespace kvs::daemon::server
