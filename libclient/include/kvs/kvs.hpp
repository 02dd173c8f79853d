// libkvs for C++: a thin inline layer over kvs.h (one ABI).
//
// Writes go through kvsd (kvs::Client); see kvs.h for their contract:
//
//   auto c = kvs::Client::connect();                   // /run/kvs/kvsd.sock
//   auto tok = c->put("flags", "checkout.v2", "on", {.visible = true});
//   table->wait(*tok, 1s);                             // or on another host
//
//   auto table = kvs::Table::open("flags");
//   if (!table) { std::cerr << table.error().message << "\n"; return 1; }
//   if (auto guard = table->read()) {
//     if (auto v = guard->get("checkout.v2")) use(*v);   // std::string_view
//   }                                                     // *v invalid here
//
// Thread and lifetime rules are those of kvs.h: a Table is shared by threads;
// a ReadGuard belongs to the thread that made it, and every string_view it
// returns points into read-only shared memory and is valid while the guard
// lives. Guards of one table in one thread nest.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvs/kvs.h"
#include "kvs/result.hpp"

namespace kvs {

enum class State { kBootstrapping = KVS_STATE_BOOTSTRAPPING, kReady = KVS_STATE_READY };

struct OpenOptions {
  OpenOptions() = default;
  // NOLINTNEXTLINE(google-explicit-constructor): Table::open(name, {prefix})
  OpenOptions(std::string prefix, std::string dir = "")
      : shm_prefix(std::move(prefix)), shm_dir(std::move(dir)) {}

  std::string shm_prefix = "kvs.";
  std::string shm_dir;               // "": KVS_SHM_DIR if set, else /dev/shm (see kvs_open_options)
  std::string socket_path;           // "": KVS_SOCKET if set, else /run/kvs/kvsd.sock
  int handover = KVS_HANDOVER_AUTO;  // see kvs_open_options
};

namespace detail {
inline Error last_error(int code) {
  const char* m = kvs_last_error();
  return Error{static_cast<Errc>(code), (m && *m) ? m : kvs_strerror(code)};
}
}  // namespace detail

class ReadGuard {
 public:
  ReadGuard(ReadGuard&& o) noexcept : txn_(std::exchange(o.txn_, nullptr)) {}
  ReadGuard& operator=(ReadGuard&& o) noexcept {
    if (this != &o) {
      end();
      txn_ = std::exchange(o.txn_, nullptr);
    }
    return *this;
  }
  ReadGuard(const ReadGuard&) = delete;
  ReadGuard& operator=(const ReadGuard&) = delete;
  ~ReadGuard() { end(); }

  // The value of `key`, zero-copy. Errors: kNotFound, kCorrupt.
  Result<std::string_view> get(std::string_view key) const {
    const void* v = nullptr;
    size_t n = 0;
    const int rc = kvs_get(txn_, key.data(), key.size(), &v, &n);
    if (rc == KVS_OK) return std::string_view(static_cast<const char*>(v), n);
    if (rc == KVS_ENOTFOUND) return Error{Errc::kNotFound, {}};
    return detail::last_error(rc);
  }

  // Errors: kCorrupt.
  Result<bool> contains(std::string_view key) const {
    const int rc = kvs_get(txn_, key.data(), key.size(), nullptr, nullptr);
    if (rc == KVS_OK || rc == KVS_ENOTFOUND) return rc == KVS_OK;
    return detail::last_error(rc);
  }

  // One optional per key (nullopt: absent); cheaper than get() per key.
  // Errors: kCorrupt.
  Result<std::vector<std::optional<std::string_view>>> multi_get(
      const std::vector<std::string_view>& keys) const {
    const size_t n = keys.size();
    std::vector<const void*> kp(n), vp(n);
    std::vector<size_t> kl(n), vl(n);
    std::vector<int> rc(n);
    for (size_t i = 0; i < n; ++i) {
      kp[i] = keys[i].data();
      kl[i] = keys[i].size();
    }
    const int r = kvs_multi_get(txn_, n, kp.data(), kl.data(), vp.data(), vl.data(), rc.data());
    if (r != KVS_OK) return detail::last_error(r);
    std::vector<std::optional<std::string_view>> out(n);
    for (size_t i = 0; i < n; ++i) {
      if (rc[i] == KVS_OK) {
        out[i] = std::string_view(static_cast<const char*>(vp[i]), vl[i]);
      } else if (rc[i] != KVS_ENOTFOUND) {
        return Error{static_cast<Errc>(rc[i]), "multi_get: corrupt entry"};
      }
    }
    return out;
  }

