#include "server/connections.hpp"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "log.hpp"
#include "memory.hpp"

namespace kvs::daemon::server {
namespace {

constexpr size_t kReadChunk = 64 * 1024;
constexpr size_t kMaxUnsentBytes = 4 << 20;  // replies a client has not read: stop reading it
// Input buffer every connection may hold without drawing on
// max_unfinished_frame_bytes: one read, so that small requests never wait.
constexpr size_t kFreeInputBytes = kReadChunk;
constexpr auto kCheckInterval = std::chrono::milliseconds(250);
constexpr auto kLogInterval = std::chrono::seconds(10);

// Logs `why; what` at most once per kLogInterval, counting the ones not
// logged.
void log_limited(const std::string& why, const char* what, clock::time_point& next,
                 uint64_t& not_logged) {
  const auto now = clock::now();
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
  next = now + kLogInterval;
}

}  // namespace

Connections::Connections(const config::Config& cfg, const PeerAccess& access, Delegate& d,
                         uint32_t max_frame_bytes, const std::atomic<bool>& stopping)
    : cfg_(cfg),
      access_(access),
      delegate_(d),
      max_frame_bytes_(max_frame_bytes),
      stopping_(stopping),
      read_buf_(std::make_unique<char[]>(kReadChunk)) {}

static void close_attached(Conn& c) {
  for (auto& a : c.attached) {
    for (int fd : a.fds) ::close(fd);
  }
  c.attached.clear();
}

Connections::~Connections() {
  for (auto& [id, c] : conns_) {
    close_attached(c);
    ::close(c.fd);
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

Result<void> Connections::open_socket() {
  auto fd = open_listening_socket(cfg_);
  if (!fd) return std::move(fd).error();
  listen_fd_ = *fd;
  return {};
}

std::string Connections::refusal(const Conn& c, Errc* code) const {
  *code = Errc::kPermission;
  if (!c.write_refusal.empty() && !c.read_refusal.empty()) {
    return c.write_refusal + "; " + c.read_refusal;
  }
  if (conns_.size() >= cfg_.max_connections) {
    *code = Errc::kBusy;
    return "kvsd serves max_connections = " + std::to_string(cfg_.max_connections) +
           " connections already; retry later or raise it";
  }
  return "";
}

void Connections::accept_all() {
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN)
        KVS_LOG_WARN("accept on %s: %s", cfg_.socket_path.c_str(), std::strerror(errno));
      return;
    }
    auto peer = peer_of(fd);
    if (!peer) {
      KVS_LOG_WARN("%s; connection refused", peer.error().message.c_str());
      ::close(fd);
      continue;
    }
    Conn c;
    c.fd = fd;
    c.uid = peer->uid;
    c.gid = peer->gid;
    c.pid = peer->pid;
    c.write_refusal = access_.write_refusal(*peer);
    c.read_refusal = access_.read_refusal(*peer);
    c.accepted = now_;
    Errc code;
    if (const std::string why = refusal(c, &code); !why.empty()) {
      ++n_refused_;
      log_limited(why, "connection refused", next_refusal_log_, refusals_not_logged_);
      std::string frame;
      proto::encode_error(frame, 0, static_cast<int32_t>(code), why);
      (void)!::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      ::close(fd);
      continue;
    }
    c.id = next_id_++;
    KVS_LOG_DEBUG("connection %llu from uid %u gid %u pid %d",
                  static_cast<unsigned long long>(c.id), c.uid, c.gid, c.pid);
    auto [it, _] = conns_.emplace(c.id, std::move(c));
    update_interest(it->second);
  }
}

Conn* Connections::find(uint64_t id) {
  auto it = conns_.find(id);
  return it == conns_.end() ? nullptr : &it->second;
}

void Connections::mark_dirty(Conn& c) {
  // Counted at once, not at the flush: the other connections read in this
  // round must see these replies in the total (max_unsent_reply_bytes).
  count_unsent(c);
  if (c.dirty) return;
  c.dirty = true;
  dirty_.push_back(c.id);
}

void Connections::mark_all_dirty() {
  for (auto& [id, c] : conns_) mark_dirty(c);
}

void Connections::count_unsent(Conn& c) {
  const size_t unsent = c.out.size() - c.out_off;
  unsent_total_ = unsent_total_ + unsent - c.out_counted;
  c.out_counted = unsent;
}

// unsent_total_ with c's replies counted as they are now (they are counted
// into it when c is marked dirty or flushed).
uint64_t Connections::unsent_with(const Conn& c) const {
  return unsent_total_ - c.out_counted + (c.out.size() - c.out_off);
}

