// A process's link to kvsd's wait socket for one table
// (protocol/wait_socket.hpp): it counts this process's waiting threads and
// open watches, and tells kvsd when the count leaves or reaches zero. While
// kvsd has not answered (no kvsd, an older kvsd, a full backlog), a waiter
// polls instead of sleeping long: waiting never depends on the link.
//
// The peer must be the table's owner (SO_PEERCRED): a process of the
// readers' group cannot pose as kvsd. A forked child closes the parent's
// connections (pthread_atfork), so that a parent's death is seen by kvsd
// even while its children live.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

namespace kvs {

class WaitLink {
 public:
  WaitLink(std::string socket_path, uid_t owner);
  // A link whose connections `connect` makes (a connected, non-blocking
  // descriptor whose peer it checked, or -1): kvsd hands them to readers
  // of a table it handed over.
  explicit WaitLink(std::function<int()> connect);
  ~WaitLink();
  WaitLink(const WaitLink&) = delete;
  WaitLink& operator=(const WaitLink&) = delete;

  // The caller (a waiting thread, or an open watch) waits from now on.
  // True if kvsd counts this process already (it wakes the sleepers after
  // every batch); else kvsd's answer is read by a later counted().
  bool enter(bool watch = false);
  // The caller no longer waits.
  void leave(bool watch = false);
  // For a waiter that woke: true if kvsd still counts this process. Reads
  // a late answer, and reconnects once kvsd restarted (its new socket).
  bool counted();

  static void before_fork();
  static void after_fork_in_parent();
  static void after_fork_in_child();

 private:
  // Under mu_: connects if needed and sends kWaiting.
  void announce_locked();
  // Under mu_: reads what kvsd sent without blocking; false if the
  // connection closed (kvsd stopped).
  bool drain_locked();
  void close_locked();

  const std::function<int()> connect_;
  std::mutex mu_;
  int fd_ = -1;
  uint32_t waiting_ = 0;     // threads waiting and open watches
  uint32_t watches_ = 0;     // of which open watches (a forked child keeps these)
  bool announced_ = false;   // kWaiting sent on fd_, kDone not since
  uint32_t unanswered_ = 0;  // announcements on fd_ kvsd has not answered yet
  bool counted_ = false;     // kvsd answered the announcement that stands
  std::chrono::steady_clock::time_point next_try_{};  // after a failed connect
  std::chrono::steady_clock::time_point connected_at_{};
};

}  // namespace kvs
