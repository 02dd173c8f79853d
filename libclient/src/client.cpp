// libkvs's write client: the C ABI of kvs.h's "Writes through kvsd" over the
// socket protocol of docs/protocol.md.
//
// One non-blocking socket; every call that waits uses poll() with a deadline
// and, while it waits to send, also reads answers: kvsd stops reading a client
// whose answers pile up, and a client that only sent would then deadlock.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "kvs/kvs.h"
#include "kvs/result.hpp"
#include "protocol/frame.hpp"
#include "protocol/request_table.hpp"

namespace kvs::detail {
int set_last_error(int code, std::string message);  // reader/errors.cpp
}

using namespace kvs;
namespace proto = kvs::protocol;

namespace {

using clock = std::chrono::steady_clock;
constexpr const char* kDefaultSocket = "/run/kvs/kvsd.sock";
// When a request leaves the timeout to kvsd, kvsd still answers within its
// write_timeout_ms (at most an hour); the client gives up only after that.
constexpr int kNoTimeoutWaitMs = 3600 * 1000 + 5000;
constexpr int kReplyGraceMs = 5000;  // beyond the request's timeout
constexpr size_t kSendBatchBytes = 16 * 1024;

int fail(Errc code, std::string message) {
  return detail::set_last_error(static_cast<int>(code), std::move(message));
}

struct Outcome {
  bool done = false;
  int code = KVS_OK;
  std::string message;
  std::vector<proto::BatchResult> batch;
  proto::Token token;
  std::string body;  // PONG, STATS_OK
};

struct Pending {
  kvs_write_cb cb = nullptr;        // async put or erase
  kvs_batch_cb batch_cb = nullptr;  // async batch of `count` operations
  size_t count = 0;
  void* ctx = nullptr;
  Outcome* sync = nullptr;  // a synchronous call waiting for it
};

}  // namespace

struct kvs_client {
  int fd = -1;
  std::string path;
  uint64_t next_id = 1;
  uint32_t max_frame_bytes = proto::kHelloMaxFrameBytes;
  std::string in;
  std::string out;  // frames not yet sent
  size_t out_off = 0;
  proto::RequestTable<Pending> pending;  // requests without an answer
  size_t async_pending = 0;
  bool broken = false;
  std::string broken_why;

  ~kvs_client() {
    if (fd >= 0) ::close(fd);
  }

  int broke(const std::string& why) {
    broken = true;
    broken_why = "connection to kvsd at " + path + " lost: " + why + "; reconnect";
    return fail(Errc::kConnection, broken_why);
  }

  // Parses every whole frame in `in`, completing calls and running callbacks.
  int dispatch(int* ran) {
    size_t off = 0;
    int rc = KVS_OK;
    while (rc == KVS_OK) {
      proto::Header h;
      std::string_view body;
      std::string why;
      const proto::Split s =
          proto::split(std::string_view(in).substr(off), 0x7fffffff, &h, &body, &why);
      if (s == proto::Split::kIncomplete) break;
      if (s == proto::Split::kBad) {
        rc = broke("kvsd sent a bad frame: " + why);
        break;
      }
      off += proto::kHeaderBytes + body.size();
      rc = complete(h, body, ran);
    }
    in.erase(0, off);
    return rc;
  }

