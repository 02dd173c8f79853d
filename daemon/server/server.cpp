#include "server/server.hpp"

#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/container/small_vector.hpp>
#include <cerrno>
#include <cstring>
#include <deque>
#include <optional>
#include <thread>
#include <unordered_map>

#include "format/layout.hpp"
#include "kafka/properties.hpp"
#include "kafka/rdkafka_log.hpp"
#include "kvs/kvs.h"
#include "log.hpp"
#include "memory.hpp"
#include "protocol/frame.hpp"

namespace kvs::daemon {
namespace {

using clock = std::chrono::steady_clock;
namespace proto = protocol;

constexpr size_t kReadChunk = 64 * 1024;
constexpr size_t kMaxUnsentBytes = 4 << 20;  // replies a client has not read: stop reading it
// Input buffer every connection may hold without drawing on
// max_unfinished_frame_bytes: one read, so that small requests never wait.
constexpr size_t kFreeInputBytes = kReadChunk;
constexpr auto kConnCheckInterval = std::chrono::milliseconds(250);
constexpr uint32_t kFrameOverhead = 64 * 1024;

std::string errno_text(int e) { return std::strerror(e); }

// Maps a delivery or produce error to a KVS_E* code.
Errc errc_of(rd_kafka_resp_err_t e) {
  switch (e) {
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
      return Errc::kTimeout;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
      return Errc::kTooLarge;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
      return Errc::kPermission;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
      return Errc::kQueueFull;
    default:
      return Errc::kKafka;
  }
}

struct Table {
  std::string name, topic;
  uint32_t max_key_bytes = 0, max_value_bytes = 0;
  uint32_t max_partitions = 0;
  kvs_table* reader = nullptr;  // applied offsets, for VISIBLE and WAIT
  rd_kafka_topic_t* rkt = nullptr;
};

struct Conn {
  int fd = -1;
  uint64_t id = 0;
  std::string in;  // bytes received, from in_off on not yet parsed
  size_t in_off = 0;
  std::string out;  // replies, from out_off on not yet sent
  size_t out_off = 0;
  bool hello = false;
  bool closing = false;  // close once `out` is sent
  bool eof = false;      // the peer sent everything it will send
  uint32_t pending = 0;  // requests without a reply
  uint32_t events = 0;   // epoll interest now registered
  bool dirty = false;    // in Impl::dirty
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  clock::time_point accepted{};
  clock::time_point frame_started{};  // an unfinished frame's first bytes; {}: none
  size_t charged = 0;                 // input buffer beyond kFreeInputBytes, drawn from the budget
  bool budget_wait = false;           // not read until max_unfinished_frame_bytes has room
  size_t out_counted = 0;             // unsent replies, as counted in Impl::unsent_total
};

struct Request;
// Names a request across its reuse: the pool slot and the request's sequence
// number (a slot whose request was freed holds another sequence number).
struct ReqRef {
  uint32_t slot = 0;
  uint64_t seq = 0;
};

struct MsgRef {  // a produced record's opaque: which operation of which request
  Request* req;
  uint32_t index;
};

// Requests are pooled (Impl::slots): a write allocates nothing of its own
// once the pool has warmed up.
struct Request {
  uint32_t slot = 0;  // in Impl::slots, for good
  bool live = false;  // in use; false: on the free list
  uint64_t seq = 0;   // unique per use of the slot
  uint64_t conn_id = 0;
  uint64_t id = 0;
  proto::Type reply = proto::Type::kPutOk;  // kPutOk, kEraseOk, kBatchOk or kWaitOk
  bool visible = false;
  bool answered = false;
  Table* table = nullptr;
  clock::time_point deadline;
  uint32_t timeout_ms = 0;
  uint32_t outstanding = 0;  // records produced whose delivery report is still due
  uint32_t remaining = 0;    // operations without an outcome
  uint32_t parked = 0;       // operations in Impl::parked
  // A put or erase has one operation: kept inside the request, as the pool
  // keeps the requests together, so that the hot path stays in few lines.
  boost::container::small_vector<proto::BatchResult, 1> results;
  std::string error;  // message of the first failed operation
  boost::container::small_vector<MsgRef, 1> refs;
};

// An operation waiting for producer queue space; owns its bytes.
struct Parked {
  ReqRef req;
  uint32_t index;
  std::string key;
  std::optional<std::string> value;
};

// A token to be applied: VISIBLE writes and WAIT requests.
struct Visible {
  ReqRef req;
  uint32_t index;
  Table* table;
  proto::Token token;
};

}  // namespace

struct Server::Impl {
  config::Config cfg;
  std::vector<std::unique_ptr<Table>> tables;
  uint32_t max_frame_bytes = 0;
  rd_kafka_t* rk = nullptr;
  int listen_fd = -1, epoll_fd = -1, wake_fd = -1;
  int kafka_pipe[2] = {-1, -1};  // librdkafka signals queued delivery reports here
  std::thread thread;
  std::atomic<bool> stopping{false};
  std::atomic<int64_t> drain_ms{0};
  std::atomic<size_t> visible_count{0};  // visible.size(), read by applied()

  uint64_t next_conn_id = 1, next_seq = 1;
  std::unordered_map<uint64_t, Conn> conns;
  std::deque<Request> slots;  // the request pool: stable addresses, in chunks
  std::vector<uint32_t> free_slots;
  // Per slot: the seq of its request while that is unanswered, else 0. The
  // deadline queues check it instead of loading the request's cache lines.
  std::vector<uint64_t> unanswered_seq;
  size_t unanswered = 0;  // live requests without an answer
  // Deadlines of unanswered requests. Most use write_timeout_ms, so theirs
  // come in order: a FIFO; other timeouts go to a heap. Entries of answered
  // requests are dropped lazily, and both are compacted once they hold more
  // than twice the unanswered requests: memory follows the requests in
  // flight, not the request rate times the timeout.
  using Deadline = std::pair<clock::time_point, ReqRef>;
  std::deque<Deadline> fifo_deadlines;
  std::vector<Deadline> heap_deadlines;  // a min-heap (std::push_heap with `later`)
  static bool later(const Deadline& a, const Deadline& b) { return a.first > b.first; }
  std::deque<Parked> parked;
  // Records of the frames handled since the last produce_staged(), all for
  // staged_table, handed to librdkafka in one call. Their keys and values
  // point into the connection's input buffer: produce_staged() runs before
  // process_input() returns, while that buffer is unchanged.
  std::vector<rd_kafka_message_t> staged;
  Table* staged_table = nullptr;
  std::vector<Request*> staged_failed;
  std::vector<Visible> visible;
  std::vector<uint64_t> dirty;  // connections with replies to send or input to resume
  void mark_dirty(Conn& c) {
    if (c.dirty) return;
    c.dirty = true;
    dirty.push_back(c.id);
  }
  std::vector<uint64_t> todo;  // dirty, taken by the loop
  clock::time_point now;       // the loop's clock, read once per round
  std::unique_ptr<char[]> read_buf = std::make_unique<char[]>(kReadChunk);