bool Connections::may_read(const Conn& c) const {
  // Before HELLO a connection sends no writes: it is read while the
  // producer is paused too (a refused writer learns why at once).
  return !c.closing && !c.eof && !c.budget_wait && (!c.hello || !delegate_.paused()) &&
         c.pending < cfg_.max_pending_per_connection &&
         c.out.size() - c.out_off < kMaxUnsentBytes &&
         (c.out.size() == c.out_off || unsent_with(c) < cfg_.max_unsent_reply_bytes) &&
         !stopping_.load();
}

void Connections::update_interest(Conn& c) {
  uint32_t want = 0;
  if (may_read(c)) want |= EPOLLIN;
  if (c.out.size() > c.out_off) want |= EPOLLOUT;
  if (want == c.events && c.events != 0) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  if (c.events == 0 && want != 0) {
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, c.fd, &ev);
  } else if (want == 0) {
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.fd, nullptr);
  } else {
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
  }
  c.events = want;
}

void Connections::account(Conn& c) {
  const size_t cap = c.in.capacity();
  const size_t want = cap > kFreeInputBytes ? cap - kFreeInputBytes : 0;
  if (want < c.charged) budget_freed_ = true;
  budget_used_ = budget_used_ + want - c.charged;
  c.charged = want;
}

// How many bytes the next recv may take (0: wait for the budget). Reads
// fill the buffer, never grow it, except for the frame at its front, whose
// length the header gives: a frame over the free allowance reserves its
// whole size at once, so that two large frames can never each hold part of
// the budget and wait for the other. A frame larger than the whole budget
// may take it while nothing else uses any.
size_t Connections::read_room(Conn& c) {
  if (c.in_off > 0) {  // parsed bytes: the buffer keeps only what is not
    c.in.erase(0, c.in_off);
    c.in_off = 0;
  }
  size_t cap = std::max(c.in.capacity(), kFreeInputBytes);
  if (c.in.size() >= 4) {
    uint32_t length;
    std::memcpy(&length, c.in.data(), sizeof length);  // checked by split() already
    const size_t frame = 4 + size_t{std::min(length, max_frame_bytes_)};
    if (frame > cap) {
      const size_t more = frame - std::max(c.in.capacity(), kFreeInputBytes);
      if (budget_used_ != 0 && budget_used_ + more > cfg_.max_unfinished_frame_bytes) return 0;
      c.in.reserve(frame);
      account(c);
      cap = frame;
    }
  }
  return cap > c.in.size() ? std::min(kReadChunk, cap - c.in.size()) : 0;
}

// Frees a connection's input buffer (empty, or to be dropped), so that
// memory follows the frames in flight, not the largest one ever seen.
void Connections::release_input(Conn& c) {
  if (c.charged > 0) trim_due_ = true;
  std::string().swap(c.in);
  c.in_off = 0;
  account(c);
}

// Waiters try again only after some of the budget was freed: in the order
// they came, so that the ones that waited longest get it first.
void Connections::wake_budget_waiters() {
  if (budget_waiters_.empty() || !budget_freed_) return;
  budget_freed_ = false;
  std::vector<uint64_t> ids;
  ids.swap(budget_waiters_);
  for (uint64_t id : ids) {
    Conn* c = find(id);
    if (c == nullptr) continue;
    c->budget_wait = false;
    update_interest(*c);
  }
}

void Connections::check_timeouts() {
  using std::chrono::milliseconds;
  for (auto& [id, c] : conns_) {
    if (c.closing) continue;
    // While kvsd does not read a connection (its producer queue is full,
    // the connection's requests wait for Kafka, or the budget is spent),
    // its time does not run.
    if (c.budget_wait || delegate_.paused() || c.pending >= cfg_.max_pending_per_connection) {
      if (!c.hello) c.accepted = now_;
      if (c.frame_started != clock::time_point{}) c.frame_started = now_;
      continue;
    }
    std::string why;
    if (!c.hello && now_ - c.accepted > milliseconds(cfg_.hello_timeout_ms)) {
      why =
          "no handshake (HELLO) within hello_timeout_ms = " + std::to_string(cfg_.hello_timeout_ms);
    } else if (c.frame_started != clock::time_point{} &&
               now_ - c.frame_started > milliseconds(cfg_.frame_timeout_ms)) {
      why = "a request still incomplete " + std::to_string(cfg_.frame_timeout_ms) +
            " ms after its first bytes (frame_timeout_ms): a stalled or far too slow client";
    }
    if (why.empty()) continue;
    ++n_timed_out_;
    log_limited("connection from uid " + std::to_string(c.uid) + " pid " + std::to_string(c.pid) +
                    ": " + why,
                "closed it", next_close_log_, closes_not_logged_);
    reply_error(c, 0, Errc::kTimeout, why + "; closing the connection");
    c.closing = true;
    c.frame_started = {};
    release_input(c);
  }
}