  int complete(const proto::Header& h, std::string_view body, int* ran) {
    Outcome o;
    o.done = true;
    const auto type = static_cast<proto::Type>(h.type);
    if (type == proto::Type::kError) {
      auto e = proto::decode_error(body);
      if (!e) return broke(e.error().message);
      o.code = e->code;
      o.message = "kvsd: " + std::string(e->message);
      if (h.request_id == 0) {
        // Not an answer to a request: kvsd refused or closed the connection.
        const int code = o.code;
        broken = true;
        broken_why = o.message;
        return fail(static_cast<Errc>(code), o.message);
      }
    } else if (type == proto::Type::kPutOk || type == proto::Type::kEraseOk) {
      auto t = proto::decode_token(body);
      if (!t) return broke(t.error().message);
      o.token = *t;
    } else if (type == proto::Type::kBatchOk) {
      auto b = proto::decode_batch_ok(body);
      if (!b) return broke(b.error().message);
      o.batch = std::move(*b);
    } else {
      o.body.assign(body);
    }
    Pending p;
    if (!pending.take(h.request_id, &p)) return KVS_OK;  // a call that gave up on it
    if (p.sync) {
      *p.sync = std::move(o);
    } else if (p.cb) {
      --async_pending;
      ++*ran;
      kvs_token tok{o.token.partition, o.token.offset};
      if (o.code != KVS_OK) detail::set_last_error(o.code, o.message);
      p.cb(p.ctx, o.code, o.code == KVS_OK ? &tok : nullptr);
    } else if (p.batch_cb) {
      --async_pending;
      ++*ran;
      if (o.code == KVS_OK && o.batch.size() != p.count) {
        o.code = KVS_EPROTO;
        o.message = "kvsd answered a batch of " + std::to_string(p.count) + " with " +
                    std::to_string(o.batch.size()) + " results";
      }
      if (o.code != KVS_OK) {
        detail::set_last_error(o.code, o.message);
        p.batch_cb(p.ctx, o.code, p.count, nullptr, nullptr);
      } else {
        std::vector<int> results(p.count);
        std::vector<kvs_token> tokens(p.count);
        for (size_t i = 0; i < p.count; ++i) {
          results[i] = o.batch[i].code;
          tokens[i] = {o.batch[i].token.partition, o.batch[i].token.offset};
        }
        p.batch_cb(p.ctx, KVS_OK, p.count, results.data(), tokens.data());
      }
    }
    return KVS_OK;
  }

  // Registers an async request (its frame is already in `out`) and sends as
  // the corking rule says: writes go out in one syscall once kSendBatchBytes
  // are queued, else with the next poll, flush or synchronous call (as
  // hiredis pipelines). Past 1 MiB unsent the caller waits until kvsd takes
  // some (backpressure).
  int queue_async(uint64_t id, const Pending& p, int wait_ms) {
    pending.insert(id, p);
    ++async_pending;
    const size_t queued = out.size() - out_off;
    if (queued > (1 << 20)) return send_frame(wait_ms);
    if (queued >= kSendBatchBytes) return send_some();
    return KVS_OK;
  }

  // One round of I/O: sends what it can, reads what arrived, dispatches.
  // Waits up to timeout_ms for something to happen.
  int pump(int timeout_ms, int* ran) {
    if (broken) return fail(Errc::kConnection, broken_why);
    if (int rc = send_some(); rc != KVS_OK) return rc;
    pollfd p{fd, POLLIN, 0};
    if (out.size() > out_off) p.events |= POLLOUT;
    const int n = ::poll(&p, 1, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) return KVS_OK;
      return fail(Errc::kSystem, std::string("poll: ") + std::strerror(errno));
    }
    if (n == 0) return KVS_OK;
    if (p.revents & POLLOUT) {
      if (int rc = send_some(); rc != KVS_OK) return rc;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[64 * 1024];
      for (;;) {
        const ssize_t r = ::recv(fd, buf, sizeof buf, 0);
        if (r > 0) {
          in.append(buf, static_cast<size_t>(r));
          if (static_cast<size_t>(r) < sizeof buf) break;
          continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
        // Answers that came before the close still count.
        if (int rc = dispatch(ran); rc != KVS_OK) return rc;
        return broke(r == 0 ? "kvsd closed it" : std::strerror(errno));
      }
      return dispatch(ran);
    }
    return KVS_OK;
  }