  // Counters for STATS.
  uint64_t n_requests = 0, n_acked = 0, n_write_errors = 0, n_refused = 0, n_protocol_errors = 0;
  // Refusals are logged at most once per kRefusalLogInterval: a client that
  // retries in a loop against max_connections would fill the journal.
  static constexpr auto kRefusalLogInterval = std::chrono::seconds(10);
  std::chrono::steady_clock::time_point next_refusal_log{};
  uint64_t refusals_not_logged = 0;
  void log_refusal(const std::string& why) {
    log_limited(why, "connection refused", next_refusal_log, refusals_not_logged);
  }
  std::chrono::steady_clock::time_point next_close_log{};
  uint64_t closes_not_logged = 0;
  static void log_limited(const std::string& why, const char* what,
                          std::chrono::steady_clock::time_point& next, uint64_t& not_logged) {
    const auto now = std::chrono::steady_clock::now();
    if (now < next) {
      ++not_logged;
      return;
    }
    if (not_logged > 0) {
      KVS_LOG_WARN("%s; %s (and %llu more since the last such line)", why.c_str(), what,
                   static_cast<unsigned long long>(not_logged));
    } else {
      KVS_LOG_WARN("%s; %s", why.c_str(), what);
    }
    not_logged = 0;
    next = now + kRefusalLogInterval;
  }
  // Input buffered beyond each connection's kFreeInputBytes, across all of
  // them, and the connections waiting for some of it.
  uint64_t budget_used = 0;
  // Replies written but not yet sent, across all connections: clients that
  // do not read their replies are not read either once it reaches
  // max_unsent_reply_bytes.
  uint64_t unsent_total = 0;
  bool budget_freed = false;  // since the waiters last tried
  std::vector<uint64_t> budget_waiters;
  clock::time_point next_conn_check{};
  bool trim_due = false;  // large buffers were freed: give the memory back
  clock::time_point next_trim{};
  uint64_t n_timed_out_conns = 0;
  uint64_t n_queue_full = 0;     // records that found the producer queue full and waited
  std::string last_kafka_error;  // from error_cb: why brokers are unreachable
  clock::time_point last_kafka_error_at;

  ~Impl();
  Result<void> open_socket();
  Result<void> create_producer(const std::vector<std::pair<std::string, std::string>>& kafka);
  void loop();
  void accept_all();
  void on_conn_event(Conn& c, uint32_t ev);
  void read_from(Conn& c);
  void process_input(Conn& c);
  // unsent_total with c's replies counted as they are now (they are counted
  // into unsent_total only when c is flushed).
  uint64_t unsent_with(const Conn& c) const {
    return unsent_total - c.out_counted + (c.out.size() - c.out_off);
  }
  bool may_read(const Conn& c) const {
    return !c.closing && !c.eof && !c.budget_wait && parked.empty() &&
           c.pending < cfg.max_pending_per_connection &&
           c.out.size() - c.out_off < kMaxUnsentBytes &&
           (c.out.size() == c.out_off || unsent_with(c) < cfg.max_unsent_reply_bytes) &&
           !stopping.load();
  }
  void handle_frame(Conn& c, const proto::Header& h, std::string_view body);
  void reply_error(Conn& c, uint64_t id, Errc code, const std::string& message);
  void send_now(Conn& c, const std::string& frame);
  void flush(Conn& c);
  void update_interest(Conn& c);
  void close_conn(uint64_t id);
  // The memory of unfinished frames (max_unfinished_frame_bytes).
  void account(Conn& c);
  size_t read_room(Conn& c);
  void release_input(Conn& c);
  void wake_budget_waiters();
  // Closes connections past hello_timeout_ms or frame_timeout_ms.
  void check_conn_timeouts();

  Table* find_table(std::string_view name);
  Request& new_request(Conn& c, const proto::Header& h, proto::Type reply, Table* t,
                       uint32_t timeout_ms, size_t ops);
  Request* find(ReqRef ref) {
    Request& r = slots[ref.slot];
    return r.live && r.seq == ref.seq ? &r : nullptr;
  }
  bool pending_deadline(const Deadline& d) const {
    return unanswered_seq[d.second.slot] == d.second.seq;
  }
  std::optional<clock::time_point> next_deadline();
  void compact_deadlines();
  void produce(Request& r, uint32_t index, std::string_view key,
               std::optional<std::string_view> value);
  void produce_staged();
  void op_done(Request& r, uint32_t index, Errc code, const std::string& message);
  void on_delivery(const rd_kafka_message_t* m);
  bool is_applied(const Table& t, proto::Token tok, std::string* why);
  void check_visible();
  void retry_parked();
  void expire(clock::time_point now);
  void answer(Request& r);
  void maybe_free(Request& r);
  std::string stats_json();
  std::string no_ack_message(uint32_t timeout_ms) const {
    std::string why = "no acknowledgement from Kafka within " +
                      (timeout_ms == cfg.write_timeout_ms ? std::string("write_timeout_ms = ")
                                                          : std::string("the request's ")) +
                      std::to_string(timeout_ms) + " ms";
    if (!last_kafka_error.empty() &&
        clock::now() - last_kafka_error_at < std::chrono::milliseconds(cfg.write_timeout_ms)) {
      why += " (brokers unreachable: " + last_kafka_error + ")";
    }
    return why;
  }
};

namespace {

// Why a table may be slow to apply a write, from its segment ("" if none
// of its partitions waits for room).
std::string hold_note(const Table& t) {
  kvs_table_stats s{};
  if (kvs_stat(t.reader, &s) != KVS_OK || s.held_partitions == 0) return "";
  return " (" + std::to_string(s.held_partitions) + " partition(s) of table " + t.name +
         " wait for room: " + format::hold_reason_text(s.hold_reason) + ")";
}

void dr_cb(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
  static_cast<Server::Impl*>(opaque)->on_delivery(m);
}

void error_cb(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
  auto* s = static_cast<Server::Impl*>(opaque);
  s->last_kafka_error = reason;
  s->last_kafka_error_at = clock::now();
  char fatal[512];
  if (err == RD_KAFKA_RESP_ERR__FATAL &&
      rd_kafka_fatal_error(rk, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    KVS_LOG_ERROR("Kafka producer: fatal error: %s; writes fail until kvsd restarts", fatal);
    return;
  }
  if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
    KVS_LOG_WARN("Kafka producer: %s; writes wait up to write_timeout_ms", reason);
  } else {
    KVS_LOG_DEBUG("Kafka producer: %s", reason);
  }
}

}  // namespace

Server::Impl::~Impl() {
  for (auto& [id, c] : conns) ::close(c.fd);
  for (auto& t : tables) {
    if (t->rkt) rd_kafka_topic_destroy(t->rkt);
    kvs_close(t->reader);
  }
  if (rk) rd_kafka_destroy(rk);
  for (int fd : {listen_fd, epoll_fd, wake_fd, kafka_pipe[0], kafka_pipe[1]}) {
    if (fd >= 0) ::close(fd);
  }
}

Result<void> Server::Impl::open_socket() {
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
  listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd < 0) return make_error(Errc::kSystem, "socket(): " + errno_text(errno));
  if (::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int e = errno;
    return make_error(Errc::kSystem, "cannot create socket " + path + ": " + errno_text(e) +
                                         (e == ENOENT ? " (create its directory)" : "") +
                                         (e == EACCES ? " (no permission in its directory)" : ""));
  }
  // Before listen(): no peer can connect while the mode is still umask's.
  if (::chmod(path.c_str(), cfg.socket_mode) != 0) {
    return make_error(Errc::kSystem, "chmod " + path + ": " + errno_text(errno));
  }
  if (*gid != static_cast<gid_t>(-1) && ::chown(path.c_str(), static_cast<uid_t>(-1), *gid) != 0) {
    return make_error(Errc::kSystem,
                      "chown " + path + " to group " + cfg.socket_group + ": " + errno_text(errno));
  }
  if (::listen(listen_fd, 512) != 0) {
    return make_error(Errc::kSystem, "listen on " + path + ": " + errno_text(errno));
  }
  return {};
}

