// libFuzzer target: what a reader does with a segment it finds in /dev/shm.
// A real table (made by the writer) is the template; each input rewrites its
// header, its index groups, its arena, or bytes anywhere, and the result is
// opened and read through the public C ABI (kvs_open, gets, multi_get,
// for_each, stat, offsets, a watch of the change log) exactly as a reader
// would. Whatever the bytes,
// libkvs must not crash, read outside its mapping (ASan) or loop forever.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kvs/kvs.h"
#include "writer/table_writer.hpp"

namespace {

struct Template {
  std::string prefix = "kvsfuzz" + std::to_string(::getpid()) + ".";
  std::string path = "/dev/shm/" + prefix + "f";
  std::unique_ptr<kvs::TableWriter> writer;  // holds the registry the readers use
  std::vector<uint8_t> image;
  // The same table before its changes were published: a watch opened on it
  // starts at position 0, and so reads the (mutated) log of `image`.
  std::vector<uint8_t> unpublished;
  uint64_t groups_offset = 0, arena_offset = 0, log_offset = 0;
  int fd = -1;

  Template() {
    kvs::WriterOptions o;
    o.table = "f";
    o.shm_prefix = prefix;
    o.capacity = 64;
    o.arena_bytes = 8192;
    o.partition_capacity = 2;
    o.reader_slots = 4;
    o.max_value_bytes = 512;
    o.max_key_bytes = 64;
    o.change_log_entries = 64;
    auto w = kvs::TableWriter::open(o);
    if (!w) std::abort();
    writer = std::move(*w);
    fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    const auto& h = writer->header();
    unpublished.resize(h.segment_bytes);
    if (fd < 0 || ::pread(fd, unpublished.data(), unpublished.size(), 0) !=
                      static_cast<ssize_t>(unpublished.size()))
      std::abort();
    for (int i = 0; i < 40; ++i) {
      // Keys of one and of two log entries.
      const std::string key = (i % 2 ? "k" : "a-key-longer-than-16-bytes-") + std::to_string(i);
      if (!writer->apply(key, std::string(i * 3, 'v'), kvs::format::Origin{i, 0}, i)) std::abort();
    }
    if (!writer->set_partition_count(2)) std::abort();
    writer->set_next_offset(0, 40);
    writer->publish_batch();
    image.resize(h.segment_bytes);
    if (::pread(fd, image.data(), image.size(), 0) != static_cast<ssize_t>(image.size()))
      std::abort();
    groups_offset = h.groups_offset;
    arena_offset = h.arena_offset;
    log_offset = h.log_offset;
  }
  ~Template() {
    writer.reset();
    ::close(fd);
    ::unlink(path.c_str());
    std::system(("rm -rf '" + path + ".readers'").c_str());
  }
};

// Input: a mode byte, then bytes. Mode 0: the bytes replace the start of the
// segment (the header, then partitions); 1: the index groups; 2: the arena;
// 3: (u16 offset, byte) pairs xored in anywhere; 4: the change log.
void mutate(const Template& t, const uint8_t* data, size_t size, std::vector<uint8_t>& seg) {
  seg = t.image;
  if (size == 0) return;
  const uint8_t mode = data[0] % 5;
  ++data;
  --size;
  if (mode == 3) {
    for (size_t i = 0; i + 3 <= size; i += 3) {
      const size_t off = (size_t{data[i]} | size_t{data[i + 1]} << 8) % seg.size();
      seg[off] ^= data[i + 2];
    }
    return;
  }
  const uint64_t start = mode == 0   ? 0
                         : mode == 1 ? t.groups_offset
                         : mode == 2 ? t.arena_offset
                                     : t.log_offset;
  std::memcpy(seg.data() + start, data, std::min<size_t>(size, seg.size() - start));
}

void read_everything(kvs_table* table) {
  kvs_txn* x = nullptr;
  if (kvs_read_begin(table, &x) != KVS_OK) return;
  const char* keys[] = {"k0", "k1", "k7", "k39", "absent", ""};
  size_t lens[6];
  const void* values[6];
  size_t value_lens[6];
  int results[6];
  volatile uint8_t sink = 0;
  for (int i = 0; i < 6; ++i) {
    lens[i] = std::strlen(keys[i]);
    const void* v = nullptr;
    size_t len = 0;
    if (kvs_get(x, keys[i], lens[i], &v, &len) == KVS_OK && len > 0) {
      sink = sink + static_cast<const uint8_t*>(v)[len - 1];  // the value is inside the mapping
    }
  }
  kvs_multi_get(x, 6, reinterpret_cast<const void* const*>(keys), lens, values, value_lens,
                results);
  for (int i = 0; i < 6; ++i) {
    if (results[i] == KVS_OK && value_lens[i] > 0) {
      sink = sink + static_cast<const uint8_t*>(values[i])[value_lens[i] - 1];
    }
  }
  kvs_for_each(
      x,
      [](void* ctx, const void*, size_t key_len, const void* value, size_t value_len) {
        auto* s = static_cast<volatile uint8_t*>(ctx);
        if (value_len > 0) *s = *s + static_cast<const uint8_t*>(value)[value_len - 1];
        return key_len > 1000 ? 1 : 0;
      },
      const_cast<uint8_t*>(&sink));
  kvs_read_end(x);
  kvs_table_stats st;
  kvs_stat(table, &st);
  int64_t next = 0, hw = 0;
  kvs_partition_offsets(table, 1, &next, &hw);
  kvs_token tok{1, 0};
  kvs_wait(table, &tok, 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Template t;
  static std::vector<uint8_t> seg;
  mutate(t, data, size, seg);
  auto write = [&](const std::vector<uint8_t>& bytes) {
    if (::pwrite(t.fd, bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size()))
      std::abort();
  };
  kvs_open_options o{t.prefix.c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
  kvs_table* table = nullptr;
  write(seg);
  if (kvs_open("f", &o, &table) == KVS_OK) {
    read_everything(table);
    kvs_close(table);
  }
  // The change log, read by a watch that began before the changes.
  write(t.unpublished);
  if (kvs_open("f", &o, &table) != KVS_OK) std::abort();
  kvs_watch* w = nullptr;
  if (kvs_watch_open(table, KVS_WATCH_PREFIX, "k", 1, &w) != KVS_OK) std::abort();
  write(seg);
  kvs_change c;
  volatile uint8_t sink = 0;
  for (int i = 0; i < 100 && kvs_watch_next(w, &c, 0) == KVS_OK; ++i) {
    if (c.key_len > 0) sink = sink + static_cast<const uint8_t*>(c.key)[c.key_len - 1];
  }
  kvs_watch_close(w);
  kvs_close(table);
  return 0;
}