  // Sends what the socket takes now, without waiting.
  int send_some() {
    while (out.size() > out_off) {
      const ssize_t w = ::send(fd, out.data() + out_off, out.size() - out_off, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        return broke(std::strerror(errno));
      }
      out_off += static_cast<size_t>(w);
    }
    if (out_off == out.size()) {
      out.clear();
      out_off = 0;
    }
    return KVS_OK;
  }

  // Queues a frame, then sends (and reads) until it is all sent.
  int send_frame(int deadline_ms) {
    const auto deadline = clock::now() + std::chrono::milliseconds(deadline_ms);
    int ran = 0;
    while (out.size() > out_off) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
      if (left <= 0) {
        return fail(Errc::kTimeout, "kvsd at " + path + " did not take the request within " +
                                        std::to_string(deadline_ms) + " ms (backpressure)");
      }
      if (int rc = pump(static_cast<int>(left), &ran); rc != KVS_OK) return rc;
    }
    return KVS_OK;
  }

  // Sends a request and waits for its answer.
  int call(int wait_ms, Outcome* o) {
    const uint64_t id = next_id - 1;
    pending.insert(id, Pending{nullptr, nullptr, 0, nullptr, o});
    const auto deadline = clock::now() + std::chrono::milliseconds(wait_ms);
    int rc = send_frame(wait_ms);
    int ran = 0;
    while (rc == KVS_OK && !o->done) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
      if (left <= 0) {
        rc = fail(Errc::kTimeout,
                  "no answer from kvsd at " + path + " within " + std::to_string(wait_ms) + " ms");
        break;
      }
      rc = pump(static_cast<int>(left), &ran);
    }
    if (!o->done) {
      pending.erase(id);
      return rc;
    }
    if (o->code != KVS_OK) return fail(static_cast<Errc>(o->code), o->message);
    return KVS_OK;
  }

  uint64_t take_id() { return next_id++; }
};

namespace {

int wait_ms_for(const kvs_write_options* o) {
  return (o && o->timeout_ms) ? static_cast<int>(o->timeout_ms) + kReplyGraceMs : kNoTimeoutWaitMs;
}

int check_write_args(kvs_client* c, const char* table, const void* key, size_t key_len,
                     const char* fn) {
  if (c == nullptr || table == nullptr || (key == nullptr && key_len > 0)) {
    return fail(Errc::kInvalidArgument, std::string(fn) + ": NULL argument");
  }
  const size_t tl = std::strlen(table);
  if (tl == 0 || tl > proto::kMaxTableName) {
    return fail(Errc::kInvalidArgument, std::string(fn) + ": table name of " + std::to_string(tl) +
                                            " bytes (1.." + std::to_string(proto::kMaxTableName) +
                                            ")");
  }
  if (c->broken) return fail(Errc::kConnection, c->broken_why);
  return KVS_OK;
}

std::string_view bytes(const void* p, size_t n) {
  return n ? std::string_view(static_cast<const char*>(p), n) : std::string_view();
}

// Encodes a put (value != NULL) or erase; refuses a frame kvsd would refuse.
int encode_write(kvs_client* c, const char* table, const void* key, size_t key_len,
                 const void* value, size_t value_len, bool is_put, const kvs_write_options* o,
                 uint64_t id) {
  proto::Write w;
  w.table = table;
  w.timeout_ms = o ? o->timeout_ms : 0;
  w.key = bytes(key, key_len);
  if (is_put) w.value = bytes(value, value_len);
  const size_t before = c->out.size();
  proto::encode_write(c->out, id, o && o->visible, w);
  if (c->out.size() - before > c->max_frame_bytes) {
    c->out.resize(before);
    return fail(Errc::kTooLarge, "a write of " + std::to_string(key_len) + "-byte key and " +
                                     std::to_string(value_len) + "-byte value is over kvsd's " +
                                     std::to_string(c->max_frame_bytes) + "-byte frame limit");
  }
  return KVS_OK;
}

// Encodes a batch into c->out; refuses a frame kvsd would refuse.
int encode_batch(kvs_client* c, const char* table, const kvs_write_op* ops, size_t count,
                 const kvs_write_options* o, uint64_t id, const char* fn) {
  if (int rc = check_write_args(c, table, ops, count, fn); rc != KVS_OK) return rc;
  if (count == 0) return fail(Errc::kInvalidArgument, std::string(fn) + ": no operations");
  proto::Batch b;
  b.table = table;
  b.timeout_ms = o ? o->timeout_ms : 0;
  b.ops.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    if ((ops[i].key == nullptr && ops[i].key_len) ||
        (ops[i].value == nullptr && ops[i].value_len)) {
      return fail(Errc::kInvalidArgument,
                  std::string(fn) + ": operation " + std::to_string(i) + " has a NULL pointer");
    }
    proto::BatchOp op{bytes(ops[i].key, ops[i].key_len), std::nullopt};
    if (ops[i].value) op.value = bytes(ops[i].value, ops[i].value_len);
    b.ops.push_back(op);
  }
  const size_t before = c->out.size();
  proto::encode_batch(c->out, id, o && o->visible, b);
  if (c->out.size() - before > c->max_frame_bytes) {
    c->out.resize(before);
    return fail(Errc::kTooLarge, "a batch of " + std::to_string(count) + " operations is over " +
                                     "kvsd's " + std::to_string(c->max_frame_bytes) +
                                     "-byte frame limit; split it");
  }
  return KVS_OK;
}

