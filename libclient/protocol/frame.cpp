#include "protocol/frame.hpp"

#include <bit>
#include <cstdio>
#include <cstring>

namespace kvs::protocol {
namespace {

// Little-endian fields: one move on a little-endian host (a byte at a time
// would be stored as bytes and then read back as a word, stalling the
// store-to-load forwarding of the frame's single append).
template <class T>
char* store_le(char* at, T v) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(at, &v, sizeof v);
  } else {
    for (size_t i = 0; i < sizeof(T); ++i)
      at[i] = static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff);
  }
  return at + sizeof(T);
}
template <class T>
T load_le(const char* at) {
  T v;
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(&v, at, sizeof v);
  } else {
    uint64_t x = 0;
    for (size_t i = 0; i < sizeof(T); ++i) x |= uint64_t{static_cast<uint8_t>(at[i])} << (8 * i);
    v = static_cast<T>(x);
  }
  return v;
}

template <class T>
void put_le(std::string& out, T v) {
  char b[sizeof(T)];
  store_le(b, v);
  out.append(b, sizeof(T));
}

void put_bytes32(std::string& out, std::string_view s) {
  put_le<uint32_t>(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}

void put_str16(std::string& out, std::string_view s) {
  put_le<uint16_t>(out, static_cast<uint16_t>(s.size()));
  out.append(s);
}

// Reads fields off a body, remembering the first failure.
class Reader {
 public:
  Reader(std::string_view what, std::string_view body) : what_(what), rest_(body) {}

  template <class T>
  bool num(const char* field, T* v) {
    if (!ok_) return false;
    if (rest_.size() < sizeof(T)) return fail(field, sizeof(T));
    *v = load_le<T>(rest_.data());
    rest_.remove_prefix(sizeof(T));
    return true;
  }
  bool bytes(const char* field, size_t n, std::string_view* v) {
    if (!ok_) return false;
    if (rest_.size() < n) return fail(field, n);
    *v = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return true;
  }
  bool bytes32(const char* field, std::string_view* v) {
    uint32_t n = 0;
    return num(field, &n) && bytes(field, n, v);
  }
  bool str16(const char* field, std::string_view* v) {
    uint16_t n = 0;
    return num(field, &n) && bytes(field, n, v);
  }
  size_t left() const { return rest_.size(); }
  Result<void> finish() {
    if (!ok_) return make_error(Errc::kInvalidArgument, error_);
    if (!rest_.empty()) {
      return make_error(
          Errc::kInvalidArgument,
          std::string(what_) + ": " + std::to_string(rest_.size()) + " bytes after the last field");
    }
    return {};
  }
  bool invalid(const std::string& why) {
    if (ok_) error_ = std::string(what_) + ": " + why;
    ok_ = false;
    return false;
  }

 private:
  bool fail(const char* field, size_t need) {
    return invalid(std::string(field) + " needs " + std::to_string(need) + " bytes, " +
                   std::to_string(rest_.size()) + " left in the frame");
  }
  std::string_view what_;
  std::string_view rest_;
  bool ok_ = true;
  std::string error_;
};

bool table_name(Reader& r, std::string_view* t) {
  if (!r.str16("table name", t)) return false;
  if (t->empty() || t->size() > kMaxTableName) {
    return r.invalid("table name of " + std::to_string(t->size()) + " bytes (1.." +
                     std::to_string(kMaxTableName) + ")");
  }
  return true;
}

}  // namespace

std::string type_name(uint8_t type) {
  switch (static_cast<Type>(type)) {
    case Type::kHello:
      return "hello";
    case Type::kPing:
      return "ping";
    case Type::kPut:
      return "put";
    case Type::kErase:
      return "erase";
    case Type::kBatch:
      return "batch";
    case Type::kWait:
      return "wait";
    case Type::kStats:
      return "stats";
    case Type::kOpen:
      return "open";
    case Type::kHelloOk:
      return "hello reply";
    case Type::kPong:
      return "pong";
    case Type::kPutOk:
      return "put reply";
    case Type::kEraseOk:
      return "erase reply";
    case Type::kBatchOk:
      return "batch reply";
    case Type::kWaitOk:
      return "wait reply";
    case Type::kStatsOk:
      return "stats reply";
    case Type::kOpenOk:
      return "open reply";
    case Type::kError:
      return "error";
  }
  char b[8];
  std::snprintf(b, sizeof b, "0x%02x", type);
  return b;
}

