// The write socket's wire format (docs/protocol.md): length-prefixed binary
// frames, little-endian, shared by kvsd's server and libkvs's client.
//
//   u32 length      bytes after this field: 12 + body (12 <= length <= max)
//   u8  type        Type below; replies have the top bit set
//   u8  flags       kFlagVisible on put, erase and batch; else 0
//   u16 reserved    0
//   u64 request_id  chosen by the client, echoed in the reply
//   body            per type
//
// Decoders never trust a length: every field is checked against the bytes
// that are left, and a failure says which field of which frame was wrong.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvs/result.hpp"

namespace kvs::protocol {

inline constexpr uint16_t kVersion = 1;
inline constexpr size_t kHeaderBytes = 16;             // length field included
inline constexpr uint32_t kMinLength = 12;             // a frame with an empty body
inline constexpr uint32_t kHelloMaxFrameBytes = 4096;  // before the handshake
inline constexpr uint32_t kMagic = 0x3153564b;         // "KVS1" little-endian
inline constexpr size_t kMaxTableName = 200;
inline constexpr size_t kMaxErrorMessage = 4096;

enum class Type : uint8_t {
  kHello = 0x01,
  kPing = 0x02,
  kPut = 0x03,
  kErase = 0x04,
  kBatch = 0x05,
  kWait = 0x06,
  kStats = 0x07,
  kOpen = 0x08,
  kHelloOk = 0x81,
  kPong = 0x82,
  kPutOk = 0x83,
  kEraseOk = 0x84,
  kBatchOk = 0x85,
  kWaitOk = 0x86,
  kStatsOk = 0x87,
  kOpenOk = 0x88,
  kError = 0xff,
};
inline constexpr uint8_t kFlagVisible = 0x01;

// Name of a type for messages ("put", "0x42" for unknown ones).
std::string type_name(uint8_t type);

struct Header {
  uint32_t length = 0;
  uint8_t type = 0;
  uint8_t flags = 0;
  uint16_t reserved = 0;
  uint64_t request_id = 0;
};

enum class Split {
  kIncomplete,  // fewer bytes than the frame needs: read more
  kFrame,       // *header and *body set; the frame is kHeaderBytes + body->size() long
  kBad,         // length out of range: the stream cannot be resynchronised
};
// Looks at the front of `buf`. On kBad, *why says what was wrong and
// header->request_id holds the id if the header was complete.
Split split(std::string_view buf, uint32_t max_frame_bytes, Header* header, std::string_view* body,
            std::string* why);

struct Token {
  int32_t partition = -1;
  int64_t offset = -1;
  bool operator==(const Token&) const = default;
};

struct Hello {
  uint32_t magic = kMagic;
  uint16_t min_version = kVersion;
  uint16_t max_version = kVersion;
};
struct HelloOk {
  uint16_t version = kVersion;
  uint32_t max_frame_bytes = 0;
  std::string_view server;
};
// A put (value set) or an erase (no value).
struct Write {
  std::string_view table;
  uint32_t timeout_ms = 0;  // 0: kvsd's write_timeout_ms
  std::string_view key;
  std::optional<std::string_view> value;
};
struct BatchOp {
  std::string_view key;
  std::optional<std::string_view> value;  // nullopt: erase
};
struct Batch {
  std::string_view table;
  uint32_t timeout_ms = 0;
  std::vector<BatchOp> ops;
};
struct BatchResult {
  int32_t code = 0;  // KVS_OK or a KVS_E* code
  Token token;
};
struct Wait {
  std::string_view table;
  uint32_t timeout_ms = 0;
  Token token;
};
// OPEN asks for a table's descriptors (docs/protocol.md): what `want`
// names, sent with the reply by SCM_RIGHTS in the order of the bits.
inline constexpr uint8_t kOpenSegment = 0x01;     // the segment, read-only
inline constexpr uint8_t kOpenReaderFile = 0x02;  // a reader file, read-write and locked
inline constexpr uint8_t kOpenWaitLink = 0x04;    // a connection to the table's wait hub
inline constexpr uint8_t kOpenAll = 0x07;
struct Open {
  std::string_view table;
  uint8_t want = 0;
  // The segment incarnation the reader file is for; 0: the current one.
  uint64_t incarnation = 0;
};
struct OpenOk {
  uint8_t sent = 0;          // the descriptors attached, as `want` names them
  uint64_t incarnation = 0;  // of the segment sent, or the reader file's
};
struct ErrorReply {
  int32_t code = 0;
  std::string_view message;
};

// Decoders: kInvalidArgument with "<type>: <field> ..." on any malformed body.
Result<Hello> decode_hello(std::string_view body);
Result<HelloOk> decode_hello_ok(std::string_view body);
Result<Write> decode_write(uint8_t type, std::string_view body);  // kPut or kErase
Result<Batch> decode_batch(std::string_view body);
Result<Wait> decode_wait(std::string_view body);
Result<Token> decode_token(std::string_view body);  // kPutOk, kEraseOk
Result<std::vector<BatchResult>> decode_batch_ok(std::string_view body);
Result<ErrorReply> decode_error(std::string_view body);
Result<Open> decode_open(std::string_view body);
Result<OpenOk> decode_open_ok(std::string_view body);

// Encoders append one whole frame to `out`.
void encode_frame(std::string& out, Type type, uint8_t flags, uint64_t id, std::string_view body);
void encode_hello(std::string& out, uint64_t id, const Hello& h);
void encode_hello_ok(std::string& out, uint64_t id, const HelloOk& h);
void encode_write(std::string& out, uint64_t id, bool visible, const Write& w);
void encode_batch(std::string& out, uint64_t id, bool visible, const Batch& b);
void encode_wait(std::string& out, uint64_t id, const Wait& w);
void encode_token(std::string& out, Type type, uint64_t id, Token t);
void encode_batch_ok(std::string& out, uint64_t id, std::span<const BatchResult> r);
void encode_error(std::string& out, uint64_t id, int32_t code, std::string_view message);
void encode_open(std::string& out, uint64_t id, const Open& o);
void encode_open_ok(std::string& out, uint64_t id, const OpenOk& o);

}  // namespace kvs::protocol