// A put (is_put) or erase that waits for kvsd's answer.
int write_sync(kvs_client* c, const char* table, const void* key, size_t key_len, const void* value,
               size_t value_len, bool is_put, const kvs_write_options* o, kvs_token* token,
               const char* fn) {
  if (int rc = check_write_args(c, table, key, key_len, fn); rc != KVS_OK) return rc;
  try {
    if (int rc = encode_write(c, table, key, key_len, value, value_len, is_put, o, c->take_id());
        rc != KVS_OK)
      return rc;
    Outcome out;
    if (int rc = c->call(wait_ms_for(o), &out); rc != KVS_OK) return rc;
    if (token) *token = {out.token.partition, out.token.offset};
    return KVS_OK;
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, std::string(fn) + ": out of memory");
  }
}

}  // namespace

extern "C" {

int kvs_connect(const char* socket_path, kvs_client** out) {
  if (out == nullptr) return fail(Errc::kInvalidArgument, "kvs_connect: NULL argument");
  *out = nullptr;
  std::string path = socket_path ? socket_path : "";
  if (path.empty()) {
    const char* env = std::getenv("KVS_SOCKET");
    path = env && *env ? env : kDefaultSocket;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    return fail(Errc::kInvalidArgument, "kvs_connect: socket path " + path + " is over " +
                                            std::to_string(sizeof addr.sun_path - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  try {
    auto c = std::make_unique<kvs_client>();
    c->path = path;
    c->fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0) return fail(Errc::kSystem, std::string("socket: ") + std::strerror(errno));
    if (::connect(c->fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      const int e = errno;
      if (e == EACCES || e == EPERM) {
        return fail(Errc::kPermission, "cannot connect to kvsd at " + path + ": " +
                                           std::strerror(e) +
                                           " (the socket's group is kvsd.socket_group)");
      }
      return fail(Errc::kConnection, "cannot connect to kvsd at " + path + ": " + std::strerror(e) +
                                         " (is kvsd running?)");
    }
    proto::encode_hello(c->out, c->take_id(), proto::Hello{});
    Outcome o;
    if (int rc = c->call(5000, &o); rc != KVS_OK) return rc;
    auto h = proto::decode_hello_ok(o.body);
    if (!h) return fail(Errc::kProtocol, "kvsd's hello: " + h.error().message);
    c->max_frame_bytes = h->max_frame_bytes;
    *out = c.release();
    return KVS_OK;
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, "kvs_connect: out of memory");
  }
}

void kvs_disconnect(kvs_client* c) {
  if (c == nullptr) return;
  const std::vector<Pending> left = c->pending.take_all();
  delete c;
  for (const Pending& p : left) {
    if (p.cb == nullptr && p.batch_cb == nullptr) continue;
    detail::set_last_error(KVS_ECONN,
                           "disconnected before kvsd answered; the write may be applied");
    if (p.cb) {
      p.cb(p.ctx, KVS_ECONN, nullptr);
    } else {
      p.batch_cb(p.ctx, KVS_ECONN, p.count, nullptr, nullptr);
    }
  }
}

int kvs_put(kvs_client* c, const char* table, const void* key, size_t key_len, const void* value,
            size_t value_len, const kvs_write_options* o, kvs_token* token) {
  if (value == nullptr && value_len > 0) return fail(Errc::kInvalidArgument, "kvs_put: NULL value");
  return write_sync(c, table, key, key_len, value, value_len, true, o, token, "kvs_put");
}

int kvs_erase(kvs_client* c, const char* table, const void* key, size_t key_len,
              const kvs_write_options* o, kvs_token* token) {
  return write_sync(c, table, key, key_len, nullptr, 0, false, o, token, "kvs_erase");
}

int kvs_write_batch(kvs_client* c, const char* table, const kvs_write_op* ops, size_t count,
                    const kvs_write_options* o, int* results, kvs_token* tokens) {
  try {
    if (int rc = encode_batch(c, table, ops, count, o, c ? c->take_id() : 0, "kvs_write_batch");
        rc != KVS_OK)
      return rc;
    Outcome out;
    if (int rc = c->call(wait_ms_for(o), &out); rc != KVS_OK) return rc;
    if (out.batch.size() != count) {
      return c->broke("kvsd answered a batch of " + std::to_string(count) + " with " +
                      std::to_string(out.batch.size()) + " results");
    }
    for (size_t i = 0; i < count; ++i) {
      if (results) results[i] = out.batch[i].code;
      if (tokens) tokens[i] = {out.batch[i].token.partition, out.batch[i].token.offset};
    }
    return KVS_OK;
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, "kvs_write_batch: out of memory");
  }
}

int kvs_write_batch_async(kvs_client* c, const char* table, const kvs_write_op* ops, size_t count,
                          const kvs_write_options* o, kvs_batch_cb cb, void* ctx) {
  if (cb == nullptr) return fail(Errc::kInvalidArgument, "kvs_write_batch_async: NULL callback");
  try {
    const uint64_t id = c ? c->take_id() : 0;
    if (int rc = encode_batch(c, table, ops, count, o, id, "kvs_write_batch_async"); rc != KVS_OK)
      return rc;
    return c->queue_async(id, Pending{nullptr, cb, count, ctx, nullptr}, wait_ms_for(o));
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, "kvs_write_batch_async: out of memory");
  }
}

static int write_async(kvs_client* c, const char* table, const void* key, size_t key_len,
                       const void* value, size_t value_len, bool is_put, const kvs_write_options* o,
                       kvs_write_cb cb, void* ctx, const char* fn) {
  if (int rc = check_write_args(c, table, key, key_len, fn); rc != KVS_OK) return rc;
  if (cb == nullptr) return fail(Errc::kInvalidArgument, std::string(fn) + ": NULL callback");
  try {
    const uint64_t id = c->take_id();
    if (int rc = encode_write(c, table, key, key_len, value, value_len, is_put, o, id);
        rc != KVS_OK)
      return rc;
    return c->queue_async(id, Pending{cb, nullptr, 0, ctx, nullptr}, wait_ms_for(o));
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, std::string(fn) + ": out of memory");
  }
}