Result<void> Server::Impl::create_producer(
    const std::vector<std::pair<std::string, std::string>>& kafka) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  kafka::route_rdkafka_logs(conf);
  auto set = [&](const std::string& k, const std::string& v, const char* where) -> Result<void> {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      return make_error(Errc::kInvalidArgument,
                        std::string(where) + k + " = \"" + v + "\": " + err);
    }
    return {};
  };
  // Defaults that [kafka] may override: a socket write is usually waited
  // for, so batch briefly; leave room for the largest record a table allows.
  const std::pair<std::string, std::string> defaults[] = {
      {"linger.ms", "1"},
      {"message.max.bytes", std::to_string(std::max<uint32_t>(max_frame_bytes, 1000000))},
      {"queue.buffering.max.kbytes", "65536"},
  };
  // Consumer-only keys of [kafka] would make the producer log a warning each.
  auto consumer_only = [](const std::string& k) {
    return k == "isolation.level" || k.rfind("queued.", 0) == 0 || k.rfind("fetch.", 0) == 0 ||
           k == "enable.partition.eof" || k == "auto.offset.reset" || k == "group.id" ||
           k.rfind("enable.auto.", 0) == 0 || k == "auto.commit.interval.ms" ||
           k == "session.timeout.ms" || k == "max.poll.interval.ms";
  };
  Result<void> ok;
  for (const auto& [k, v] : defaults) {
    if (ok) ok = set(k, v, "librdkafka ");
  }
  for (const auto& [k, v] : kafka) {
    if (ok && !consumer_only(k)) ok = set(k, v, "[kafka] ");
  }
  // The contract, whatever [kafka] says: durable, never duplicated by a
  // retry, partitioned as Java's default partitioner does.
  for (const auto& o : kafka::producer_overrides(cfg.write_timeout_ms)) {
    if (ok) ok = set(o.key, o.value, "librdkafka ");
  }
  if (!ok) {
    rd_kafka_conf_destroy(conf);
    return ok;
  }
  rd_kafka_conf_set_opaque(conf, this);
  rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
  rd_kafka_conf_set_error_cb(conf, error_cb);
  rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return make_error(Errc::kInvalidArgument, std::string("[kafka] (producer): ") + err);
  }
  // Delivery reports land on the main queue; librdkafka writes a byte to the
  // pipe when it becomes non-empty, which wakes epoll.
  rd_kafka_queue_t* mq = rd_kafka_queue_get_main(rk);
  rd_kafka_queue_io_event_enable(mq, kafka_pipe[1], "1", 1);
  rd_kafka_queue_destroy(mq);
  for (auto& t : tables) t->rkt = rd_kafka_topic_new(rk, t->topic.c_str(), nullptr);
  return {};
}