  // Calls fn(key, value) for every entry; fn returns false to stop. Weakly
  // consistent (see kvs_for_each). Errors: kCorrupt.
  Result<void> for_each(const std::function<bool(std::string_view, std::string_view)>& fn) const {
    auto tramp = [](void* ctx, const void* k, size_t kl, const void* v, size_t vl) -> int {
      auto& f = *static_cast<const std::function<bool(std::string_view, std::string_view)>*>(ctx);
      return f({static_cast<const char*>(k), kl}, {static_cast<const char*>(v), vl}) ? 0 : 1;
    };
    const int rc = kvs_for_each(txn_, tramp, const_cast<void*>(static_cast<const void*>(&fn)));
    if (rc == KVS_OK || rc == 1) return {};
    return detail::last_error(rc);
  }

  kvs_txn* native() const { return txn_; }

 private:
  friend class Table;
  explicit ReadGuard(kvs_txn* t) : txn_(t) {}
  void end() {
    if (txn_) kvs_read_end(std::exchange(txn_, nullptr));
  }
  kvs_txn* txn_;
};

// Where Kafka stored a write (kvs_token).
struct Token {
  int32_t partition = -1;
  int64_t offset = -1;
  bool operator==(const Token&) const = default;
};

// A change a Watch reports (kvs_change). `key` is valid until the watch's
// next call.
struct Change {
  enum class Kind { kPut = KVS_CHANGE_PUT, kErase = KVS_CHANGE_ERASE, kLost = KVS_CHANGE_LOST };
  Kind kind;
  std::string_view key;
  uint32_t partition;
  int64_t offset;
  int64_t timestamp_ms;
  uint64_t position;
  Token token() const { return Token{static_cast<int32_t>(partition), offset}; }
};

// A watch of a table's changes (kvs_watch_*), made by Table::watch(). Used
// by one thread at a time; the Table must outlive it.
//
//   auto w = table->watch(kvs::Watch::Filter::kPrefix, "flags/");
//   w->for_each([&](const kvs::Change& c) {
//     if (c.kind == kvs::Change::Kind::kLost) reload_all(); else reload(c.key);
//     return !stopping;
//   });
class Watch {
 public:
  enum class Filter { kAll = KVS_WATCH_ALL, kKey = KVS_WATCH_KEY, kPrefix = KVS_WATCH_PREFIX };

  Watch(Watch&& o) noexcept : w_(std::exchange(o.w_, nullptr)) {}
  Watch& operator=(Watch&& o) noexcept {
    if (this != &o) {
      kvs_watch_close(w_);
      w_ = std::exchange(o.w_, nullptr);
    }
    return *this;
  }
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;
  ~Watch() { kvs_watch_close(w_); }

  // The next change that passes the filter, or nullopt if none came within
  // `timeout` (negative: wait forever). Errors: kUnsupported, kNoMemory.
  Result<std::optional<Change>> next(std::chrono::milliseconds timeout) {
    kvs_change c{};
    const int rc = kvs_watch_next(w_, &c, static_cast<int>(timeout.count()));
    if (rc == KVS_ETIMEDOUT) return std::optional<Change>();
    if (rc != KVS_OK) return detail::last_error(rc);
    return std::optional<Change>(Change{static_cast<Change::Kind>(c.kind),
                                        {static_cast<const char*>(c.key), c.key_len},
                                        c.partition,
                                        c.offset,
                                        c.timestamp_ms,
                                        c.position});
  }
  // Calls fn(change) for every change until fn returns false; looks at
  // `stop()` at least every `tick` (a stop flag, for Ctrl-C).
  template <class Fn, class Stop>
  Result<void> for_each(Fn fn, Stop stop,
                        std::chrono::milliseconds tick = std::chrono::seconds(1)) {
    while (!stop()) {
      auto c = next(tick);
      if (!c) return std::move(c).error();
      if (*c && !fn(**c)) return {};
    }
    return {};
  }
  template <class Fn>
  Result<void> for_each(Fn fn) {
    return for_each(fn, [] { return false; });
  }

