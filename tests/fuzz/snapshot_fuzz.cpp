// libFuzzer target: what kvsd does with a snapshot file (its own, or a
// seed_from file from another host). A real snapshot (of a table made by
// the writer, written by kvs_snapshot_write) is the template; each input
// xors bytes into it anywhere, and, since checksums are no secret, most
// inputs then have every checksum recomputed (at the template's chunk
// boundaries), so that the checks behind them are reached. The result is
// loaded into a fresh table. Whatever the bytes, the loader must not crash,
// read or write outside its buffers (ASan), allocate without bound, or
// loop forever; it either refuses the file or loads it.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "format/snapshot.hpp"
#include "kvs/kvs.h"
#include "src/shm.hpp"
#include "writer/snapshot.hpp"
#include "writer/table_writer.hpp"

namespace {

using namespace kvs::format;

kvs::WriterOptions options(const std::string& prefix, const std::string& table) {
  kvs::WriterOptions o;
  o.table = table;
  o.shm_prefix = prefix;
  o.capacity = 256;
  o.arena_bytes = 1 << 16;
  o.partition_capacity = 4;
  o.reader_slots = 4;
  o.max_value_bytes = 512;
  return o;
}

struct Template {
  std::string prefix = "kvsfuzzsnap" + std::to_string(::getpid()) + ".";
  std::string file = "/tmp/kvs-snapshot-fuzz-" + std::to_string(::getpid());
  std::vector<uint8_t> image;
  size_t partitions_at = 0, partitions_bytes = 0;
  struct Chunk {
    size_t at, bytes;  // the payload
  };
  std::vector<Chunk> chunks;
  size_t trailer_at = 0;

  Template() {
    auto w = kvs::TableWriter::open(options(prefix, "t"));
    if (!w || !(*w)->set_partition_count(2)) std::abort();
    for (int i = 0; i < 120; ++i) {
      const kvs::format::Origin o{1000 + i, static_cast<uint32_t>(i % 2)};
      if (!(*w)->apply("k" + std::to_string(i), std::string(i * 3, 'v'), o)) std::abort();
    }
    (*w)->record_applied(0, 7, 1006, "k6");
    (*w)->record_applied(1, 9, 1009, "k9");
    kvs_open_options oo{prefix.c_str(), nullptr, nullptr, KVS_HANDOVER_NEVER};
    kvs_table* t = nullptr;
    if (kvs_open("t", &oo, &t) != KVS_OK || kvs_snapshot_write(t, file.c_str(), nullptr) != KVS_OK)
      std::abort();
    kvs_close(t);
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    image.resize(static_cast<size_t>(::lseek(fd, 0, SEEK_END)));
    if (::pread(fd, image.data(), image.size(), 0) != static_cast<ssize_t>(image.size()))
      std::abort();
    ::close(fd);
    w->reset();
    kvs::shm::remove_segment(prefix + "t");
    std::filesystem::remove_all("/dev/shm/" + prefix + "t.readers");
    // The template's layout, for recomputing checksums.
    FileHeader h;
    std::memcpy(&h, image.data(), sizeof h);
    partitions_at = sizeof h;
    partitions_bytes = h.partition_count * sizeof(SnapshotPartition);
    size_t at = partitions_at + partitions_bytes + 8;
    for (;;) {
      ChunkHeader c;
      std::memcpy(&c, image.data() + at, sizeof c);
      if (c.entries == static_cast<uint32_t>(kSnapshotEndMagic)) break;
      chunks.push_back(Chunk{at + sizeof c, c.payload_bytes});
      at += sizeof c + c.payload_bytes;
    }
    trailer_at = at;
  }
  ~Template() { ::unlink(file.c_str()); }

  // Recomputes every checksum of `b` over the template's boundaries.
  void reseal(std::vector<uint8_t>& b) const {
    auto put64 = [&](size_t at, uint64_t v) {
      if (at + 8 <= b.size()) std::memcpy(b.data() + at, &v, 8);
    };
    if (b.size() >= sizeof(FileHeader)) {
      FileHeader h;
      std::memcpy(&h, b.data(), sizeof h);
      put64(offsetof(FileHeader, checksum), header_checksum(h));
    }
    if (partitions_at + partitions_bytes + 8 <= b.size()) {
      put64(partitions_at + partitions_bytes,
            XXH3_64bits(b.data() + partitions_at, partitions_bytes));
    }
    std::vector<uint64_t> sums;
    for (const Chunk& c : chunks) {
      if (c.at + c.bytes > b.size()) return;
      sums.push_back(XXH3_64bits(b.data() + c.at, c.bytes));
      put64(c.at - 8, sums.back());
    }
    put64(trailer_at + offsetof(Trailer, checksum), XXH3_64bits(sums.data(), sums.size() * 8));
  }
};

// Input: a mode byte, then (u16 offset, byte) pairs xored into the
// template. Mode bit 0: reseal the checksums; bit 1: truncate the file at
// the first pair's offset.
void mutate(const Template& t, const uint8_t* data, size_t size, std::vector<uint8_t>& b) {
  b = t.image;
  if (size == 0) return;
  const uint8_t mode = data[0];
  ++data;
  --size;
  for (size_t i = 0; i + 3 <= size; i += 3) {
    const size_t off = (size_t{data[i]} | size_t{data[i + 1]} << 8) % b.size();
    b[off] ^= data[i + 2];
  }
  if (mode & 1) t.reseal(b);
  if ((mode & 2) && size >= 2) b.resize((size_t{data[0]} | size_t{data[1]} << 8) % b.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Template t;
  static std::vector<uint8_t> bytes;
  mutate(t, data, size, bytes);
  const int fd = ::open(t.file.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0 || ::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
    std::abort();
  ::close(fd);
  auto head = kvs::read_snapshot_header(t.file, "t");
  auto w = kvs::TableWriter::open(options(t.prefix, "u"));
  if (!w) std::abort();
  (void)kvs::load_snapshot(t.file, "t", **w);
  w->reset();
  kvs::shm::remove_segment(t.prefix + "u");
  std::filesystem::remove_all("/dev/shm/" + t.prefix + "u.readers");
  (void)head;
  return 0;
}