Result<std::unique_ptr<Server>> Server::start(
    const config::Config& cfg, const std::vector<std::pair<std::string, std::string>>& kafka) {
  auto s = std::make_unique<Impl>();
  s->cfg = cfg;
  uint64_t largest = 0;
  for (const auto& tc : cfg.tables) {
    auto t = std::make_unique<Table>();
    t->name = tc.name;
    t->topic = tc.topic;
    t->max_key_bytes = tc.max_key_bytes;
    t->max_partitions = tc.max_partitions;
    t->max_value_bytes = tc.max_value_bytes;
    kvs_open_options o{cfg.shm_prefix.c_str()};
    if (const int rc = kvs_open(tc.name.c_str(), &o, &t->reader); rc != KVS_OK) {
      return make_error(static_cast<Errc>(rc),
                        std::string("server: opening table ") + tc.name + ": " + kvs_last_error());
    }
    largest = std::max<uint64_t>(largest, uint64_t{tc.max_key_bytes} + tc.max_value_bytes);
    s->tables.push_back(std::move(t));
  }
  s->max_frame_bytes =
      static_cast<uint32_t>(std::min<uint64_t>(largest + kFrameOverhead, uint64_t{1} << 31));
  if (::pipe2(s->kafka_pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
    return make_error(Errc::kSystem, "pipe2: " + errno_text(errno));
  }
  s->wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  s->epoll_fd = ::epoll_create1(EPOLL_CLOEXEC);
  if (s->wake_fd < 0 || s->epoll_fd < 0) {
    return make_error(Errc::kSystem, "eventfd/epoll: " + errno_text(errno));
  }
  if (auto ok = s->create_producer(kafka); !ok) return std::move(ok).error();
  if (auto ok = s->open_socket(); !ok) return std::move(ok).error();
  // Connections use their id as epoll data; 0..2 are ours.
  s->next_conn_id = 3;
  for (auto [fd, tag] : {std::pair{s->listen_fd, 0}, {s->wake_fd, 1}, {s->kafka_pipe[0], 2}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = static_cast<uint64_t>(tag);
    ::epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, fd, &ev);
  }
  KVS_LOG_INFO("serving writes on %s (mode %04o, max frame %u bytes)", cfg.socket_path.c_str(),
               static_cast<unsigned>(cfg.socket_mode), s->max_frame_bytes);
  Impl* raw = s.get();
  s->thread = std::thread([raw] { raw->loop(); });
  return std::unique_ptr<Server>(new Server(std::move(s)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { stop(std::chrono::milliseconds(0)); }

void Server::applied() {
  // seq_cst: the applier stored the offsets before this load; add_visible()
  // stores the count before it loads the offsets. One of the two sees the
  // other (store-buffering), so no waiter is missed.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (impl_->visible_count.load(std::memory_order_relaxed) == 0) return;
  const uint64_t one = 1;
  (void)!::write(impl_->wake_fd, &one, sizeof one);
}

void Server::stop(std::chrono::milliseconds drain) {
  if (!impl_->thread.joinable()) return;
  impl_->drain_ms.store(drain.count());
  impl_->stopping.store(true);
  const uint64_t one = 1;
  (void)!::write(impl_->wake_fd, &one, sizeof one);
  impl_->thread.join();
  ::unlink(impl_->cfg.socket_path.c_str());
}

void Server::Impl::loop() {
  std::vector<epoll_event> events(256);
  std::optional<clock::time_point> stop_by;
  for (;;) {
    now = clock::now();
    int timeout_ms = 1000;
    if (const auto d = next_deadline()) {
      timeout_ms = *d <= now
                       ? 0
                       : static_cast<int>(std::min<int64_t>(
                             1000, std::chrono::ceil<std::chrono::milliseconds>(*d - now).count()));
    }
    if (!parked.empty()) timeout_ms = std::min(timeout_ms, 10);  // queue space frees up
    if (!conns.empty())
      timeout_ms = std::min(timeout_ms, static_cast<int>(kConnCheckInterval.count()));
    if (stop_by) timeout_ms = std::min(timeout_ms, 10);
    const int n =
        ::epoll_wait(epoll_fd, events.data(), static_cast<int>(events.size()), timeout_ms);
    now = clock::now();
    for (int i = 0; i < n; ++i) {
      const uint64_t tag = events[i].data.u64;
      if (tag == 0) {
        accept_all();
      } else if (tag == 1) {
        uint64_t v;
        (void)!::read(wake_fd, &v, sizeof v);
      } else if (tag == 2) {
        char buf[256];
        while (::read(kafka_pipe[0], buf, sizeof buf) > 0) {
        }
      } else if (auto it = conns.find(tag); it != conns.end()) {
        on_conn_event(it->second, events[i].events);
      }
    }
    rd_kafka_poll(rk, 0);  // delivery reports -> on_delivery
    retry_parked();
    if (!visible.empty()) check_visible();
    now = clock::now();
    expire(now);
    if (now >= next_conn_check) {
      next_conn_check = now + kConnCheckInterval;
      check_conn_timeouts();
    }
    todo.clear();
    todo.swap(dirty);
    for (uint64_t id : todo) {
      auto it = conns.find(id);
      if (it == conns.end()) continue;
      Conn& c = it->second;
      c.dirty = false;
      if (may_read(c) && c.in.size() > c.in_off) process_input(c);
      flush(c);
    }
    wake_budget_waiters();
    if (trim_due && now >= next_trim) {
      // glibc keeps freed buffers in its heap; slow clients that held
      // megabytes each must not leave kvsd that large.
      give_back_free_memory();
      trim_due = false;
      next_trim = now + std::chrono::seconds(1);
    }
    if (stopping.load() && !stop_by) {
      stop_by = now + std::chrono::milliseconds(drain_ms.load());
      ::epoll_ctl(epoll_fd, EPOLL_CTL_DEL, listen_fd, nullptr);
      for (auto& [id, c] : conns) update_interest(c);
    }
    if (stop_by && (unanswered == 0 || now >= *stop_by)) break;
  }
  // Whatever is left is answered with a clear error, then everything closes.
  std::vector<Request*> open;
  for (auto& r : slots) {
    if (r.live && !r.answered) open.push_back(&r);
  }
  for (Request* r : open) {
    for (uint32_t i = 0; i < r->results.size(); ++i) {
      if (r->results[i].code == 1) {
        r->results[i].code = KVS_ETIMEDOUT;
        if (r->error.empty()) r->error = "kvsd is stopping; the write may still be applied";
      }
    }
    r->remaining = 0;
    answer(*r);
  }
  std::vector<uint64_t> ids;
  for (auto& [id, c] : conns) ids.push_back(id);
  for (uint64_t id : ids) {
    Conn& c = conns.at(id);
    // The last replies, each connection waited for briefly.
    timeval tv{0, 200000};
    ::setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    ::fcntl(c.fd, F_SETFL, ::fcntl(c.fd, F_GETFL) & ~O_NONBLOCK);
    flush(c);
  }
  // Records not yet acknowledged are dropped from the queue; their delivery
  // reports arrive here, for requests already answered.
  rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
  rd_kafka_poll(rk, 0);
}

void Server::Impl::accept_all() {
  for (;;) {
    const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN)
        KVS_LOG_WARN("accept on %s: %s", cfg.socket_path.c_str(), std::strerror(errno));
      return;
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      KVS_LOG_WARN("SO_PEERCRED: %s; connection refused", std::strerror(errno));
      ::close(fd);
      continue;
    }
    Conn c;
    c.fd = fd;
    c.id = next_conn_id++;
    c.uid = cred.uid;
    c.gid = cred.gid;
    c.pid = cred.pid;
    c.accepted = now;
    const bool open_to_all = cfg.allowed_uids.empty() && cfg.allowed_gids.empty();
    const bool allowed = open_to_all ||
                         std::find(cfg.allowed_uids.begin(), cfg.allowed_uids.end(),
                                   int64_t{cred.uid}) != cfg.allowed_uids.end() ||
                         std::find(cfg.allowed_gids.begin(), cfg.allowed_gids.end(),
                                   int64_t{cred.gid}) != cfg.allowed_gids.end();
    std::string refusal;
    Errc code = Errc::kPermission;
    if (!allowed) {
      refusal = "peer uid " + std::to_string(cred.uid) + " gid " + std::to_string(cred.gid) +
                " (pid " + std::to_string(cred.pid) +
                ") may not write: not in kvsd.allowed_uids or kvsd.allowed_gids";
    } else if (conns.size() >= cfg.max_connections) {
      code = Errc::kBusy;
      refusal = "kvsd serves max_connections = " + std::to_string(cfg.max_connections) +
                " connections already; retry later or raise it";
    }
    if (!refusal.empty()) {
      ++n_refused;
      log_refusal(refusal);
      std::string frame;
      proto::encode_error(frame, 0, static_cast<int32_t>(code), refusal);
      (void)!::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      ::close(fd);
      continue;
    }
    KVS_LOG_DEBUG("connection %llu from uid %u gid %u pid %d",
                  static_cast<unsigned long long>(c.id), c.uid, c.gid, c.pid);
    auto [it, _] = conns.emplace(c.id, std::move(c));
    update_interest(it->second);
  }
}

void Server::Impl::update_interest(Conn& c) {
  uint32_t want = 0;
  if (may_read(c)) want |= EPOLLIN;
  if (c.out.size() > c.out_off) want |= EPOLLOUT;
  if (want == c.events && c.events != 0) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  if (c.events == 0 && want != 0) {
    ::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c.fd, &ev);
  } else if (want == 0) {
    ::epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c.fd, nullptr);
  } else {
    ::epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c.fd, &ev);
  }
  c.events = want;
}

void Server::Impl::account(Conn& c) {
  const size_t cap = c.in.capacity();
  const size_t want = cap > kFreeInputBytes ? cap - kFreeInputBytes : 0;
  if (want < c.charged) budget_freed = true;
  budget_used = budget_used + want - c.charged;
  c.charged = want;
}

