// The write server's thread and how its parts meet: Connections (socket,
// framing, flow control), Requests (what each request asks, deadlines,
// VISIBLE and WAIT) and Producer (librdkafka). Owns the epoll set, the
// wakeup eventfd, the pipe librdkafka signals delivery reports on, and the
// served tables' reader handles.
#include "server/server.hpp"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <optional>
#include <thread>

#include "log.hpp"
#include "server/connections.hpp"
#include "server/producer.hpp"
#include "server/requests.hpp"

namespace kvs::daemon {

using server::clock;

namespace {

constexpr uint32_t kFrameOverhead = 64 * 1024;
constexpr auto kConnCheckInterval = std::chrono::milliseconds(250);
// epoll data of the server's own fds; connections' ids start above.
constexpr uint64_t kListenTag = 0, kWakeTag = 1, kKafkaTag = 2, kFirstConnId = 3;

std::string errno_text(int e) { return std::strerror(e); }

}  // namespace

// The served tables, closed last (the producer's topic handles and the
// requests refer to them).
struct ServedTables {
  std::vector<std::unique_ptr<server::Table>> list;
  ~ServedTables() {
    for (auto& t : list) kvs_close(t->reader);
  }
};

// The loop's own descriptors, closed after the producer is gone (librdkafka
// writes to kafka_pipe until then).
struct LoopFds {
  int epoll = -1, wake = -1;
  int kafka_pipe[2] = {-1, -1};  // librdkafka signals queued delivery reports here
  ~LoopFds() {
    for (int fd : {epoll, wake, kafka_pipe[0], kafka_pipe[1]}) {
      if (fd >= 0) ::close(fd);
    }
  }
};

struct Server::Impl {
  config::Config cfg;
  server::PeerAccess access;  // set by start() before the thread runs
  ServedTables tables;
  LoopFds fds;
  // Requests refers to the other two, which refer back to it; it is built
  // first and uses them only once the thread runs.
  std::atomic<bool> stopping{false};  // set by stop(): nothing is read from then on
  std::atomic<int64_t> drain_ms{0};
  server::Requests requests;
  server::Connections conns;
  server::Producer producer;
  server::PublishedCounters published;
  std::thread thread;

