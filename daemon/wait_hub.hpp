// kvsd's wait sockets (protocol/wait_socket.hpp): one per table, in the
// table's reader registry, on a thread of their own. Each counts the
// processes that sleep on the table's futex word, which the apply thread
// reads after every batch (TableWriter::wake_for): it wakes the sleepers
// only while the count is above 0.
//
// Everything that arrives here is untrusted: a connection counts once, a
// byte outside the protocol (or an announcement that repeats itself) or a
// peer that does not read its answers closes the connection, connections
// per table are bounded (at the bound an idle one makes room for a new
// one), and running out of descriptors costs the new connection, not a
// spinning thread. A closed connection (its process died, in any pid
// namespace) no longer counts. One user may hold a share of the bound
// only (max_per_uid), so that processes of one user cannot push every
// other user's waiters to polling. What a hostile reader can still do is
// hold waiting connections up to that share, and move sleepers off the
// futex word (FUTEX_CMP_REQUEUE needs read access only): waiters then
// poll, and a counted one looks again every second.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kvs/result.hpp"

namespace kvs::daemon {

class WaitHub {
 public:
  WaitHub() = default;
  ~WaitHub();
  WaitHub(const WaitHub&) = delete;
  WaitHub& operator=(const WaitHub&) = delete;

  // Listens on the wait socket in `registry_dir` (mode and group as the
  // registry's files; a stale socket there is replaced). The count stays
  // valid as long as the hub. Call before start(). Errors: kSystem,
  // kInvalidArgument (the path is too long for a socket).
  // At most `max_connections` connections, `max_per_uid` of one user (0:
  // max(16, a quarter of max_connections)).
  Result<const std::atomic<uint32_t>*> listen(const std::string& table,
                                              const std::string& registry_dir, mode_t mode,
                                              gid_t group, uint32_t max_connections,
                                              uint32_t max_per_uid = 0);
  Result<void> start();
  // Serves `fd`, one end of a connected pair whose other end kvsd hands to
  // a reader of `table` of user `uid` (OPEN, server/handover.hpp), as if
  // that reader had connected. Thread-safe. False (fd closed) when the
  // hub does not serve the table or is not running.
  bool adopt(const std::string& table, int fd, uid_t uid);
  // Closes every connection and removes the sockets.
  void stop();

 private:
  struct Table {
    std::string name, path;
    int fd = -1;
    size_t index = 0;  // in tables_
    uint32_t max_connections = 0, connections = 0;
    uint32_t max_per_uid = 0;
    std::unordered_map<uid_t, uint32_t> per_uid;  // connections of each user
    std::atomic<uint32_t> waiting{0};
    // Connections that do not wait, by when they stopped (or arrived).
    std::set<std::pair<uint64_t, int>> idle;
  };
  struct Conn {
    Table* table = nullptr;
    bool waiting = false;
    uint64_t idle_seq = 0;  // its key in table->idle while it does not wait
    uid_t uid = 0;          // the peer's (SO_PEERCRED)
  };
  void run();
  void accept_all(Table& t);
  // Serves connection fd of `uid` on `t`, if admit() lets it; else closes it.
  void add_conn(Table& t, int fd, uid_t uid, uint64_t round);
  void take_adopted();
  void serve(int fd);
  void drop(int fd);
  // Closes the connection of `t` idle longest (of user `uid`, if given),
  // if it became idle before `before` (a sequence number); false if none.
  bool drop_idle(Table& t, uint64_t before, std::optional<uid_t> uid = std::nullopt);
  // Whether a new connection of `uid` may be kept (making room if needed).
  bool admit(Table& t, uid_t uid, uint64_t round);
  // Out of descriptors and spare: `t`'s listener is not watched for a while.
  void rest(Table& t);
  void wake_listeners();

  std::vector<std::unique_ptr<Table>> tables_;
  std::unordered_map<int, Conn> conns_;
  uint64_t next_seq_ = 1;
  std::vector<Table*> resting_;
  std::chrono::steady_clock::time_point rest_until_{};
  int epoll_fd_ = -1;
  int stop_fd_ = -1;   // an eventfd: stop() wakes the thread
  int spare_fd_ = -1;  // given up to accept (and close) a connection when out of descriptors
  int adopt_fd_ = -1;  // an eventfd: adopt() wakes the thread
  struct Adopted {
    Table* table;
    int fd;
    uid_t uid;
  };
  std::mutex adopt_mu_;
  std::vector<Adopted> adopted_;  // under adopt_mu_
  std::atomic<bool> running_{false};
  std::thread thread_;
};

}  // namespace kvs::daemon