// How many bytes the next recv may take (0: wait for the budget). Reads
// fill the buffer, never grow it, except for the frame at its front, whose
// length the header gives: a frame over the free allowance reserves its
// whole size at once, so that two large frames can never each hold part of
// the budget and wait for the other. A frame larger than the whole budget
// may take it while nothing else uses any.
size_t Server::Impl::read_room(Conn& c) {
  if (c.in_off > 0) {  // parsed bytes: the buffer keeps only what is not
    c.in.erase(0, c.in_off);
    c.in_off = 0;
  }
  size_t cap = std::max(c.in.capacity(), kFreeInputBytes);
  if (c.in.size() >= 4) {
    uint32_t length;
    std::memcpy(&length, c.in.data(), sizeof length);  // checked by split() already
    const size_t frame = 4 + size_t{std::min(length, max_frame_bytes)};
    if (frame > cap) {
      const size_t more = frame - std::max(c.in.capacity(), kFreeInputBytes);
      if (budget_used != 0 && budget_used + more > cfg.max_unfinished_frame_bytes) return 0;
      c.in.reserve(frame);
      account(c);
      cap = frame;
    }
  }
  return cap > c.in.size() ? std::min(kReadChunk, cap - c.in.size()) : 0;
}

// Frees a connection's input buffer (empty, or to be dropped), so that
// memory follows the frames in flight, not the largest one ever seen.
void Server::Impl::release_input(Conn& c) {
  if (c.charged > 0) trim_due = true;
  std::string().swap(c.in);
  c.in_off = 0;
  account(c);
}

// Waiters try again only after some of the budget was freed: in the order
// they came, so that the ones that waited longest get it first.
void Server::Impl::wake_budget_waiters() {
  if (budget_waiters.empty() || !budget_freed) return;
  budget_freed = false;
  std::vector<uint64_t> ids;
  ids.swap(budget_waiters);
  for (uint64_t id : ids) {
    auto it = conns.find(id);
    if (it == conns.end()) continue;
    it->second.budget_wait = false;
    update_interest(it->second);
  }
}

void Server::Impl::check_conn_timeouts() {
  using std::chrono::milliseconds;
  for (auto& [id, c] : conns) {
    if (c.closing) continue;
    // While kvsd does not read a connection (its producer queue is full,
    // the connection's requests wait for Kafka, or the budget is spent),
    // its time does not run.
    if (c.budget_wait || !parked.empty() || c.pending >= cfg.max_pending_per_connection) {
      if (!c.hello) c.accepted = now;
      if (c.frame_started != clock::time_point{}) c.frame_started = now;
      continue;
    }
    std::string why;
    if (!c.hello && now - c.accepted > milliseconds(cfg.hello_timeout_ms)) {
      why =
          "no handshake (HELLO) within hello_timeout_ms = " + std::to_string(cfg.hello_timeout_ms);
    } else if (c.frame_started != clock::time_point{} &&
               now - c.frame_started > milliseconds(cfg.frame_timeout_ms)) {
      why = "a request still incomplete " + std::to_string(cfg.frame_timeout_ms) +
            " ms after its first bytes (frame_timeout_ms): a stalled or far too slow client";
    }
    if (why.empty()) continue;
    ++n_timed_out_conns;
    log_limited("connection from uid " + std::to_string(c.uid) + " pid " + std::to_string(c.pid) +
                    ": " + why,
                "closed it", next_close_log, closes_not_logged);
    reply_error(c, 0, Errc::kTimeout, why + "; closing the connection");
    c.closing = true;
    c.frame_started = {};
    release_input(c);
  }
}

void Server::Impl::close_conn(uint64_t id) {
  auto it = conns.find(id);
  if (it == conns.end()) return;
  ::close(it->second.fd);  // also leaves the epoll set
  if (it->second.in.capacity() >= kFreeInputBytes) trim_due = true;
  if (it->second.charged > 0) budget_freed = true;
  budget_used -= it->second.charged;
  unsent_total -= it->second.out_counted;
  conns.erase(it);
}

void Server::Impl::on_conn_event(Conn& c, uint32_t ev) {
  const uint64_t id = c.id;
  if (ev & EPOLLOUT) flush(c);
  if (!conns.count(id)) return;
  if ((ev & (EPOLLHUP | EPOLLERR)) && !may_read(c)) {
    close_conn(id);  // gone while not being read: nobody to answer
    return;
  }
  if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_from(c);
}

void Server::Impl::read_from(Conn& c) {
  const uint64_t id = c.id;
  while (may_read(c)) {
    const size_t room = read_room(c);
    if (room == 0) {
      c.budget_wait = true;
      budget_waiters.push_back(id);
      break;
    }
    const ssize_t n = ::recv(c.fd, read_buf.get(), room, 0);
    if (n > 0) {
      c.in.append(read_buf.get(), static_cast<size_t>(n));
      account(c);
    }
    if (n == 0) {
      // The peer shut its side: answer what it sent, then close.
      process_input(c);
      c.eof = true;
      if (c.pending == 0) c.closing = true;
      break;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      // The peer left: its requests still complete, their replies are dropped.
      close_conn(id);
      return;
    }
    if (n < 0) break;
    process_input(c);
    if (!conns.count(id)) return;
    // A short read took all there was: the next recv would only say EAGAIN.
    // (Level-triggered epoll reports whatever arrives after it.)
    if (static_cast<size_t>(n) < room) break;
  }
  mark_dirty(c);
}

void Server::Impl::process_input(Conn& c) {
  bool incomplete = false, parsed = false;
  while (may_read(c)) {
    proto::Header h;
    std::string_view body;
    std::string why;
    const std::string_view buf = std::string_view(c.in).substr(c.in_off);
    const uint32_t limit = c.hello ? max_frame_bytes : proto::kHelloMaxFrameBytes;
    const proto::Split s = proto::split(buf, limit, &h, &body, &why);
    if (s == proto::Split::kIncomplete) {
      incomplete = c.in.size() > c.in_off;
      break;
    }
    if (s == proto::Split::kBad) {
      ++n_protocol_errors;
      reply_error(c, h.request_id, Errc::kProtocol, why + "; closing the connection");
      c.closing = true;
      break;
    }
    c.in_off += proto::kHeaderBytes + body.size();
    parsed = true;
    handle_frame(c, h, body);
  }
  produce_staged();  // before the input buffer changes
  // frame_timeout_ms runs from the first bytes of the frame still unfinished.
  if (!incomplete) {
    c.frame_started = {};
  } else if (parsed || c.frame_started == clock::time_point{}) {
    c.frame_started = now;
  }
  if (c.in_off == c.in.size()) {
    c.in.clear();
    c.in_off = 0;
  }
  // A buffer that grew for a large frame goes back once what is left of it
  // fits the free allowance.
  if (c.charged > 0 && c.in.size() - c.in_off <= kFreeInputBytes) {
    std::string rest = c.in.substr(c.in_off);
    c.in.swap(rest);
    c.in_off = 0;
    trim_due = true;
    account(c);
  } else if (c.in_off > (1 << 20)) {
    c.in.erase(0, c.in_off);
    c.in_off = 0;
  }
  mark_dirty(c);
}

void Server::Impl::reply_error(Conn& c, uint64_t id, Errc code, const std::string& message) {
  proto::encode_error(c.out, id, static_cast<int32_t>(code), message);
  mark_dirty(c);
}

