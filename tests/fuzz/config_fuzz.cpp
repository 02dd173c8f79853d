// libFuzzer target: kvsd.toml's loader (what kvsd and --check-config run on a
// file an operator wrote). Whatever the bytes, parse() returns a config or an
// error naming where, and never crashes, hangs or throws.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "config/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto c = kvs::config::parse(text, "fuzz.toml");
  if (!c && c.error().message.rfind("fuzz.toml", 0) != 0) std::abort();  // errors say where
  if (c && c->tables.empty()) std::abort();                              // a config serves a table
  return 0;
}