Split split(std::string_view buf, uint32_t max_frame_bytes, Header* h, std::string_view* body,
            std::string* why) {
  if (buf.size() < 4) return Split::kIncomplete;
  Reader r("frame", buf);
  (void)r.num("length", &h->length);
  if (h->length < kMinLength || h->length > max_frame_bytes) {
    if (buf.size() >= kHeaderBytes) {
      Reader id("frame", buf.substr(8));
      (void)id.num("request id", &h->request_id);
    }
    *why = "frame length " + std::to_string(h->length) + " out of range (" +
           std::to_string(kMinLength) + ".." + std::to_string(max_frame_bytes) + ")";
    return Split::kBad;
  }
  if (buf.size() < 4 + size_t{h->length}) return Split::kIncomplete;
  (void)r.num("type", &h->type);
  (void)r.num("flags", &h->flags);
  (void)r.num("reserved", &h->reserved);
  (void)r.num("request id", &h->request_id);
  *body = buf.substr(kHeaderBytes, h->length - kMinLength);
  return Split::kFrame;
}

Result<Hello> decode_hello(std::string_view body) {
  Reader r("hello", body);
  Hello h;
  r.num("magic", &h.magic) && r.num("min version", &h.min_version) &&
      r.num("max version", &h.max_version);
  if (auto ok = r.finish(); !ok) return std::move(ok).error();
  if (h.magic != kMagic)
    return make_error(Errc::kInvalidArgument, "hello: bad magic (not a kvs client)");
  if (h.min_version > h.max_version) {
    return make_error(Errc::kInvalidArgument,
                      "hello: min version " + std::to_string(h.min_version) +
                          " above max version " + std::to_string(h.max_version));
  }
  return h;
}

Result<HelloOk> decode_hello_ok(std::string_view body) {
  Reader r("hello reply", body);
  HelloOk h;
  r.num("version", &h.version) && r.num("max frame bytes", &h.max_frame_bytes) &&
      r.str16("server", &h.server);
  if (auto ok = r.finish(); !ok) return std::move(ok).error();
  return h;
}

Result<Write> decode_write(uint8_t type, std::string_view body) {
  const bool put = type == static_cast<uint8_t>(Type::kPut);
  Reader r(put ? "put" : "erase", body);
  Write w;
  if (table_name(r, &w.table) && r.num("timeout_ms", &w.timeout_ms) && r.bytes32("key", &w.key) &&
      put) {
    std::string_view v;
    if (r.bytes32("value", &v)) w.value = v;
  }
  if (auto ok = r.finish(); !ok) return std::move(ok).error();
  return w;
}

Result<Batch> decode_batch(std::string_view body) {
  Reader r("batch", body);
  Batch b;
  uint32_t count = 0;
  if (table_name(r, &b.table) && r.num("timeout_ms", &b.timeout_ms) && r.num("count", &count)) {
    // Each operation takes at least 5 bytes: no allocation beyond the frame.
    if (count == 0) {
      r.invalid("count 0 (a batch needs at least one operation)");
    } else if (count > r.left() / 5) {
      r.invalid("count " + std::to_string(count) + " does not fit in the " +
                std::to_string(r.left()) + " bytes left");
    } else {
      b.ops.reserve(count);
      for (uint32_t i = 0; i < count; ++i) {
        uint8_t op = 0;
        BatchOp o;
        if (!r.num("operation", &op) || !r.bytes32("key", &o.key)) break;
        if (op == static_cast<uint8_t>(Type::kPut)) {
          std::string_view v;
          if (!r.bytes32("value", &v)) break;
          o.value = v;
        } else if (op != static_cast<uint8_t>(Type::kErase)) {
          r.invalid("operation " + std::to_string(i) + " has type " + type_name(op) +
                    " (put or erase)");
          break;
        }
        b.ops.push_back(o);
      }
    }
  }
  if (auto ok = r.finish(); !ok) return std::move(ok).error();
  return b;
}