void Server::Impl::flush(Conn& c) {
  while (c.out.size() > c.out_off) {
    const ssize_t n =
        ::send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      close_conn(c.id);
      return;
    }
    c.out_off += static_cast<size_t>(n);
  }
  if (c.out_off == c.out.size()) {
    c.out.clear();
    c.out_off = 0;
    if (c.out.capacity() > kFreeInputBytes) {  // replies of a client that read late
      std::string().swap(c.out);
      trim_due = true;
    }
    if (c.closing) {
      close_conn(c.id);
      return;
    }
  }
  const size_t unsent = c.out.size() - c.out_off;
  unsent_total = unsent_total + unsent - c.out_counted;
  c.out_counted = unsent;
  update_interest(c);
}

Table* Server::Impl::find_table(std::string_view name) {
  for (auto& t : tables) {
    if (t->name == name) return t.get();
  }
  return nullptr;
}

void Server::Impl::handle_frame(Conn& c, const proto::Header& h, std::string_view body) {
  ++n_requests;
  const auto type = static_cast<proto::Type>(h.type);
  if (!c.hello) {
    if (type != proto::Type::kHello) {
      ++n_protocol_errors;
      reply_error(
          c, h.request_id, Errc::kProtocol,
          "expected hello, got " + proto::type_name(h.type) +
              " (a client starts with HELLO; see docs/protocol.md); closing the connection");
      c.closing = true;
      return;
    }
    auto hello = proto::decode_hello(body);
    if (!hello) {
      ++n_protocol_errors;
      reply_error(c, h.request_id, Errc::kProtocol, hello.error().message);
      c.closing = true;
      return;
    }
    if (hello->min_version > proto::kVersion || hello->max_version < proto::kVersion) {
      reply_error(c, h.request_id, Errc::kProtocol,
                  "client speaks protocol versions " + std::to_string(hello->min_version) + ".." +
                      std::to_string(hello->max_version) + ", this kvsd speaks " +
                      std::to_string(proto::kVersion) + "; upgrade the older side");
      c.closing = true;
      return;
    }
    c.hello = true;
    proto::encode_hello_ok(c.out, h.request_id,
                           proto::HelloOk{proto::kVersion, max_frame_bytes, "kvsd 0.1"});
    mark_dirty(c);
    return;
  }
  auto bad = [&](const std::string& why) {
    ++n_protocol_errors;
    reply_error(c, h.request_id, Errc::kProtocol, why);
  };
  auto table_or_error = [&](std::string_view name) -> Table* {
    Table* t = find_table(name);
    if (t == nullptr) {
      std::string names;
      for (const auto& x : tables) names += (names.empty() ? "" : ", ") + x->name;
      reply_error(
          c, h.request_id, Errc::kInvalidArgument,
          "table \"" + std::string(name) + "\" is not served by this kvsd (tables: " + names + ")");
    }
    return t;
  };
  auto check_sizes = [&](const Table& t, std::string_view key,
                         std::optional<std::string_view> value) -> std::string {
    if (key.size() > t.max_key_bytes) {
      return "key of " + std::to_string(key.size()) + " bytes over max_key_bytes " +
             std::to_string(t.max_key_bytes) + " of table " + t.name;
    }
    if (value && value->size() > t.max_value_bytes) {
      return "value of " + std::to_string(value->size()) + " bytes over max_value_bytes " +
             std::to_string(t.max_value_bytes) + " of table " + t.name;
    }
    return "";
  };
  switch (type) {
    case proto::Type::kPing: {
      proto::encode_frame(c.out, proto::Type::kPong, 0, h.request_id, body);
      mark_dirty(c);
      return;
    }
    case proto::Type::kStats: {
      if (!body.empty()) return bad("stats: a body of " + std::to_string(body.size()) + " bytes");
      proto::encode_frame(c.out, proto::Type::kStatsOk, 0, h.request_id, stats_json());
      mark_dirty(c);
      return;
    }
    case proto::Type::kPut:
    case proto::Type::kErase: {
      auto w = proto::decode_write(h.type, body);
      if (!w) return bad(w.error().message);
      Table* t = table_or_error(w->table);
      if (t == nullptr) return;
      if (auto why = check_sizes(*t, w->key, w->value); !why.empty()) {
        ++n_write_errors;
        return reply_error(c, h.request_id, Errc::kTooLarge, why);
      }
      Request& r =
          new_request(c, h, type == proto::Type::kPut ? proto::Type::kPutOk : proto::Type::kEraseOk,
                      t, w->timeout_ms, 1);
      produce(r, 0, w->key, w->value);
      maybe_free(r);
      return;
    }
    case proto::Type::kBatch: {
      auto b = proto::decode_batch(body);
      if (!b) return bad(b.error().message);
      Table* t = table_or_error(b->table);
      if (t == nullptr) return;
      for (size_t i = 0; i < b->ops.size(); ++i) {
        if (auto why = check_sizes(*t, b->ops[i].key, b->ops[i].value); !why.empty()) {
          ++n_write_errors;
          return reply_error(c, h.request_id, Errc::kTooLarge,
                             "batch operation " + std::to_string(i) + ": " + why +
                                 " (nothing of the batch was written)");
        }
      }
      Request& r = new_request(c, h, proto::Type::kBatchOk, t, b->timeout_ms, b->ops.size());
      for (uint32_t i = 0; i < b->ops.size(); ++i) produce(r, i, b->ops[i].key, b->ops[i].value);
      maybe_free(r);
      return;
    }
    case proto::Type::kWait: {
      auto w = proto::decode_wait(body);
      if (!w) return bad(w.error().message);
      Table* t = table_or_error(w->table);
      if (t == nullptr) return;
      std::string why;
      const bool done = is_applied(*t, w->token, &why);
      if (!why.empty()) return reply_error(c, h.request_id, Errc::kInvalidArgument, why);
      if (done) {
        proto::encode_frame(c.out, proto::Type::kWaitOk, 0, h.request_id, {});
        mark_dirty(c);
        return;
      }
      Request& r = new_request(c, h, proto::Type::kWaitOk, t, w->timeout_ms, 1);
      r.results[0].token = w->token;
      visible.push_back({{r.slot, r.seq}, 0, t, w->token});
      visible_count.store(visible.size());
      // Applied meanwhile? (see Server::applied for the ordering)
      check_visible();
      return;
    }
    default:
      return bad("unknown request type " + proto::type_name(h.type));
  }
}