  Impl(const config::Config& c, uint32_t max_frame_bytes, const SnapshotStatus* snapshots,
       WaitHub* waits)
      : cfg(c),
        requests(cfg, tables.list, conns, producer, snapshots, waits),
        conns(cfg, access, requests, max_frame_bytes, stopping),
        producer(cfg, requests) {}
  Result<void> open_fds();
  void loop();
  int wait_timeout(clock::time_point now, bool stopping_now);
  void dispatch(const epoll_event& ev);
  void shut_down();
  void publish_counters() {
    server::Counters c;
    conns.add_counters(c);
    requests.add_counters(c);
    published.publish(c);
  }
};

Result<void> Server::Impl::open_fds() {
  if (::pipe2(fds.kafka_pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
    return make_error(Errc::kSystem, "pipe2: " + errno_text(errno));
  }
  fds.wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  fds.epoll = ::epoll_create1(EPOLL_CLOEXEC);
  if (fds.wake < 0 || fds.epoll < 0) {
    return make_error(Errc::kSystem, "eventfd/epoll: " + errno_text(errno));
  }
  conns.use_epoll(fds.epoll, kFirstConnId);
  return {};
}

// Opens every table's segment (for the applied offsets VISIBLE and WAIT
// read) and returns the largest frame a write to one of them can need.
static Result<uint32_t> open_tables(const config::Config& cfg,
                                    std::vector<std::unique_ptr<server::Table>>& tables) {
  uint64_t largest = 0;
  for (const auto& tc : cfg.tables) {
    auto t = std::make_unique<server::Table>();
    t->name = tc.name;
    t->topic = tc.topic;
    t->max_key_bytes = tc.max_key_bytes;
    t->max_partitions = tc.max_partitions;
    t->max_value_bytes = tc.max_value_bytes;
    // Its own tables, by name: never through a socket.
    kvs_open_options o{cfg.shm_prefix.c_str(), cfg.shm_dir.c_str(), nullptr, KVS_HANDOVER_NEVER};
    if (const int rc = kvs_open(tc.name.c_str(), &o, &t->reader); rc != KVS_OK) {
      return make_error(static_cast<Errc>(rc),
                        std::string("server: opening table ") + tc.name + ": " + kvs_last_error());
    }
    largest = std::max<uint64_t>(largest, uint64_t{tc.max_key_bytes} + tc.max_value_bytes);
    tables.push_back(std::move(t));
  }
  return static_cast<uint32_t>(std::min<uint64_t>(largest + kFrameOverhead, uint64_t{1} << 31));
}

Result<std::unique_ptr<Server>> Server::start(
    const config::Config& cfg, const std::vector<std::pair<std::string, std::string>>& kafka,
    const SnapshotStatus* snapshots, WaitHub* waits) {
  ServedTables tables;
  auto max_frame = open_tables(cfg, tables.list);
  if (!max_frame) return std::move(max_frame).error();
  auto s = std::make_unique<Impl>(cfg, *max_frame, snapshots, waits);
  auto access = server::PeerAccess::from(s->cfg);
  if (!access) return std::move(access).error();
  s->access = *access;
  s->tables.list = std::move(tables.list);
  if (auto ok = s->open_fds(); !ok) return std::move(ok).error();
  if (auto ok = s->producer.create(kafka, *max_frame, s->tables.list, s->fds.kafka_pipe[1]); !ok) {
    return std::move(ok).error();
  }
  if (auto ok = s->conns.open_socket(); !ok) return std::move(ok).error();
  for (auto [fd, tag] : {std::pair{s->conns.listen_fd(), kListenTag},
                         {s->fds.wake, kWakeTag},
                         {s->fds.kafka_pipe[0], kKafkaTag}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    ::epoll_ctl(s->fds.epoll, EPOLL_CTL_ADD, fd, &ev);
  }
  KVS_LOG_INFO("serving writes on %s (mode %04o, max frame %u bytes)", cfg.socket_path.c_str(),
               static_cast<unsigned>(cfg.socket_mode), *max_frame);
  Impl* raw = s.get();
  s->thread = std::thread([raw] { raw->loop(); });
  return std::unique_ptr<Server>(new Server(std::move(s)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { stop(std::chrono::milliseconds(0)); }

server::Counters Server::counters() const { return impl_->published.load(); }

const server::WriteStats& Server::write_stats() const { return impl_->requests.write_stats(); }

void Server::set_partition_count(const std::string& table, int32_t n) {
  for (auto& t : impl_->tables.list) {
    if (t->name == table) t->partitions.store(n, std::memory_order_relaxed);
  }
}

void Server::applied() {
  // seq_cst: the applier stored the offsets before this load; a waiter is
  // counted before its offsets are loaded (Requests). One of the two sees
  // the other (store-buffering), so no waiter is missed.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (impl_->requests.visible_count().load(std::memory_order_relaxed) == 0) return;
  const uint64_t one = 1;
  (void)!::write(impl_->fds.wake, &one, sizeof one);
}

void Server::stop(std::chrono::milliseconds drain) {
  if (!impl_->thread.joinable()) return;
  impl_->drain_ms.store(drain.count());
  impl_->stopping.store(true);
  const uint64_t one = 1;
  (void)!::write(impl_->fds.wake, &one, sizeof one);
  impl_->thread.join();
  ::unlink(impl_->cfg.socket_path.c_str());
}

// How long epoll may sleep: until the next request deadline, at most a
// second; shorter while records wait for producer queue space, while
// connections need their timeouts checked, and while stopping.
int Server::Impl::wait_timeout(clock::time_point now, bool stopping_now) {
  int timeout_ms = 1000;
  if (const auto d = requests.next_deadline()) {
    timeout_ms = *d <= now
                     ? 0
                     : static_cast<int>(std::min<int64_t>(
                           1000, std::chrono::ceil<std::chrono::milliseconds>(*d - now).count()));
  }
  if (producer.has_parked()) timeout_ms = std::min(timeout_ms, 10);  // queue space frees up
  if (!conns.empty())
    timeout_ms = std::min(timeout_ms, static_cast<int>(kConnCheckInterval.count()));
  if (stopping_now) timeout_ms = std::min(timeout_ms, 10);
  return timeout_ms;
}

void Server::Impl::dispatch(const epoll_event& ev) {
  const uint64_t tag = ev.data.u64;
  if (tag == kListenTag) {
    conns.accept_all();
  } else if (tag == kWakeTag) {
    uint64_t v;
    (void)!::read(fds.wake, &v, sizeof v);
  } else if (tag == kKafkaTag) {
    char buf[256];
    while (::read(fds.kafka_pipe[0], buf, sizeof buf) > 0) {
    }
  } else {
    conns.on_event(tag, ev.events);
  }
}

void Server::Impl::loop() {
  std::vector<epoll_event> events(256);
  std::optional<clock::time_point> stop_by;
  for (;;) {
    auto now = clock::now();
    const int n = ::epoll_wait(fds.epoll, events.data(), static_cast<int>(events.size()),
                               wait_timeout(now, stop_by.has_value()));
    now = clock::now();
    conns.set_now(now);
    requests.set_now(now);
    for (int i = 0; i < n; ++i) dispatch(events[i]);
    producer.poll();                                      // delivery reports -> Requests::delivered
    if (producer.retry_parked()) conns.mark_all_dirty();  // reading resumes
    requests.check_visible();
    now = clock::now();
    conns.set_now(now);
    requests.set_now(now);
    requests.expire(now);
    conns.serve();
    publish_counters();
    if (stopping.load() && !stop_by) {
      stop_by = now + std::chrono::milliseconds(drain_ms.load());
      conns.stop_reading();
    }
    if (stop_by && (requests.unanswered() == 0 || now >= *stop_by)) break;
  }
  shut_down();
}

// Whatever is left is answered with a clear error, then everything closes.
void Server::Impl::shut_down() {
  requests.answer_all_at_stop();
  conns.flush_all_blocking();
  // Records not yet acknowledged are dropped from the queue; their delivery
  // reports arrive here, for requests already answered.
  producer.purge();
}

}  // namespace kvs::daemon