 private:
  friend class Table;
  explicit Watch(kvs_watch* w) : w_(w) {}
  kvs_watch* w_;
};

class Table {
 public:
  // Errors: kNoTable (retriable: kvsd may be starting), kLayoutMismatch,
  // kCorrupt, kPermission, kInvalidArgument.
  static Result<Table> open(const std::string& name, const OpenOptions& options = {}) {
    kvs_open_options o{
        options.shm_prefix.c_str(), options.shm_dir.empty() ? nullptr : options.shm_dir.c_str(),
        options.socket_path.empty() ? nullptr : options.socket_path.c_str(), options.handover};
    kvs_table* t = nullptr;
    const int rc = kvs_open(name.c_str(), &o, &t);
    if (rc != KVS_OK) return detail::last_error(rc);
    return Table(t);
  }

  Table(Table&& o) noexcept : t_(std::exchange(o.t_, nullptr)) {}
  Table& operator=(Table&& o) noexcept {
    if (this != &o) {
      kvs_close(t_);
      t_ = std::exchange(o.t_, nullptr);
    }
    return *this;
  }
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;
  ~Table() { kvs_close(t_); }

  // Errors: kRegistryFull, kNoMemory.
  Result<ReadGuard> read() const {
    kvs_txn* x = nullptr;
    const int rc = kvs_read_begin(t_, &x);
    if (rc != KVS_OK) return detail::last_error(rc);
    return ReadGuard(x);
  }

  // A copy of the value, taken under a short guard. Errors: kNotFound,
  // kRegistryFull, kCorrupt.
  Result<std::string> get_copy(std::string_view key) const {
    auto g = read();
    if (!g) return std::move(g).error();
    auto v = g->get(key);
    if (!v) return std::move(v).error();
    return std::string(*v);
  }

  uint64_t size() const { return kvs_size(t_); }
  State state() const { return static_cast<State>(kvs_state(t_)); }
  // Errors: kTimeout.
  Result<void> wait_ready(std::chrono::milliseconds timeout) const {
    const int rc = kvs_wait_ready(t_, static_cast<int>(timeout.count()));
    if (rc != KVS_OK) return detail::last_error(rc);
    return {};
  }
  uint32_t partition_count() const { return kvs_partition_count(t_); }
  struct PartitionOffsets {
    int64_t next_offset;
    int64_t high_watermark;
  };
  // Errors: kInvalidArgument.
  Result<PartitionOffsets> partition_offsets(uint32_t partition) const {
    PartitionOffsets p{};
    const int rc = kvs_partition_offsets(t_, partition, &p.next_offset, &p.high_watermark);
    if (rc != KVS_OK) return detail::last_error(rc);
    return p;
  }

  // Waits until the table has applied `token` (read-your-writes, also for
  // a token from another host). Errors: kTimeout, kInvalidArgument.
  Result<void> wait(Token token, std::chrono::milliseconds timeout) const {
    kvs_token t{token.partition, token.offset};
    const int rc = kvs_wait(t_, &t, static_cast<int>(timeout.count()));
    if (rc != KVS_OK) return detail::last_error(rc);
    return {};
  }

  // Writes a snapshot of the table to `path` (kvs_snapshot_write).
  // Errors: kSystem (the file), kBusy (retriable), kTooLarge, kCorrupt, and
  // those of read().
  Result<kvs_snapshot_info> write_snapshot(const std::string& path) const {
    kvs_snapshot_info info{};
    const int rc = kvs_snapshot_write(t_, path.c_str(), &info);
    if (rc != KVS_OK) return detail::last_error(rc);
    return info;
  }

  // Watches the changes applied from now on: all, of one key, or of keys
  // with a prefix (`key`). Errors: kUnsupported (no change log), kNoMemory.
  Result<Watch> watch(Watch::Filter filter = Watch::Filter::kAll, std::string_view key = {}) const {
    kvs_watch* w = nullptr;
    const int rc = kvs_watch_open(t_, static_cast<int>(filter), key.data(), key.size(), &w);
    if (rc != KVS_OK) return detail::last_error(rc);
    return Watch(w);
  }