int kvs_put_async(kvs_client* c, const char* table, const void* key, size_t key_len,
                  const void* value, size_t value_len, const kvs_write_options* o, kvs_write_cb cb,
                  void* ctx) {
  if (value == nullptr && value_len > 0)
    return fail(Errc::kInvalidArgument, "kvs_put_async: NULL value");
  return write_async(c, table, key, key_len, value, value_len, true, o, cb, ctx, "kvs_put_async");
}

int kvs_erase_async(kvs_client* c, const char* table, const void* key, size_t key_len,
                    const kvs_write_options* o, kvs_write_cb cb, void* ctx) {
  return write_async(c, table, key, key_len, nullptr, 0, false, o, cb, ctx, "kvs_erase_async");
}

int kvs_client_poll(kvs_client* c, int timeout_ms) {
  if (c == nullptr) return fail(Errc::kInvalidArgument, "kvs_client_poll: NULL client");
  int ran = 0;
  if (int rc = c->pump(timeout_ms, &ran); rc != KVS_OK) return rc;
  return ran;
}

int kvs_client_flush(kvs_client* c, int timeout_ms) {
  if (c == nullptr) return fail(Errc::kInvalidArgument, "kvs_client_flush: NULL client");
  const auto deadline = clock::now() + std::chrono::milliseconds(timeout_ms);
  int ran = 0;
  while (c->async_pending > 0 || c->out.size() > c->out_off) {
    int wait = -1;
    if (timeout_ms >= 0) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
      if (left <= 0) {
        return fail(Errc::kTimeout, std::to_string(c->async_pending) +
                                        " writes still without an answer after " +
                                        std::to_string(timeout_ms) + " ms");
      }
      wait = static_cast<int>(left);
    }
    if (int rc = c->pump(wait, &ran); rc != KVS_OK) return rc;
  }
  return KVS_OK;
}