void Connections::close_conn(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  close_attached(it->second);
  ::close(it->second.fd);  // also leaves the epoll set
  if (it->second.in.capacity() >= kFreeInputBytes) trim_due_ = true;
  if (it->second.charged > 0) budget_freed_ = true;
  budget_used_ -= it->second.charged;
  unsent_total_ -= it->second.out_counted;
  conns_.erase(it);
}

void Connections::on_event(uint64_t id, uint32_t ev) {
  Conn* c = find(id);
  if (c == nullptr) return;
  if (ev & EPOLLOUT) flush(*c);
  c = find(id);
  if (c == nullptr) return;
  if ((ev & (EPOLLHUP | EPOLLERR)) && !may_read(*c)) {
    close_conn(id);  // gone while not being read: nobody to answer
    return;
  }
  if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_from(*c);
}

void Connections::read_from(Conn& c) {
  const uint64_t id = c.id;
  while (may_read(c)) {
    const size_t room = read_room(c);
    if (room == 0) {
      c.budget_wait = true;
      budget_waiters_.push_back(id);
      break;
    }
    const ssize_t n = ::recv(c.fd, read_buf_.get(), room, 0);
    if (n > 0) {
      c.in.append(read_buf_.get(), static_cast<size_t>(n));
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
    if (find(id) == nullptr) return;
    // A short read took all there was: the next recv would only say EAGAIN.
    // (Level-triggered epoll reports whatever arrives after it.)
    if (static_cast<size_t>(n) < room) break;
  }
  mark_dirty(c);
}

void Connections::process_input(Conn& c) {
  bool incomplete = false, parsed = false;
  while (may_read(c)) {
    proto::Header h;
    std::string_view body;
    std::string why;
    const std::string_view buf = std::string_view(c.in).substr(c.in_off);
    const uint32_t limit = c.hello ? max_frame_bytes_ : proto::kHelloMaxFrameBytes;
    const proto::Split s = proto::split(buf, limit, &h, &body, &why);
    if (s == proto::Split::kIncomplete) {
      incomplete = c.in.size() > c.in_off;
      break;
    }
    if (s == proto::Split::kBad) {
      protocol_error(c, h.request_id, why + "; closing the connection");
      c.closing = true;
      break;
    }
    c.in_off += proto::kHeaderBytes + body.size();
    parsed = true;
    ++n_frames_;
    if (c.hello || static_cast<proto::Type>(h.type) == proto::Type::kOpen) {
      delegate_.frame(c, h, body);  // a reader's OPEN needs no handshake
    } else if (!handshake(c, h, body)) {
      c.closing = true;
    }
  }
  delegate_.frames_done();  // before the input buffer changes
  // frame_timeout_ms runs from the first bytes of the frame still unfinished.
  if (!incomplete) {
    c.frame_started = {};
  } else if (parsed || c.frame_started == clock::time_point{}) {
    c.frame_started = now_;
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
    trim_due_ = true;
    account(c);
  } else if (c.in_off > (1 << 20)) {
    c.in.erase(0, c.in_off);
    c.in_off = 0;
  }
  mark_dirty(c);
}

// The first frame must be a HELLO that agrees on the version; false (the
// connection closes, with the error sent) otherwise.
bool Connections::handshake(Conn& c, const proto::Header& h, std::string_view body) {
  if (!c.write_refusal.empty()) {  // a reader: it may only OPEN
    ++n_refused_;
    log_limited(c.write_refusal, "connection refused", next_refusal_log_, refusals_not_logged_);
    reply_error(c, 0, Errc::kPermission, c.write_refusal);
    return false;
  }
  if (static_cast<proto::Type>(h.type) != proto::Type::kHello) {
    protocol_error(
        c, h.request_id,
        "expected hello, got " + proto::type_name(h.type) +
            " (a client starts with HELLO; see docs/protocol.md); closing the connection");
    return false;
  }
  auto hello = proto::decode_hello(body);
  if (!hello) {
    protocol_error(c, h.request_id, hello.error().message);
    return false;
  }
  if (hello->min_version > proto::kVersion || hello->max_version < proto::kVersion) {
    reply_error(c, h.request_id, Errc::kProtocol,
                "client speaks protocol versions " + std::to_string(hello->min_version) + ".." +
                    std::to_string(hello->max_version) + ", this kvsd speaks " +
                    std::to_string(proto::kVersion) + "; upgrade the older side");
    return false;
  }
  c.hello = true;
  proto::encode_hello_ok(c.out, h.request_id,
                         proto::HelloOk{proto::kVersion, max_frame_bytes_, "kvsd 0.1"});
  mark_dirty(c);
  return true;
}

void Connections::reply_error(Conn& c, uint64_t id, Errc code, const std::string& message) {
  proto::encode_error(c.out, id, static_cast<int32_t>(code), message);
  mark_dirty(c);
}

void Connections::protocol_error(Conn& c, uint64_t id, const std::string& why) {
  ++n_protocol_errors_;
  reply_error(c, id, Errc::kProtocol, why);
}

void Connections::attach(Conn& c, std::vector<int> fds) {
  c.attached.push_back(Attached{c.out.size(), std::move(fds)});
}

ssize_t Connections::send_some(Conn& c) {
  size_t len = c.out.size() - c.out_off;
  if (c.attached.empty()) return ::send(c.fd, c.out.data() + c.out_off, len, MSG_NOSIGNAL);
  Attached& a = c.attached.front();
  if (a.at > c.out_off) {  // the bytes before it go alone
    return ::send(c.fd, c.out.data() + c.out_off, std::min(len, a.at - c.out_off), MSG_NOSIGNAL);
  }
  // The descriptors ride on the reply's first byte; the receiver collects
  // them with the reply (a stream socket does not merge across them). The
  // next reply's descriptors go with its own first byte.
  if (c.attached.size() > 1) len = std::min(len, c.attached[1].at - c.out_off);
  iovec iov{c.out.data() + c.out_off, len};
  std::vector<char> control(CMSG_SPACE(a.fds.size() * sizeof(int)));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(a.fds.size() * sizeof(int));
  std::memcpy(CMSG_DATA(cm), a.fds.data(), a.fds.size() * sizeof(int));
  const ssize_t n = ::sendmsg(c.fd, &msg, MSG_NOSIGNAL);
  if (n > 0) {
    for (int fd : a.fds) ::close(fd);
    c.attached.erase(c.attached.begin());
  }
  return n;
}

void Connections::flush(Conn& c) {
  while (c.out.size() > c.out_off) {
    const ssize_t n = send_some(c);
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
      trim_due_ = true;
    }
    if (c.closing) {
      close_conn(c.id);
      return;
    }
  }
  count_unsent(c);
  update_interest(c);
}

