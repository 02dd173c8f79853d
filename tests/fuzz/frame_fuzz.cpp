// libFuzzer target: the write socket's frame parser (what kvsd runs on every
// byte a client sends). Whatever the input, the parser must not crash, read
// out of bounds or allocate beyond the input; whatever it accepts must encode
// back to the same bytes.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "protocol/frame.hpp"

using namespace kvs::protocol;

namespace {
void check(bool ok) {
  if (!ok) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view buf(reinterpret_cast<const char*>(data), size);
  while (!buf.empty()) {
    Header h;
    std::string_view body;
    std::string why;
    const Split s = split(buf, 1 << 16, &h, &body, &why);
    if (s != Split::kFrame) {
      check(s == Split::kIncomplete || !why.empty());
      break;
    }
    const std::string_view frame = buf.substr(0, kHeaderBytes + body.size());
    buf.remove_prefix(frame.size());
    std::string again;
    switch (static_cast<Type>(h.type)) {
      case Type::kPut:
      case Type::kErase:
        if (auto w = decode_write(h.type, body)) {
          encode_write(again, h.request_id, h.flags & kFlagVisible, *w);
          check(again.substr(kHeaderBytes) == body);
        }
        break;
      case Type::kBatch:
        if (auto b = decode_batch(body)) {
          encode_batch(again, h.request_id, false, *b);
          check(again.substr(kHeaderBytes) == body);
        }
        break;
      case Type::kWait:
        if (auto w = decode_wait(body)) {
          encode_wait(again, h.request_id, *w);
          check(again.substr(kHeaderBytes) == body);
        }
        break;
      case Type::kHello:
        (void)decode_hello(body);
        break;
      case Type::kBatchOk:
        (void)decode_batch_ok(body);
        break;
      case Type::kError:
        (void)decode_error(body);
        break;
      default:
        (void)decode_token(body);
        (void)decode_hello_ok(body);
        break;
    }
  }
  return 0;
}