Result<Wait> decode_wait(std::string_view body) {
  Reader r("wait", body);
  Wait w;
  table_name(r, &w.table) && r.num("timeout_ms", &w.timeout_ms) &&
      r.num("partition", &w.token.partition) && r.num("offset", &w.token.offset);
  if (auto ok = r.finish(); !ok) return std::move(ok).error();
  if (w.token.partition < 0 || w.token.offset < 0) {
    return make_error(Errc::kInvalidArgument, "wait: token (" + std::to_string(w.token.partition) +
                                                  ", " + std::to_string(w.token.offset) +
                                                  ") is negative");
  }
  return w;
}

Result<Open> decode_open(std::string_view body) {
  Reader r("open", body);
  Open o;
  table_name(r, &o.table) && r.num("want", &o.want) && r.num("incarnation", &o.incarnation);
  if (auto ok = r.finish(); !ok) return std::move(ok).error();
  if (o.want == 0 || (o.want & ~kOpenAll) != 0) {
    return make_error(Errc::kInvalidArgument,
                      "open: want " + std::to_string(o.want) + " names no descriptor (1..7)");
  }
  return o;
}

Result<OpenOk> decode_open_ok(std::string_view body) {
  Reader r("open reply", body);
  OpenOk o;
  r.num("sent", &o.sent) && r.num("incarnation", &o.incarnation);
  if (auto ok = r.finish(); !ok) return std::move(ok).error();
  return o;
}

Result<Token> decode_token(std::string_view body) {
  Reader r("token", body);
  Token t;
  r.num("partition", &t.partition) && r.num("offset", &t.offset);
  if (auto ok = r.finish(); !ok) return std::move(ok).error();
  return t;
}

Result<std::vector<BatchResult>> decode_batch_ok(std::string_view body) {
  Reader r("batch reply", body);
  uint32_t count = 0;
  std::vector<BatchResult> out;
  if (r.num("count", &count)) {
    if (count > r.left() / 16) {
      r.invalid("count " + std::to_string(count) + " does not fit in the frame");
    } else {
      out.resize(count);
      for (auto& x : out) {
        if (!r.num("code", &x.code) || !r.num("partition", &x.token.partition) ||
            !r.num("offset", &x.token.offset))
          break;
      }
    }
  }
  if (auto ok = r.finish(); !ok) return std::move(ok).error();
  return out;
}

Result<ErrorReply> decode_error(std::string_view body) {
  Reader r("error", body);
  ErrorReply e;
  r.num("code", &e.code) && r.str16("message", &e.message);
  if (auto ok = r.finish(); !ok) return std::move(ok).error();
  return e;
}

namespace {
// The header, in `at` (kHeaderBytes); returns the end.
char* store_header(char* at, uint32_t length, Type type, uint8_t flags, uint64_t id) {
  at = store_le<uint32_t>(at, length);
  at = store_le<uint8_t>(at, static_cast<uint8_t>(type));
  at = store_le<uint8_t>(at, flags);
  at = store_le<uint16_t>(at, 0);
  return store_le<uint64_t>(at, id);
}
}  // namespace

void encode_frame(std::string& out, Type type, uint8_t flags, uint64_t id, std::string_view body) {
  char h[kHeaderBytes];
  store_header(h, static_cast<uint32_t>(kMinLength + body.size()), type, flags, id);
  out.append(h, sizeof h);
  out.append(body);
}

namespace {
// Appends a header whose length is patched by end_frame().
size_t begin_frame(std::string& out, Type type, uint8_t flags, uint64_t id) {
  const size_t at = out.size();
  encode_frame(out, type, flags, id, {});
  return at;
}
void end_frame(std::string& out, size_t at) {
  store_le(out.data() + at, static_cast<uint32_t>(out.size() - at - 4));
}
}  // namespace

void encode_hello(std::string& out, uint64_t id, const Hello& h) {
  const size_t at = begin_frame(out, Type::kHello, 0, id);
  put_le(out, h.magic);
  put_le(out, h.min_version);
  put_le(out, h.max_version);
  end_frame(out, at);
}

