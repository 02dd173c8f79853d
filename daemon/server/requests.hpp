// The server's requests: what each frame past the handshake asks (PING,
// STATS, PUT, ERASE, BATCH, WAIT), the pool of requests in flight, their
// deadlines, VISIBLE writes and WAITs that wait for the table to apply a
// token, and the answers.
//
// Owns: the request pool and its deadline queues, the tokens waited for,
// the write counters. May not touch: sockets or buffers beyond appending
// an answer to Conn::out (through Connections), or librdkafka beyond
// Producer's calls. A request's slot is reused only once it is answered
// and librdkafka holds no reference to it (outstanding and parked are 0).
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "server/connections.hpp"
#include "server/handover.hpp"
#include "server/producer.hpp"
#include "server/request.hpp"
#include "snapshots.hpp"

namespace kvs::daemon::server {

class Requests final : public Connections::Delegate, public Producer::Sink {
 public:
  // `snapshots` (may be null): the tables' last snapshots, for stats.
  // `waits` (may be null): the tables' wait hub, for readers handed a table.
  Requests(const config::Config& cfg, std::vector<std::unique_ptr<Table>>& tables,
           Connections& conns, Producer& producer, const SnapshotStatus* snapshots, WaitHub* waits)
      : cfg_(cfg),
        tables_(tables),
        conns_(conns),
        producer_(producer),
        snapshots_(snapshots),
        handover_(cfg, conns, waits) {}

  // Connections::Delegate
  void frame(Conn& c, const proto::Header& h, std::string_view body) override;
  void frames_done() override { producer_.send_staged(); }
  bool paused() const override { return producer_.has_parked(); }

  // Producer::Sink
  void delivered(const rd_kafka_message_t* m) override;
  void refused(Request& r, uint32_t index, Errc code, const std::string& why) override {
    op_done(r, index, code, why);
  }
  void release(Request& r) override;
  Request* find(ReqRef ref) override {
    Request& r = slots_[ref.slot];
    return r.live && r.seq == ref.seq ? &r : nullptr;
  }

  void set_now(clock::time_point now) { now_ = now; }
  // The earliest deadline of an unanswered request.
  std::optional<clock::time_point> next_deadline();
  // Answers the requests whose deadline passed.
  void expire(clock::time_point now);
  // Answers the VISIBLE writes and WAITs whose tokens the tables applied.
  void check_visible();
  // Tokens waited for; the applier reads it (Server::applied).
  const std::atomic<size_t>& visible_count() const { return visible_count_; }
  size_t unanswered() const { return unanswered_; }
  // At stop: every request still open is answered with an error.
  void answer_all_at_stop();
  // Its counters and the producer's into c (counters.hpp).
  void add_counters(Counters& c) const;
  // Write failures by code and latencies (any thread may read them).
  const WriteStats& write_stats() const { return write_stats_; }

 private:
  using Deadline = std::pair<clock::time_point, ReqRef>;
  static bool later(const Deadline& a, const Deadline& b) { return a.first > b.first; }
  bool pending_deadline(const Deadline& d) const {
    return unanswered_seq_[d.second.slot] == d.second.seq;
  }

  void write(Conn& c, const proto::Header& h, std::string_view body);
  void batch(Conn& c, const proto::Header& h, std::string_view body);
  void wait(Conn& c, const proto::Header& h, std::string_view body);
  void open(Conn& c, const proto::Header& h, std::string_view body);
  Table* table_or_error(Conn& c, uint64_t id, std::string_view name);
  std::string check_sizes(const Table& t, std::string_view key,
                          std::optional<std::string_view> value) const;
  // Why a VISIBLE write of `key` can never be answered here (it lands in a
  // partition beyond max_partitions), or "".
  std::string check_visible(const Table& t, const proto::Header& h, std::string_view key) const;
  Request& new_request(Conn& c, const proto::Header& h, proto::Type reply, Table* t,
                       uint32_t timeout_ms, size_t ops);
  void add_deadline(const Request& r);
  void compact_deadlines();
  void op_done(Request& r, uint32_t index, Errc code, const std::string& message);
  bool is_applied(const Table& t, proto::Token tok, std::string* why);
  void time_out(Request& r);
  void answer(Request& r);
  void count_error(int code);
  void observe_latency(const Request& r);
  std::string stats_json();

  const config::Config& cfg_;
  std::vector<std::unique_ptr<Table>>& tables_;
  Connections& conns_;
  Producer& producer_;
  const SnapshotStatus* snapshots_;
  Handover handover_;
  clock::time_point now_{};
  uint64_t next_seq_ = 1;
  std::deque<Request> slots_;  // the pool: stable addresses, in chunks
  std::vector<uint32_t> free_slots_;
  // Per slot: the seq of its request while that is unanswered, else 0. The
  // deadline queues check it instead of loading the request's cache lines.
  std::vector<uint64_t> unanswered_seq_;
  size_t unanswered_ = 0;  // live requests without an answer
  // Deadlines of unanswered requests. Most use write_timeout_ms, so theirs
  // come in order: a FIFO; other timeouts go to a heap. Entries of answered
  // requests are dropped lazily, and both are compacted once they hold more
  // than twice the unanswered requests: memory follows the requests in
  // flight, not the request rate times the timeout.
  std::deque<Deadline> fifo_deadlines_;
  std::vector<Deadline> heap_deadlines_;  // a min-heap (std::push_heap with `later`)
  // A token to be applied: VISIBLE writes and WAIT requests.
  struct Visible {
    ReqRef req;
    uint32_t index;
    Table* table;
    proto::Token token;
  };
  std::vector<Visible> visible_;
  std::atomic<size_t> visible_count_{0};  // visible_.size()
  uint64_t n_acked_ = 0, n_write_errors_ = 0;
  WriteStats write_stats_;
};

}  // namespace kvs::daemon::server