size_t kvs_client_pending(kvs_client* c) { return c ? c->async_pending : 0; }

int kvs_client_wait(kvs_client* c, const char* table, const kvs_token* token, int timeout_ms) {
  if (int rc = check_write_args(c, table, token, 1, "kvs_client_wait"); rc != KVS_OK) return rc;
  if (timeout_ms < 0) timeout_ms = 0x7fffffff - kReplyGraceMs;
  try {
    proto::encode_wait(
        c->out, c->take_id(),
        proto::Wait{table, static_cast<uint32_t>(timeout_ms), {token->partition, token->offset}});
    Outcome out;
    return c->call(timeout_ms + kReplyGraceMs, &out);
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, "kvs_client_wait: out of memory");
  }
}

int kvs_ping(kvs_client* c, int timeout_ms) {
  if (c == nullptr) return fail(Errc::kInvalidArgument, "kvs_ping: NULL client");
  if (c->broken) return fail(Errc::kConnection, c->broken_why);
  proto::encode_frame(c->out, proto::Type::kPing, 0, c->take_id(), "ping");
  Outcome out;
  if (int rc = c->call(timeout_ms < 0 ? 0x7fffffff : timeout_ms, &out); rc != KVS_OK) return rc;
  if (out.body != "ping") return c->broke("kvsd answered a ping with other bytes");
  return KVS_OK;
}

int kvs_stats(kvs_client* c, char** json) {
  if (c == nullptr || json == nullptr)
    return fail(Errc::kInvalidArgument, "kvs_stats: NULL argument");
  if (c->broken) return fail(Errc::kConnection, c->broken_why);
  proto::encode_frame(c->out, proto::Type::kStats, 0, c->take_id(), {});
  Outcome out;
  if (int rc = c->call(10000, &out); rc != KVS_OK) return rc;
  char* s = static_cast<char*>(std::malloc(out.body.size() + 1));
  if (s == nullptr) return fail(Errc::kNoMemory, "kvs_stats: out of memory");
  std::memcpy(s, out.body.data(), out.body.size());
  s[out.body.size()] = '\0';
  *json = s;
  return KVS_OK;
}

void kvs_free(void* p) { std::free(p); }

}  // extern "C"