void encode_hello_ok(std::string& out, uint64_t id, const HelloOk& h) {
  const size_t at = begin_frame(out, Type::kHelloOk, 0, id);
  put_le(out, h.version);
  put_le(out, h.max_frame_bytes);
  put_str16(out, h.server);
  end_frame(out, at);
}

void encode_write(std::string& out, uint64_t id, bool visible, const Write& w) {
  // The most frequent request: sized first, then filled in place.
  const size_t body = 2 + w.table.size() + sizeof w.timeout_ms + 4 + w.key.size() +
                      (w.value ? 4 + w.value->size() : 0);
  const size_t at = out.size();
  out.resize(at + kHeaderBytes + body);
  char* p = store_header(out.data() + at, static_cast<uint32_t>(kMinLength + body),
                         w.value ? Type::kPut : Type::kErase, visible ? kFlagVisible : 0, id);
  auto bytes = [&p](std::string_view b) {
    if (!b.empty()) std::memcpy(p, b.data(), b.size());
    p += b.size();
  };
  p = store_le(p, static_cast<uint16_t>(w.table.size()));
  bytes(w.table);
  p = store_le(p, w.timeout_ms);
  p = store_le(p, static_cast<uint32_t>(w.key.size()));
  bytes(w.key);
  if (w.value) {
    p = store_le(p, static_cast<uint32_t>(w.value->size()));
    bytes(*w.value);
  }
}

void encode_batch(std::string& out, uint64_t id, bool visible, const Batch& b) {
  const size_t at = begin_frame(out, Type::kBatch, visible ? kFlagVisible : 0, id);
  put_str16(out, b.table);
  put_le(out, b.timeout_ms);
  put_le(out, static_cast<uint32_t>(b.ops.size()));
  for (const auto& o : b.ops) {
    put_le<uint8_t>(out, static_cast<uint8_t>(o.value ? Type::kPut : Type::kErase));
    put_bytes32(out, o.key);
    if (o.value) put_bytes32(out, *o.value);
  }
  end_frame(out, at);
}

void encode_wait(std::string& out, uint64_t id, const Wait& w) {
  const size_t at = begin_frame(out, Type::kWait, 0, id);
  put_str16(out, w.table);
  put_le(out, w.timeout_ms);
  put_le(out, w.token.partition);
  put_le(out, w.token.offset);
  end_frame(out, at);
}

void encode_open(std::string& out, uint64_t id, const Open& o) {
  const size_t at = begin_frame(out, Type::kOpen, 0, id);
  put_str16(out, o.table);
  put_le(out, o.want);
  put_le(out, o.incarnation);
  end_frame(out, at);
}

void encode_open_ok(std::string& out, uint64_t id, const OpenOk& o) {
  const size_t at = begin_frame(out, Type::kOpenOk, 0, id);
  put_le(out, o.sent);
  put_le(out, o.incarnation);
  end_frame(out, at);
}

void encode_token(std::string& out, Type type, uint64_t id, Token t) {
  // The most frequent reply: one append.
  char f[kHeaderBytes + sizeof t.partition + sizeof t.offset];
  char* at = store_header(f, static_cast<uint32_t>(sizeof f - 4), type, 0, id);
  at = store_le(at, t.partition);
  store_le(at, t.offset);
  out.append(f, sizeof f);
}

void encode_batch_ok(std::string& out, uint64_t id, std::span<const BatchResult> r) {
  const size_t at = begin_frame(out, Type::kBatchOk, 0, id);
  put_le(out, static_cast<uint32_t>(r.size()));
  for (const auto& x : r) {
    put_le(out, x.code);
    put_le(out, x.token.partition);
    put_le(out, x.token.offset);
  }
  end_frame(out, at);
}

void encode_error(std::string& out, uint64_t id, int32_t code, std::string_view message) {
  const size_t at = begin_frame(out, Type::kError, 0, id);
  put_le(out, code);
  put_str16(out, message.substr(0, kMaxErrorMessage));
  end_frame(out, at);
}

}  // namespace kvs::protocol
