// kvsd's Prometheus endpoint: GET /metrics over HTTP on `metrics_listen`,
// served by civetweb (Debian's libcivetweb) on threads of its own.
//
// The endpoint is input like the write socket: it answers nothing but GET
// and HEAD of /metrics (405, 404 otherwise), bounds what a client can make
// it hold (a few worker threads, a short queue of accepted connections,
// requests of at most 16 KiB, 5 s to send one, no keep-alive), and renders
// one page at a time from what kvsd publishes (exposition.hpp), so that no
// number of scrapers slows the apply path or the write socket.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "kvs/result.hpp"
#include "metrics/board.hpp"
#include "metrics/exposition.hpp"
#include "server/server.hpp"
#include "snapshots.hpp"

struct mg_context;
struct mg_connection;

namespace kvs::daemon::metrics {

class Endpoint {
 public:
  // Listens on cfg.metrics_listen; null when it is "". `server` and
  // `snapshots` (may be null) outlive the endpoint. Errors: kSystem (the
  // address cannot be listened on: in use, not this host's), naming it.
  // `board` (may be null) is what the apply thread publishes.
  static Result<std::unique_ptr<Endpoint>> start(const config::Config& cfg, const Server& server,
                                                 const SnapshotStatus* snapshots,
                                                 const Board* board);
  ~Endpoint();  // stops the threads, closes the tables
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  // The port listened on (the one configured, or the one the system chose
  // for port 0 in tests).
  int port() const { return port_; }

 private:
  Endpoint(const config::Config& cfg, const Server& server, const SnapshotStatus* snapshots,
           const Board* board);
  static int handle(mg_connection* c, void* self);
  std::string page();

  const config::Config& cfg_;
  const Server& server_;
  const SnapshotStatus* snapshots_;
  const Board* board_;
  std::mutex mu_;  // one page at a time; guards tables_
  std::vector<TableSource> tables_;
  mg_context* ctx_ = nullptr;
  int port_ = 0;
};

}  // namespace kvs::daemon::metrics