  kvs_table* native() const { return t_; }

 private:
  explicit Table(kvs_table* t) : t_(t) {}
  kvs_table* t_;
};

struct WriteOptions {
  std::chrono::milliseconds timeout{0};  // 0: kvsd's write_timeout_ms
  bool visible = false;                  // answer once this host's table shows the write
};

// A connection to kvsd for writes. Used by one thread at a time; callbacks
// of async writes run inside poll(), flush() or any later call (kvs.h).
class Client {
 public:
  // socket_path "": $KVS_SOCKET, else /run/kvs/kvsd.sock. Errors:
  // kConnection (no kvsd), kPermission, kProtocol.
  static Result<Client> connect(const std::string& socket_path = "") {
    kvs_client* c = nullptr;
    const int rc = kvs_connect(socket_path.empty() ? nullptr : socket_path.c_str(), &c);
    if (rc != KVS_OK) return detail::last_error(rc);
    return Client(c);
  }
  Client(Client&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
  Client& operator=(Client&& o) noexcept {
    if (this != &o) {
      kvs_disconnect(c_);
      c_ = std::exchange(o.c_, nullptr);
    }
    return *this;
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client() { kvs_disconnect(c_); }

  // Errors: kTooLarge, kInvalidArgument, kTimeout, kQueueFull, kPermission,
  // kKafka, kConnection.
  Result<Token> put(const std::string& table, std::string_view key, std::string_view value,
                    const WriteOptions& o = {}) {
    kvs_write_options wo = native(o);
    kvs_token t{};
    const int rc = kvs_put(c_, table.c_str(), key.data(), key.size(),
                           value.data() ? value.data() : "", value.size(), &wo, &t);
    if (rc != KVS_OK) return detail::last_error(rc);
    return Token{t.partition, t.offset};
  }
  Result<Token> erase(const std::string& table, std::string_view key, const WriteOptions& o = {}) {
    kvs_write_options wo = native(o);
    kvs_token t{};
    const int rc = kvs_erase(c_, table.c_str(), key.data(), key.size(), &wo, &t);
    if (rc != KVS_OK) return detail::last_error(rc);
    return Token{t.partition, t.offset};
  }

  struct Op {
    std::string_view key;
    std::optional<std::string_view> value;  // nullopt: erase
  };
  using BatchResult = std::vector<Result<Token>>;
  // One request; each operation's own outcome (not a transaction).
  Result<BatchResult> batch(const std::string& table, const std::vector<Op>& ops,
                            const WriteOptions& o = {}) {
    std::vector<kvs_write_op> w = native(ops);
    std::vector<int> rc(ops.size());
    std::vector<kvs_token> t(ops.size());
    kvs_write_options wo = native(o);
    const int r = kvs_write_batch(c_, table.c_str(), w.data(), w.size(), &wo, rc.data(), t.data());
    if (r != KVS_OK) return detail::last_error(r);
    return outcomes(ops.size(), rc.data(), t.data());
  }

  using BatchCallback = std::function<void(Result<BatchResult>)>;
  // batch(), pipelined: returns once queued; `done` runs with the outcome later.
  Result<void> batch_async(const std::string& table, const std::vector<Op>& ops,
                           const WriteOptions& o, BatchCallback done) {
    std::vector<kvs_write_op> w = native(ops);
    kvs_write_options wo = native(o);
    auto* f = new BatchCallback(std::move(done));
    const int rc =
        kvs_write_batch_async(c_, table.c_str(), w.data(), w.size(), &wo, &batch_tramp, f);
    if (rc != KVS_OK) {
      delete f;
      return detail::last_error(rc);
    }
    return {};
  }

  using Callback = std::function<void(Result<Token>)>;
  // Pipelined: returns once sent; `done` runs with the outcome later.
  Result<void> put_async(const std::string& table, std::string_view key, std::string_view value,
                         const WriteOptions& o, Callback done) {
    kvs_write_options wo = native(o);
    auto* f = new Callback(std::move(done));
    const int rc = kvs_put_async(c_, table.c_str(), key.data(), key.size(),
                                 value.data() ? value.data() : "", value.size(), &wo, &tramp, f);
    if (rc != KVS_OK) {
      delete f;
      return detail::last_error(rc);
    }
    return {};
  }
  Result<void> erase_async(const std::string& table, std::string_view key, const WriteOptions& o,
                           Callback done) {
    kvs_write_options wo = native(o);
    auto* f = new Callback(std::move(done));
    const int rc = kvs_erase_async(c_, table.c_str(), key.data(), key.size(), &wo, &tramp, f);
    if (rc != KVS_OK) {
      delete f;
      return detail::last_error(rc);
    }
    return {};
  }
  // Runs the callbacks of answers that arrived; returns how many.
  Result<int> poll(std::chrono::milliseconds timeout) {
    const int n = kvs_client_poll(c_, static_cast<int>(timeout.count()));
    if (n < 0) return detail::last_error(n);
    return n;
  }
  // Until every async write has had its callback. Errors: kTimeout.
  Result<void> flush(std::chrono::milliseconds timeout = std::chrono::milliseconds(-1)) {
    const int rc = kvs_client_flush(c_, static_cast<int>(timeout.count()));
    if (rc != KVS_OK) return detail::last_error(rc);
    return {};
  }
  size_t pending() const { return kvs_client_pending(c_); }
  // kvsd answers once its table applied `token`. Errors: kTimeout, kInvalidArgument.
  Result<void> wait(const std::string& table, Token token, std::chrono::milliseconds timeout) {
    kvs_token t{token.partition, token.offset};
    const int rc = kvs_client_wait(c_, table.c_str(), &t, static_cast<int>(timeout.count()));
    if (rc != KVS_OK) return detail::last_error(rc);
    return {};
  }
  Result<void> ping(std::chrono::milliseconds timeout) {
    const int rc = kvs_ping(c_, static_cast<int>(timeout.count()));
    if (rc != KVS_OK) return detail::last_error(rc);
    return {};
  }
  // kvsd's STATS (JSON).
  Result<std::string> stats() {
    char* j = nullptr;
    const int rc = kvs_stats(c_, &j);
    if (rc != KVS_OK) return detail::last_error(rc);
    std::string s(j);
    kvs_free(j);
    return s;
  }

  kvs_client* native_handle() const { return c_; }

 private:
  explicit Client(kvs_client* c) : c_(c) {}
  static kvs_write_options native(const WriteOptions& o) {
    return {static_cast<uint32_t>(o.timeout.count()), o.visible ? 1 : 0};
  }
  static std::vector<kvs_write_op> native(const std::vector<Op>& ops) {
    std::vector<kvs_write_op> w(ops.size());
    for (size_t i = 0; i < ops.size(); ++i) {
      w[i] = {ops[i].key.data(), ops[i].key.size(), nullptr, 0};
      if (ops[i].value) {
        w[i].value = ops[i].value->data() ? ops[i].value->data() : "";
        w[i].value_len = ops[i].value->size();
      }
    }
    return w;
  }
  static BatchResult outcomes(size_t n, const int* rc, const kvs_token* t) {
    BatchResult out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (rc[i] == KVS_OK) {
        out.emplace_back(Token{t[i].partition, t[i].offset});
      } else {
        out.emplace_back(Error{static_cast<Errc>(rc[i]), kvs_strerror(rc[i])});
      }
    }
    return out;
  }
  static void batch_tramp(void* ctx, int rc, size_t n, const int* results, const kvs_token* t) {
    std::unique_ptr<BatchCallback> f(static_cast<BatchCallback*>(ctx));
    if (rc == KVS_OK) {
      (*f)(outcomes(n, results, t));
    } else {
      (*f)(detail::last_error(rc));
    }
  }
  static void tramp(void* ctx, int rc, const kvs_token* t) {
    std::unique_ptr<Callback> f(static_cast<Callback*>(ctx));
    if (rc == KVS_OK) {
      (*f)(Token{t->partition, t->offset});
    } else {
      (*f)(detail::last_error(rc));
    }
  }
  kvs_client* c_;
};

}  // namespace kvs
