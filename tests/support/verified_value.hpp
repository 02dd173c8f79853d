// Values whose content proves they are whole: the key id, a version, a
// payload whose length and bytes derive from both, and a checksum over all.
// A torn, stale-block or misplaced read fails check_value().
#pragma once

#include <xxhash.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

namespace kvs::test {

inline std::string make_key(uint64_t id) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "k%015llu", static_cast<unsigned long long>(id));
  return std::string(buf, 16);
}

inline size_t payload_len(uint64_t id, uint64_t version) { return (id * 31 + version * 7) % 193; }

inline std::string make_value(uint64_t id, uint64_t version) {
  const size_t n = payload_len(id, version);
  std::string v(16 + n + 8, '\0');
  std::memcpy(v.data(), &id, 8);
  std::memcpy(v.data() + 8, &version, 8);
  for (size_t i = 0; i < n; ++i) v[16 + i] = static_cast<char>((id + version + i) * 131);
  const uint64_t sum = XXH64(v.data(), 16 + n, 7);
  std::memcpy(v.data() + 16 + n, &sum, 8);
  return v;
}

// True if `value` is a whole value written for `key`; sets *version.
inline bool check_value(std::string_view key, std::string_view value, uint64_t* version) {
  if (value.size() < 24) return false;
  uint64_t id, ver, sum;
  std::memcpy(&id, value.data(), 8);
  std::memcpy(&ver, value.data() + 8, 8);
  if (value.size() != 24 + payload_len(id, ver)) return false;
  std::memcpy(&sum, value.data() + value.size() - 8, 8);
  if (XXH64(value.data(), value.size() - 8, 7) != sum) return false;
  if (make_key(id) != key) return false;
  for (size_t i = 0; i < value.size() - 24; ++i) {
    if (value[16 + i] != static_cast<char>((id + ver + i) * 131)) return false;
  }
  *version = ver;
  return true;
}

}  // namespace kvs::test