void Connections::serve() {
  if (now_ >= next_check_) {
    next_check_ = now_ + kCheckInterval;
    check_timeouts();
  }
  todo_.clear();
  todo_.swap(dirty_);
  for (uint64_t id : todo_) {
    Conn* c = find(id);
    if (c == nullptr) continue;
    c->dirty = false;
    if (may_read(*c) && c->in.size() > c->in_off) process_input(*c);
    flush(*c);
  }
  wake_budget_waiters();
  give_back_memory();
}

// glibc keeps freed buffers in its heap; slow clients that held megabytes
// each must not leave kvsd that large (at most once a second).
void Connections::give_back_memory() {
  if (!trim_due_ || now_ < next_trim_) return;
  give_back_free_memory();
  trim_due_ = false;
  next_trim_ = now_ + std::chrono::seconds(1);
}

void Connections::stop_reading() {
  if (listen_fd_ >= 0) ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
  for (auto& [id, c] : conns_) update_interest(c);
}

void Connections::flush_all_blocking() {
  std::vector<uint64_t> ids;
  for (auto& [id, c] : conns_) ids.push_back(id);
  for (uint64_t id : ids) {
    Conn* c = find(id);
    if (c == nullptr) continue;
    timeval tv{0, 200000};
    ::setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    ::fcntl(c->fd, F_SETFL, ::fcntl(c->fd, F_GETFL) & ~O_NONBLOCK);
    flush(*c);
  }
}

std::string Connections::stats_counts_json() const {
  return "\"connections\":" + std::to_string(conns_.size()) +
         ",\"requests\":" + std::to_string(n_frames_);
}

void Connections::add_counters(Counters& c) const {
  c.connections = conns_.size();
  c.requests = n_frames_;
  c.protocol_errors = n_protocol_errors_;
  c.refused_connections = n_refused_;
  c.timed_out_connections = n_timed_out_;
  c.unfinished_frame_bytes = budget_used_;
  c.waiting_for_frame_memory = budget_waiters_.size();
  c.unsent_reply_bytes = unsent_total_;
}

std::string Connections::stats_flow_json() const {
  return "\"protocol_errors\":" + std::to_string(n_protocol_errors_) +
         ",\"refused_connections\":" + std::to_string(n_refused_) +
         ",\"timed_out_connections\":" + std::to_string(n_timed_out_) +
         ",\"unfinished_frame_bytes\":" + std::to_string(budget_used_) +
         ",\"waiting_for_frame_memory\":" + std::to_string(budget_waiters_.size()) +
         ",\"unsent_reply_bytes\":" + std::to_string(unsent_total_);
}

}  // namespace kvs::daemon::server
