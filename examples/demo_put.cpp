// Writes key=value pairs into a table through the internal writer API, as
// kvsd's applier does. For the README's first try until kvsd lands.
//   demo_put TABLE KEY=VALUE...     (shm prefix from KVS_SHM_PREFIX, default "kvs.")
#include <cstdio>
#include <cstdlib>
#include <string>

#include "writer/table_writer.hpp"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TABLE KEY=VALUE...\n", argv[0]);
    return 2;
  }
  kvs::WriterOptions o;
  o.table = argv[1];
  if (const char* p = std::getenv("KVS_SHM_PREFIX")) o.shm_prefix = p;
  o.capacity = 1024;
  o.arena_bytes = 4 << 20;
  o.max_value_bytes = 64 << 10;
  auto w = kvs::TableWriter::open(o);
  if (!w) {
    std::fprintf(stderr, "demo_put: %s\n", w.error().message.c_str());
    return 1;
  }
  for (int i = 2; i < argc; ++i) {
    const std::string kv = argv[i];
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "demo_put: '%s' is not KEY=VALUE\n", argv[i]);
      return 2;
    }
    if (auto r = (*w)->put(kv.substr(0, eq), kv.substr(eq + 1)); !r) {
      std::fprintf(stderr, "demo_put: %s\n", r.error().message.c_str());
      return 1;
    }
    std::printf("put %s\n", kv.c_str());
  }
  (*w)->set_state(kvs::format::TableState::kReady);
  std::printf("%s: %llu entries, READY\n", kvs::shm::path_of((*w)->segment_name()).c_str(),
              static_cast<unsigned long long>((*w)->stats().size));
  return 0;
}
