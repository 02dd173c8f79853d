// The server's connections: the listening Unix socket, accepting (peer
// credentials, allowed uids and gids, max_connections), reading and
// framing (the HELLO handshake, frames up to max_frame_bytes), writing
// replies, and the flow control that bounds kvsd's memory: the budget of
// unfinished frames (max_unfinished_frame_bytes), unsent replies
// (max_unsent_reply_bytes), and the HELLO and frame timeouts.
//
// Owns: the listening socket and every Conn (their fds, buffers, epoll
// interest). May not touch: requests or the producer. A complete frame after
// the handshake goes to the Delegate (Requests), which answers by appending
// to Conn::out and calling mark_dirty(), and keeps Conn::pending.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "kvs/result.hpp"
#include "server/counters.hpp"
#include "server/peer_access.hpp"
#include "server/request.hpp"

namespace kvs::daemon::server {

// The listening socket for cfg.socket_path (listen_socket.cpp). Errors:
// kInvalidArgument, kSystem, kBusy (another process serves the path).
Result<int> open_listening_socket(const config::Config& cfg);

class Connections {
 public:
  struct Delegate {
    virtual ~Delegate() = default;
    // A complete frame of a connection past its handshake.
    virtual void frame(Conn& c, const proto::Header& h, std::string_view body) = 0;
    // The frames of one read were handled; their bytes change after this.
    virtual void frames_done() = 0;
    // While true no connection is read (the producer's queue is full).
    virtual bool paused() const = 0;
  };

  // `stopping`: set by another thread when the server stops; from then on
  // no connection is read.
  Connections(const config::Config& cfg, const PeerAccess& access, Delegate& d,
              uint32_t max_frame_bytes, const std::atomic<bool>& stopping);
  ~Connections();  // closes every connection and the socket
  Connections(const Connections&) = delete;
  Connections& operator=(const Connections&) = delete;

  // Creates the socket (mode and group from the config) and listens.
  // Errors: kInvalidArgument, kSystem, kBusy (another process serves it).
  Result<void> open_socket();
  int listen_fd() const { return listen_fd_; }
  // Connections are added to `epoll_fd` with their id as data (ids start
  // at `first_id`, below which the caller tags its own fds).
  void use_epoll(int epoll_fd, uint64_t first_id) {
    epoll_fd_ = epoll_fd;
    next_id_ = first_id;
  }
  void set_now(clock::time_point now) { now_ = now; }

  void accept_all();
  // An epoll event of connection `id` (ignored if it is gone).
  void on_event(uint64_t id, uint32_t events);
  // Once a loop round: timeouts, then the connections marked dirty (their
  // input resumes, their replies are sent), then the budget's waiters.
  void serve();
  // The connection `id`, or null if it is gone (its client left).
  Conn* find(uint64_t id);
  void mark_dirty(Conn& c);
  // The reply appended to c.out next carries `fds` (SCM_RIGHTS); the
  // connection owns them from now on (Handover bounds how many).
  void attach(Conn& c, std::vector<int> fds);
  void mark_all_dirty();
  void reply_error(Conn& c, uint64_t id, Errc code, const std::string& message);
  // Counts a malformed request and answers it with kProtocol.
  void protocol_error(Conn& c, uint64_t id, const std::string& why);
  uint32_t max_frame_bytes() const { return max_frame_bytes_; }
  bool empty() const { return conns_.empty(); }

  // At stop: no new connections, and epoll interest without reading.
  void stop_reading();
  // The last replies, each connection waited for briefly.
  void flush_all_blocking();

  // The "server" object's connection fields, in the order of
  // docs/protocol.md: the counts before "writes_acked", then the rest.
  std::string stats_counts_json() const;
  // Its counters into c (counters.hpp).
  void add_counters(Counters& c) const;
  std::string stats_flow_json() const;

 private:
  bool may_read(const Conn& c) const;
  // Brings unsent_total_ up to date with c's replies.
  void count_unsent(Conn& c);
  uint64_t unsent_with(const Conn& c) const;
  void read_from(Conn& c);
  void process_input(Conn& c);
  bool handshake(Conn& c, const proto::Header& h, std::string_view body);
  void flush(Conn& c);
  // Sends c.out from out_off, with the descriptors attached there.
  ssize_t send_some(Conn& c);
  void update_interest(Conn& c);
  void close_conn(uint64_t id);
  // Why a new connection is refused ("" if it is not), and its code.
  std::string refusal(const Conn& c, Errc* code) const;
  void account(Conn& c);
  size_t read_room(Conn& c);
  void release_input(Conn& c);
  void wake_budget_waiters();
  void check_timeouts();
  void give_back_memory();

  const config::Config& cfg_;
  const PeerAccess& access_;
  Delegate& delegate_;
  const uint32_t max_frame_bytes_;
  int listen_fd_ = -1, epoll_fd_ = -1;
  uint64_t next_id_ = 1;
  const std::atomic<bool>& stopping_;
  clock::time_point now_{};
  std::unordered_map<uint64_t, Conn> conns_;
  std::vector<uint64_t> dirty_;  // connections with replies to send or input to resume
  std::vector<uint64_t> todo_;   // dirty, taken by serve()
  std::unique_ptr<char[]> read_buf_;
  // Input buffered beyond each connection's free allowance, across all of
  // them, and the connections waiting for some of it.
  uint64_t budget_used_ = 0;
  bool budget_freed_ = false;  // since the waiters last tried
  std::vector<uint64_t> budget_waiters_;
  // Replies written but not yet sent, across all connections: clients that
  // do not read their replies are not read either once it reaches
  // max_unsent_reply_bytes.
  uint64_t unsent_total_ = 0;
  clock::time_point next_check_{};
  bool trim_due_ = false;  // large buffers were freed: give the memory back
  clock::time_point next_trim_{};
  // Counters for STATS, and the rate limits of the log lines about
  // refusals and closes (a client retrying in a loop would fill the
  // journal).
  uint64_t n_frames_ = 0, n_refused_ = 0, n_protocol_errors_ = 0, n_timed_out_ = 0;
  clock::time_point next_refusal_log_{}, next_close_log_{};
  uint64_t refusals_not_logged_ = 0, closes_not_logged_ = 0;
};

}  // namespace kvs::daemon::server