Request& Server::Impl::new_request(Conn& c, const proto::Header& h, proto::Type reply, Table* t,
                                   uint32_t timeout_ms, size_t ops) {
  if (free_slots.empty()) {
    slots.emplace_back();
    slots.back().slot = static_cast<uint32_t>(slots.size() - 1);
    free_slots.push_back(slots.back().slot);
    unanswered_seq.push_back(0);
  }
  Request& r = slots[free_slots.back()];
  free_slots.pop_back();
  // The next request of this read will likely come soon: start loading it.
  if (!free_slots.empty()) {
    const char* next = reinterpret_cast<const char*>(&slots[free_slots.back()]);
    for (size_t off = 0; off < sizeof(Request); off += 64) __builtin_prefetch(next + off, 1);
  }
  r.live = true;
  r.seq = next_seq++;
  unanswered_seq[r.slot] = r.seq;
  r.conn_id = c.id;
  r.id = h.request_id;
  r.reply = reply;
  r.visible = (h.flags & proto::kFlagVisible) != 0 || reply == proto::Type::kWaitOk;
  r.answered = false;
  r.table = t;
  r.timeout_ms = timeout_ms != 0 ? timeout_ms : cfg.write_timeout_ms;
  r.deadline = now + std::chrono::milliseconds(r.timeout_ms);
  r.outstanding = 0;
  r.remaining = static_cast<uint32_t>(ops);
  r.parked = 0;
  r.results.assign(ops, proto::BatchResult{1, {}});  // 1: no outcome yet
  r.error.clear();
  // Stable addresses: librdkafka holds pointers to them until every delivery
  // report is back, and the slot is reused only after that.
  r.refs.clear();
  r.refs.reserve(ops);
  for (uint32_t i = 0; i < ops; ++i) r.refs.push_back({&r, i});
  ++c.pending;
  ++unanswered;
  const Deadline d{r.deadline, {r.slot, r.seq}};
  if (r.timeout_ms == cfg.write_timeout_ms &&
      (fifo_deadlines.empty() || fifo_deadlines.back().first <= d.first)) {
    fifo_deadlines.push_back(d);
  } else {
    heap_deadlines.push_back(d);
    std::push_heap(heap_deadlines.begin(), heap_deadlines.end(), later);
  }
  if (fifo_deadlines.size() + heap_deadlines.size() > 2 * unanswered + 1024) compact_deadlines();
  return r;
}

std::optional<clock::time_point> Server::Impl::next_deadline() {
  while (!fifo_deadlines.empty() && !pending_deadline(fifo_deadlines.front())) {
    fifo_deadlines.pop_front();
  }
  while (!heap_deadlines.empty() && !pending_deadline(heap_deadlines.front())) {
    std::pop_heap(heap_deadlines.begin(), heap_deadlines.end(), later);
    heap_deadlines.pop_back();
  }
  std::optional<clock::time_point> d;
  if (!fifo_deadlines.empty()) d = fifo_deadlines.front().first;
  if (!heap_deadlines.empty() && (!d || heap_deadlines.front().first < *d)) {
    d = heap_deadlines.front().first;
  }
  return d;
}

void Server::Impl::compact_deadlines() {
  std::erase_if(fifo_deadlines, [&](const Deadline& d) { return !pending_deadline(d); });
  std::erase_if(heap_deadlines, [&](const Deadline& d) { return !pending_deadline(d); });
  std::make_heap(heap_deadlines.begin(), heap_deadlines.end(), later);
}

void Server::Impl::produce(Request& r, uint32_t index, std::string_view key,
                           std::optional<std::string_view> value) {
  // An empty key or value is still a key or value: never hand librdkafka a
  // null pointer for it (null value = tombstone).
  static const char kEmpty[1] = {0};
  if (staged_table != r.table) produce_staged();
  staged_table = r.table;
  rd_kafka_message_t m{};
  m.payload = value ? const_cast<char*>(value->empty() ? kEmpty : value->data()) : nullptr;
  m.len = value ? value->size() : 0;
  m.key = const_cast<char*>(key.empty() ? kEmpty : key.data());
  m.key_len = key.size();
  m._private = &r.refs[index];
  ++r.outstanding;
  staged.push_back(m);
}

void Server::Impl::produce_staged() {
  if (staged.empty()) return;
  // One call for the lot: librdkafka takes its topic lock and reads the
  // clocks once per call instead of once per record (per record, that was
  // about 15% of this thread at full rate). Records keep their order: when
  // the queue is full, this record and every later one of the call fail
  // with QUEUE_FULL (librdkafka stops enqueueing at the first), so parking
  // them in order keeps each partition's order.
  rd_kafka_produce_batch(staged_table->rkt, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY,
                         staged.data(), static_cast<int>(staged.size()));
  for (const rd_kafka_message_t& m : staged) {
    if (m.err == RD_KAFKA_RESP_ERR_NO_ERROR) continue;
    auto* ref = static_cast<MsgRef*>(m._private);
    Request& r = *ref->req;
    --r.outstanding;
    staged_failed.push_back(&r);
    if (m.err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      // Kept until the queue has room; meanwhile no connection is read.
      parked.push_back({{r.slot, r.seq},
                        ref->index,
                        std::string(static_cast<const char*>(m.key), m.key_len),
                        m.payload != nullptr ? std::optional<std::string>(std::string(
                                                   static_cast<const char*>(m.payload), m.len))
                                             : std::nullopt});
      ++r.parked;
      ++n_queue_full;
      continue;
    }
    op_done(r, ref->index, errc_of(m.err),
            std::string("Kafka refused the record for ") + r.table->topic + ": " +
                rd_kafka_err2str(m.err));
  }
  staged.clear();
  staged_table = nullptr;
  for (Request* r : staged_failed) maybe_free(*r);  // after the loop: r stays valid in it
  staged_failed.clear();
}

void Server::Impl::retry_parked() {
  if (parked.empty()) return;
  while (!parked.empty()) {
    Request* found = find(parked.front().req);  // parked requests are never freed
    Request& r = *found;
    Parked mine = std::move(parked.front());
    parked.pop_front();
    --r.parked;
    if (r.answered) {
      maybe_free(r);
      continue;
    }
    const size_t before = parked.size();
    produce(r, mine.index, mine.key,
            mine.value ? std::optional<std::string_view>(*mine.value) : std::nullopt);
    produce_staged();
    if (parked.size() > before) {
      // Still full (produce() parked it at the back): keep the order and try
      // again after the next delivery reports.
      parked.push_front(std::move(parked.back()));
      parked.pop_back();
      return;
    }
    maybe_free(r);
  }
  for (auto& [id, c] : conns) mark_dirty(c);  // reading resumes
}

void Server::Impl::op_done(Request& r, uint32_t index, Errc code, const std::string& message) {
  if (r.answered || r.results[index].code != 1) return;
  r.results[index].code = static_cast<int32_t>(code);
  if (code != Errc::kOk) {
    ++n_write_errors;
    if (r.error.empty()) r.error = message;
  } else if (r.reply != proto::Type::kWaitOk) {
    ++n_acked;
  }
  if (--r.remaining == 0) answer(r);
}

void Server::Impl::on_delivery(const rd_kafka_message_t* m) {
  auto* ref = static_cast<MsgRef*>(m->_private);
  Request& r = *ref->req;
  --r.outstanding;
  if (!r.answered) {
    if (m->err) {
      std::string why = std::string("Kafka did not store the record in ") + r.table->topic + ": " +
                        rd_kafka_err2str(m->err);
      if (errc_of(m->err) == Errc::kTimeout) why = no_ack_message(cfg.write_timeout_ms);
      op_done(r, ref->index, errc_of(m->err), why);
    } else {
      const proto::Token tok{m->partition, m->offset};
      r.results[ref->index].token = tok;
      std::string why;
      if (r.visible && !is_applied(*r.table, tok, &why)) {
        visible.push_back({{r.slot, r.seq}, ref->index, r.table, tok});
        visible_count.store(visible.size());
      } else {
        op_done(r, ref->index, Errc::kOk, "");
      }
    }
  }
  maybe_free(r);
}

