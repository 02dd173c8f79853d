// The write socket's frames: every encoder round-trips through its decoder,
// and every malformed or truncated body is refused with the field named.
#include "protocol/frame.hpp"

#include <gtest/gtest.h>

#include <random>

namespace kvs::protocol {
namespace {

struct Parsed {
  Header h;
  std::string_view body;
};

Parsed one_frame(const std::string& wire, uint32_t max = 1 << 20) {
  Parsed p;
  std::string why;
  EXPECT_EQ(split(wire, max, &p.h, &p.body, &why), Split::kFrame) << why;
  EXPECT_EQ(kHeaderBytes + p.body.size(), wire.size());
  return p;
}

TEST(Frame, PutRoundTripsWithBinaryKeyAndValue) {
  std::string wire;
  const std::string key("k\0ey", 4), value("v\0\xff", 3);
  encode_write(wire, 42, /*visible=*/true, Write{"users", 1500, key, value});
  auto p = one_frame(wire);
  EXPECT_EQ(p.h.type, static_cast<uint8_t>(Type::kPut));
  EXPECT_EQ(p.h.flags, kFlagVisible);
  EXPECT_EQ(p.h.request_id, 42u);
  auto w = decode_write(p.h.type, p.body);
  ASSERT_TRUE(w) << w.error().message;
  EXPECT_EQ(w->table, "users");
  EXPECT_EQ(w->timeout_ms, 1500u);
  EXPECT_EQ(w->key, key);
  ASSERT_TRUE(w->value);
  EXPECT_EQ(*w->value, value);
}

TEST(Frame, EraseHasNoValueAndEmptyValueIsAValue) {
  std::string wire;
  encode_write(wire, 1, false, Write{"t", 0, "k", std::nullopt});
  encode_write(wire, 2, false, Write{"t", 0, "k", std::string_view()});
  // Two frames back to back: split takes them one at a time.
  Header h;
  std::string_view body;
  std::string why;
  ASSERT_EQ(split(wire, 1 << 20, &h, &body, &why), Split::kFrame);
  auto e = decode_write(h.type, body);
  ASSERT_TRUE(e);
  EXPECT_EQ(h.type, static_cast<uint8_t>(Type::kErase));
  EXPECT_FALSE(e->value);
  const std::string_view rest = std::string_view(wire).substr(kHeaderBytes + body.size());
  ASSERT_EQ(split(rest, 1 << 20, &h, &body, &why), Split::kFrame);
  EXPECT_EQ(kHeaderBytes + body.size(), rest.size());
  auto p = decode_write(h.type, body);
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->value);
  EXPECT_TRUE(p->value->empty());
}

TEST(Frame, BatchRoundTrips) {
  Batch b{"flags", 0, {{"a", "1"}, {"b", std::nullopt}, {"", ""}}};
  std::string wire;
  encode_batch(wire, 7, false, b);
  auto p = one_frame(wire);
  auto d = decode_batch(p.body);
  ASSERT_TRUE(d) << d.error().message;
  ASSERT_EQ(d->ops.size(), 3u);
  EXPECT_EQ(d->ops[0].key, "a");
  EXPECT_EQ(*d->ops[0].value, "1");
  EXPECT_FALSE(d->ops[1].value);
  EXPECT_TRUE(d->ops[2].key.empty());

  std::vector<BatchResult> r{{0, {3, 99}}, {KVS_ETIMEDOUT, {-1, -1}}};
  std::string reply;
  encode_batch_ok(reply, 7, r);
  auto q = one_frame(reply);
  auto dr = decode_batch_ok(q.body);
  ASSERT_TRUE(dr);
  ASSERT_EQ(dr->size(), 2u);
  EXPECT_EQ((*dr)[0].token, (Token{3, 99}));
  EXPECT_EQ((*dr)[1].code, KVS_ETIMEDOUT);
}

TEST(Frame, HelloWaitTokenAndErrorRoundTrip) {
  std::string wire;
  encode_hello(wire, 1, Hello{});
  auto h = decode_hello(one_frame(wire).body);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->max_version, kVersion);

  wire.clear();
  encode_hello_ok(wire, 1, HelloOk{kVersion, 12345, "kvsd 0.1"});
  auto ho = decode_hello_ok(one_frame(wire).body);
  ASSERT_TRUE(ho);
  EXPECT_EQ(ho->max_frame_bytes, 12345u);
  EXPECT_EQ(ho->server, "kvsd 0.1");

  wire.clear();
  encode_wait(wire, 5, Wait{"t", 100, {2, 1234567890123}});
  auto w = decode_wait(one_frame(wire).body);
  ASSERT_TRUE(w);
  EXPECT_EQ(w->token, (Token{2, 1234567890123}));

  wire.clear();
  encode_token(wire, Type::kPutOk, 9, {1, 2});
  EXPECT_EQ(*decode_token(one_frame(wire).body), (Token{1, 2}));

  wire.clear();
  encode_error(wire, 9, KVS_ETOOBIG, "value of 5 bytes over max_value_bytes 4");
  auto e = decode_error(one_frame(wire).body);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, KVS_ETOOBIG);
  EXPECT_EQ(e->message, "value of 5 bytes over max_value_bytes 4");
}