bool Server::Impl::is_applied(const Table& t, proto::Token tok, std::string* why) {
  int64_t next = -1;
  // A partition the topic gained lately is followed within about a second:
  // waited for, unless the table cannot track it at all.
  if (tok.partition < 0 || static_cast<uint32_t>(tok.partition) >= t.max_partitions) {
    *why = "table " + t.name + " tracks at most " + std::to_string(t.max_partitions) +
           " partitions (max_partitions), no partition " + std::to_string(tok.partition);
    return false;
  }
  if (static_cast<uint32_t>(tok.partition) >= kvs_partition_count(t.reader)) return false;
  if (kvs_partition_offsets(t.reader, static_cast<uint32_t>(tok.partition), &next, nullptr) !=
      KVS_OK) {
    *why = kvs_last_error();
    return false;
  }
  return next > tok.offset;
}

void Server::Impl::check_visible() {
  size_t kept = 0;
  for (size_t i = 0; i < visible.size(); ++i) {
    Visible v = visible[i];
    Request* found = find(v.req);
    if (found == nullptr || found->answered) continue;
    std::string why;
    if (is_applied(*v.table, v.token, &why)) {
      Request& r = *found;
      op_done(r, v.index, Errc::kOk, "");
      maybe_free(r);
    } else {
      visible[kept++] = v;
    }
  }
  visible.resize(kept);
  visible_count.store(visible.size());
}

void Server::Impl::expire(clock::time_point t) {
  for (;;) {
    ReqRef due;
    if (!fifo_deadlines.empty() && fifo_deadlines.front().first <= t) {
      due = fifo_deadlines.front().second;
      fifo_deadlines.pop_front();
    } else if (!heap_deadlines.empty() && heap_deadlines.front().first <= t) {
      due = heap_deadlines.front().second;
      std::pop_heap(heap_deadlines.begin(), heap_deadlines.end(), later);
      heap_deadlines.pop_back();
    } else {
      break;
    }
    Request* found = find(due);
    if (found == nullptr || found->answered) continue;
    Request& r = *found;
    const bool queued = r.parked > 0;
    for (uint32_t i = 0; i < r.results.size(); ++i) {
      auto& res = r.results[i];
      if (res.code != 1) continue;
      const bool acked = res.token.offset >= 0;
      if (queued && !acked && r.error.empty()) {
        res.code = KVS_EQUEUE;
        r.error = "kvsd's producer queue stayed full for " + std::to_string(r.timeout_ms) +
                  " ms; writes arrive faster than Kafka takes them";
      } else {
        res.code = KVS_ETIMEDOUT;
        if (r.error.empty()) {
          r.error = r.reply == proto::Type::kWaitOk
                        ? "table " + r.table->name + " has not applied " + r.table->topic + "[" +
                              std::to_string(res.token.partition) + "] offset " +
                              std::to_string(res.token.offset) + " within " +
                              std::to_string(r.timeout_ms) + " ms"
                    : acked ? "stored in Kafka at " + r.table->topic + "[" +
                                  std::to_string(res.token.partition) + "] offset " +
                                  std::to_string(res.token.offset) +
                                  " but not applied to the local table within " +
                                  std::to_string(r.timeout_ms) + " ms" + hold_note(*r.table)
                            : no_ack_message(r.timeout_ms) + "; the write may still be applied";
        }
      }
      if (res.code == KVS_ETIMEDOUT || res.code == KVS_EQUEUE) ++n_write_errors;
    }
    r.remaining = 0;
    answer(r);
    maybe_free(r);
  }
}

void Server::Impl::answer(Request& r) {
  if (r.answered) return;
  r.answered = true;
  unanswered_seq[r.slot] = 0;
  --unanswered;
  auto it = conns.find(r.conn_id);
  if (it == conns.end()) return;  // the client left
  Conn& c = it->second;
  --c.pending;
  if (c.eof && c.pending == 0) c.closing = true;
  const auto& first = r.results[0];
  if (r.reply == proto::Type::kBatchOk) {
    proto::encode_batch_ok(c.out, r.id, {r.results.data(), r.results.size()});
  } else if (first.code != KVS_OK) {
    proto::encode_error(c.out, r.id, first.code, r.error);
  } else if (r.reply == proto::Type::kWaitOk) {
    proto::encode_frame(c.out, proto::Type::kWaitOk, 0, r.id, {});
  } else {
    proto::encode_token(c.out, r.reply, r.id, first.token);
  }
  mark_dirty(c);
}

void Server::Impl::maybe_free(Request& r) {
  // librdkafka holds &r.refs[i] until each delivery report has come back.
  if (r.live && r.answered && r.outstanding == 0 && r.parked == 0) {
    r.live = false;
    free_slots.push_back(r.slot);
  }
}

std::string Server::Impl::stats_json() {
  const size_t pending = unanswered;
  std::string j = "{\"server\":{\"connections\":" + std::to_string(conns.size()) +
                  ",\"requests\":" + std::to_string(n_requests) +
                  ",\"writes_acked\":" + std::to_string(n_acked) +
                  ",\"write_errors\":" + std::to_string(n_write_errors) +
                  ",\"protocol_errors\":" + std::to_string(n_protocol_errors) +
                  ",\"refused_connections\":" + std::to_string(n_refused) +
                  ",\"timed_out_connections\":" + std::to_string(n_timed_out_conns) +
                  ",\"unfinished_frame_bytes\":" + std::to_string(budget_used) +
                  ",\"waiting_for_frame_memory\":" + std::to_string(budget_waiters.size()) +
                  ",\"unsent_reply_bytes\":" + std::to_string(unsent_total) +
                  ",\"pending\":" + std::to_string(pending) +
                  ",\"queue_full_waits\":" + std::to_string(n_queue_full) +
                  ",\"producer_queue\":" + std::to_string(rd_kafka_outq_len(rk)) + "},\"tables\":[";
  bool first = true;
  for (const auto& t : tables) {
    j += first ? "" : ",";
    first = false;
    const int st = kvs_state(t->reader);
    j += "{\"name\":\"" + t->name + "\",\"topic\":\"" + t->topic + "\",\"state\":\"" +
         (st == KVS_STATE_READY ? "READY" : "BOOTSTRAPPING") +
         "\",\"entries\":" + std::to_string(kvs_size(t->reader)) + ",\"partitions\":[";
    const uint32_t n = kvs_partition_count(t->reader);
    for (uint32_t p = 0; p < n; ++p) {
      int64_t next = 0, hw = 0;
      if (kvs_partition_offsets(t->reader, p, &next, &hw) != KVS_OK) continue;
      j += (p ? "," : "") + std::string("{\"partition\":") + std::to_string(p) +
           ",\"next_offset\":" + std::to_string(next) +
           ",\"high_watermark\":" + std::to_string(hw) +
           ",\"lag\":" + std::to_string(format::partition_lag(next, hw)) + "}";
    }
    j += "]}";
  }
  return j + "]}";
}

}  // namespace kvs::daemon