TEST(Frame, SplitWaitsForWholeFrameAndRefusesBadLengths) {
  std::string wire;
  encode_write(wire, 3, false, Write{"t", 0, "key", "value"});
  Header h;
  std::string_view body;
  std::string why;
  for (size_t n = 0; n < wire.size(); ++n) {
    EXPECT_EQ(split(wire.substr(0, n), 1 << 20, &h, &body, &why), Split::kIncomplete) << n;
  }
  // Over the limit the server gave: refused before the body arrives.
  EXPECT_EQ(split(wire.substr(0, kHeaderBytes), 20, &h, &body, &why), Split::kBad);
  EXPECT_NE(why.find("frame length"), std::string::npos) << why;
  EXPECT_EQ(h.request_id, 3u);
  std::string tiny("\x05\0\0\0", 4);
  EXPECT_EQ(split(tiny, 1 << 20, &h, &body, &why), Split::kBad);
}

TEST(Frame, EveryTruncationOfEveryBodyIsRefusedWithTheField) {
  std::string wire;
  encode_write(wire, 1, false, Write{"tbl", 10, "key", "value"});
  const std::string body = wire.substr(kHeaderBytes);
  for (size_t n = 0; n < body.size(); ++n) {
    auto r = decode_write(static_cast<uint8_t>(Type::kPut), body.substr(0, n));
    ASSERT_FALSE(r) << n;
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
    EXPECT_EQ(r.error().message.rfind("put: ", 0), 0u) << r.error().message;
  }
  auto extra = decode_write(static_cast<uint8_t>(Type::kPut), body + "x");
  ASSERT_FALSE(extra);
  EXPECT_NE(extra.error().message.find("1 bytes after the last field"), std::string::npos);

  wire.clear();
  encode_batch(wire, 1, false, Batch{"t", 0, {{"a", "b"}, {"c", std::nullopt}}});
  const std::string bb = wire.substr(kHeaderBytes);
  for (size_t n = 0; n < bb.size(); ++n) EXPECT_FALSE(decode_batch(bb.substr(0, n))) << n;
}

TEST(Frame, HugeCountsAndLengthsDoNotAllocate) {
  // count 0xffffffff in a 20-byte body: refused without reserving 4G ops.
  std::string body;
  body += std::string("\x01\0t", 3);
  body += std::string("\0\0\0\0", 4);
  body += std::string("\xff\xff\xff\xff", 4);
  body += std::string(9, 'x');
  auto r = decode_batch(body);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("count 4294967295"), std::string::npos) << r.error().message;

  std::string put = std::string("\x01\0t", 3) + std::string(4, '\0') + "\xff\xff\xff\x7f" + "k";
  auto p = decode_write(static_cast<uint8_t>(Type::kPut), put);
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().message.find("key needs 2147483647 bytes"), std::string::npos)
      << p.error().message;
}

TEST(Frame, BadFieldsAreNamed) {
  auto empty_table = decode_wait(std::string("\0\0", 2) + std::string(16, '\0'));
  ASSERT_FALSE(empty_table);
  EXPECT_NE(empty_table.error().message.find("table name of 0 bytes"), std::string::npos);
  std::string hello;
  encode_hello(hello, 1, Hello{0xdeadbeef, 1, 1});
  auto h = decode_hello(std::string_view(hello).substr(kHeaderBytes));
  ASSERT_FALSE(h);
  EXPECT_NE(h.error().message.find("bad magic"), std::string::npos);
  std::string wait;
  encode_wait(wait, 1, Wait{"t", 0, {-1, 5}});
  EXPECT_FALSE(decode_wait(std::string_view(wait).substr(kHeaderBytes)));
  std::string batch;
  encode_batch(batch, 1, false, Batch{"t", 0, {{"a", "b"}}});
  batch[kHeaderBytes + 3 + 4 + 4] = 0x07;  // the op's type: stats
  auto b = decode_batch(std::string_view(batch).substr(kHeaderBytes));
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message.find("operation 0 has type stats"), std::string::npos)
      << b.error().message;
}

TEST(Frame, RandomBytesNeverCrashAndAlwaysAnswer) {
  std::mt19937_64 rng(1);
  for (int i = 0; i < 20000; ++i) {
    std::string buf(rng() % 64, '\0');
    for (auto& c : buf) c = static_cast<char>(rng());
    for (uint8_t type = 0; type < 8; ++type) {
      (void)decode_write(type, buf);
    }
    (void)decode_batch(buf);
    (void)decode_wait(buf);
    (void)decode_hello(buf);
    (void)decode_batch_ok(buf);
    (void)decode_error(buf);
    Header h;
    std::string_view body;
    std::string why;
    const Split s = split(buf, 1 << 16, &h, &body, &why);
    if (s == Split::kFrame) {
      EXPECT_LE(body.size() + kHeaderBytes, buf.size());
    }
    if (s == Split::kBad) {
      EXPECT_FALSE(why.empty());
    }
  }
}

}  // namespace
}  // namespace kvs::protocol
