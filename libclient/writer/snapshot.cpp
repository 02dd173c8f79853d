// Writing and loading snapshot files; see snapshot.hpp for the rules and
// libclient/format/snapshot.hpp for the bytes.
#include "writer/snapshot.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

namespace kvs {
using namespace format;

namespace {

Error sys_error(const std::string& what, int err) {
  return Error{Errc::kSystem, what + ": " + std::strerror(err)};
}

uint64_t hash_of(const std::string& s) { return XXH3_64bits(s.data(), s.size()); }

// A file descriptor closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Writes all of `data`; false (errno set) on failure.
bool write_all(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w == 0) errno = EIO;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Writes entries in checksummed chunks, and the trailer.
class ChunkWriter {
 public:
  explicit ChunkWriter(int fd) : fd_(fd) { buf_.reserve(kSnapshotChunkBytes + 4096); }
  bool add(std::string_view key, std::string_view value, Origin origin) {
    const EntryHeader h{static_cast<uint32_t>(key.size()), static_cast<uint32_t>(value.size()),
                        origin.partition, 0, origin.timestamp_ms};
    const size_t at = buf_.size();
    buf_.resize(at + sizeof h + key.size() + value.size());
    std::memcpy(buf_.data() + at, &h, sizeof h);
    std::memcpy(buf_.data() + at + sizeof h, key.data(), key.size());
    std::memcpy(buf_.data() + at + sizeof h + key.size(), value.data(), value.size());
    ++in_chunk_;
    ++entries_;
    bytes_ += key.size() + value.size();
    return buf_.size() < kSnapshotChunkBytes || flush();
  }
  bool finish() {
    if (!flush()) return false;
    const Trailer t{kSnapshotEndMagic, entries_, chunks_, XXH3_64bits_digest(&sums_)};
    return write_all(fd_, &t, sizeof t);
  }
  uint64_t entries() const { return entries_; }
  uint64_t bytes() const { return bytes_; }

 private:
  bool flush() {
    if (in_chunk_ == 0) return true;
    const ChunkHeader c{in_chunk_, static_cast<uint32_t>(buf_.size()),
                        XXH3_64bits(buf_.data(), buf_.size())};
    XXH3_64bits_update(&sums_, &c.checksum, sizeof c.checksum);
    if (!write_all(fd_, &c, sizeof c) || !write_all(fd_, buf_.data(), buf_.size())) return false;
    buf_.clear();
    in_chunk_ = 0;
    ++chunks_;
    return true;
  }
  int fd_;
  std::vector<char> buf_;
  uint32_t in_chunk_ = 0;
  uint64_t entries_ = 0, bytes_ = 0, chunks_ = 0;
  XXH3_state_t sums_ = [] {
    XXH3_state_t s;
    XXH3_64bits_reset(&s);
    return s;
  }();
};

std::vector<SnapshotPartition> partitions_of(const TableWriter& w) {
  std::vector<SnapshotPartition> ps(w.header().partition_count.load(std::memory_order_relaxed));
  for (uint32_t p = 0; p < ps.size(); ++p) {
    const TableWriter::LastRecord last = w.last_record(p);
    ps[p] = SnapshotPartition{w.next_offset(p), w.high_watermark(p), last.offset, last.timestamp_ms,
                              last.key_hash};
  }
  return ps;
}

// Reads exactly n bytes at the file's position; what failed, or "".
std::string read_exact(int fd, void* out, size_t n, uint64_t* pos) {
  auto* p = static_cast<char*>(out);
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, p + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return std::string("read: ") + std::strerror(errno);
    if (r == 0) return "truncated at byte " + std::to_string(*pos + got);
    got += static_cast<size_t>(r);
  }
  *pos += n;
  return "";
}

}  // namespace

Result<SnapshotInfo> write_snapshot(const TableWriter& w, const std::string& table,
                                    const std::string& path) {
  const std::string tmp =
      path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(std::random_device{}());
  Fd f{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640)};
  if (f.fd < 0) return sys_error("creating snapshot " + tmp, errno);
  // Removed on every way out but the rename (an exception included).
  struct Unlink {
    const std::string& name;
    bool keep = false;
    ~Unlink() {
      if (!keep) ::unlink(name.c_str());
    }
  } unlink_tmp{tmp};
  auto fail = [&](const std::string& what) { return sys_error(what + " " + tmp, errno); };
  SnapshotInfo info;
  info.path = path;
  info.created_unix_ns = now_unix_ns();
  info.source_cluster = w.source_cluster();
  info.source_topic = w.source_topic();
  info.partitions = partitions_of(w);
  FileHeader h{};
  // The header is written last, over a placeholder: the counts are known
  // only then, and a file without its header is never taken for one.
  if (!write_all(f.fd, &h, sizeof h)) return fail("writing");
  const uint64_t psum =
      XXH3_64bits(info.partitions.data(), info.partitions.size() * sizeof(SnapshotPartition));
  if (!write_all(f.fd, info.partitions.data(),
                 info.partitions.size() * sizeof(SnapshotPartition)) ||
      !write_all(f.fd, &psum, sizeof psum)) {
    return fail("writing");
  }
  ChunkWriter chunks(f.fd);
  bool ok = true;
  uint64_t too_large = 0;  // an entry no chunk may hold
  w.for_each_entry([&](std::string_view k, std::string_view v, Origin o) {
    const uint64_t bytes = sizeof(EntryHeader) + k.size() + v.size();
    if (bytes > kSnapshotMaxChunkBytes - kSnapshotChunkBytes) too_large = bytes;
    if (ok && too_large == 0) ok = chunks.add(k, v, o);
  });
  if (too_large != 0) {
    return make_error(Errc::kTooLarge,
                      "snapshot " + path + ": an entry of " + std::to_string(too_large) +
                          " bytes is larger than a snapshot's chunk may be (" +
                          std::to_string(kSnapshotMaxChunkBytes - kSnapshotChunkBytes) + ")");
  }
  if (!ok || !chunks.finish()) return fail("writing");
  info.entries = chunks.entries();
  info.entry_bytes = chunks.bytes();
  h = FileHeader{kSnapshotMagic,
                 kSnapshotVersion,
                 sizeof(FileHeader),
                 snapshot_fingerprint(),
                 info.created_unix_ns,
                 info.source_cluster,
                 info.source_topic,
                 hash_of(table),
                 info.entries,
                 info.entry_bytes,
                 static_cast<uint32_t>(info.partitions.size()),
                 0,
                 0};
  h.checksum = header_checksum(h);
  if (const ssize_t n = ::pwrite(f.fd, &h, sizeof h, 0); n != static_cast<ssize_t>(sizeof h)) {
    if (n >= 0) errno = EIO;
    return fail("writing");
  }
  if (::fsync(f.fd) != 0) return fail("fsync");
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return fail("fstat");
  info.file_bytes = static_cast<uint64_t>(st.st_size);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("renaming to " + path + ":");
  unlink_tmp.keep = true;
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  Fd d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd < 0 || ::fsync(d.fd) != 0) {
    return sys_error("snapshot " + path + " is written, but the fsync of its directory " + dir +
                         " failed (a crash may still lose the rename)",
                     errno);
  }
  return info;
}

namespace {

// Reads and checks the header and the partitions; leaves the file at the
// first chunk.
Result<SnapshotInfo> read_head(int fd, const std::string& path, const std::string& table,
                               uint64_t* pos) {
  auto bad = [&](const std::string& what) {
    return make_error(Errc::kCorrupt, "snapshot " + path + ": " + what);
  };
  FileHeader h{};
  if (auto e = read_exact(fd, &h, sizeof h, pos); !e.empty()) return bad(e);
  if (h.magic != kSnapshotMagic) return bad("not a kvs snapshot");
  if (h.version != kSnapshotVersion || h.header_bytes != sizeof h ||
      h.fingerprint != snapshot_fingerprint()) {
    return bad("format version " + std::to_string(h.version) +
               " (or another host's), this kvs reads " + std::to_string(kSnapshotVersion));
  }
  if (h.checksum != header_checksum(h)) return bad("the header's checksum does not match");
  if (h.table_hash != hash_of(table)) return bad("a snapshot of another table, not " + table);
  if (h.partition_count > kSnapshotMaxPartitions) return bad("too many partitions");
  SnapshotInfo info;
  info.path = path;
  info.created_unix_ns = h.created_unix_ns;
  info.source_cluster = h.source_cluster;
  info.source_topic = h.source_topic;
  info.entries = h.entries;
  info.entry_bytes = h.entry_bytes;
  info.partitions.resize(h.partition_count);
  const size_t pbytes = info.partitions.size() * sizeof(SnapshotPartition);
  uint64_t psum = 0;
  if (auto e = read_exact(fd, info.partitions.data(), pbytes, pos); !e.empty()) return bad(e);
  if (auto e = read_exact(fd, &psum, sizeof psum, pos); !e.empty()) return bad(e);
  if (psum != XXH3_64bits(info.partitions.data(), pbytes)) {
    return bad("the partitions' checksum does not match");
  }
  for (uint32_t p = 0; p < info.partitions.size(); ++p) {
    const SnapshotPartition& sp = info.partitions[p];
    const bool fingerprint_ok =
        sp.last_offset == -1 || (sp.last_offset >= 0 && sp.last_offset < sp.next_offset);
    if (sp.next_offset < 0 || sp.high_watermark < sp.next_offset || !fingerprint_ok) {
      return bad("partition " + std::to_string(p) + "'s position is impossible");
    }
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    return make_error(Errc::kSystem, "fstat " + path + ": " + std::strerror(errno));
  info.file_bytes = static_cast<uint64_t>(st.st_size);
  // Counts a table is sized by must fit the file (the checksum is no secret).
  if (info.entries > info.file_bytes / sizeof(EntryHeader) || info.entry_bytes > info.file_bytes) {
    return bad("the header counts " + std::to_string(info.entries) + " entries of " +
               std::to_string(info.entry_bytes) + " bytes, more than its " +
               std::to_string(info.file_bytes) + " bytes hold: truncated, or not a whole file");
  }
  return info;
}

Result<int> open_snapshot(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd >= 0) return fd;
  if (errno == ENOENT) return make_error(Errc::kNoTable, "no snapshot " + path);
  return sys_error("opening snapshot " + path, errno);
}

// One chunk's entries, checked whole (bounds, origins) before any is
// applied; adds their key and value bytes to *bytes.
Result<void> apply_chunk(const std::vector<char>& buf, uint32_t entries, uint32_t partitions,
                         TableWriter& into, const std::string& where, uint64_t* bytes) {
  for (int pass = 0; pass < 2; ++pass) {
    size_t at = 0;
    for (uint32_t i = 0; i < entries; ++i) {
      EntryHeader e{};
      if (buf.size() - at < sizeof e) return make_error(Errc::kCorrupt, where + ": entry overruns");
      std::memcpy(&e, buf.data() + at, sizeof e);
      at += sizeof e;
      if (buf.size() - at < uint64_t{e.key_len} + e.value_len) {
        return make_error(Errc::kCorrupt, where + ": entry overruns its chunk");
      }
      if (e.partition >= partitions) {
        return make_error(Errc::kCorrupt, where + ": an entry of partition " +
                                              std::to_string(e.partition) + " of " +
                                              std::to_string(partitions));
      }
      const std::string_view key(buf.data() + at, e.key_len);
      const std::string_view value(buf.data() + at + e.key_len, e.value_len);
      at += uint64_t{e.key_len} + e.value_len;
      if (pass == 0) continue;
      *bytes += key.size() + value.size();
      auto r = into.apply(key, value, Origin{e.timestamp_ms, e.partition});
      if (!r) return std::move(r).error().context(where);
    }
    if (at != buf.size()) return make_error(Errc::kCorrupt, where + ": bytes after the entries");
  }
  return {};
}

}  // namespace

Result<SnapshotInfo> read_snapshot_header(const std::string& path, const std::string& table) {
  auto fd = open_snapshot(path);
  if (!fd) return std::move(fd).error();
  Fd f{*fd};
  uint64_t pos = 0;
  return read_head(f.fd, path, table, &pos);
}

Result<SnapshotInfo> load_snapshot(const std::string& path, const std::string& table,
                                   TableWriter& into) {
  auto fd = open_snapshot(path);
  if (!fd) return std::move(fd).error();
  Fd f{*fd};
  uint64_t pos = 0;
  auto info = read_head(f.fd, path, table, &pos);
  if (!info) return info;
  auto bad = [&](const std::string& what) {
    return make_error(Errc::kCorrupt, "snapshot " + path + ": " + what);
  };
  const uint32_t partitions = static_cast<uint32_t>(info->partitions.size());
  if (partitions > into.header().partition_capacity) {
    return bad(std::to_string(partitions) + " partitions, more than the table tracks (" +
               std::to_string(into.header().partition_capacity) + ", max_partitions)");
  }
  XXH3_state_t sums;
  XXH3_64bits_reset(&sums);
  uint64_t entries = 0, chunks = 0, bytes = 0;
  std::vector<char> buf;
  for (;;) {
    ChunkHeader c{};
    if (auto e = read_exact(f.fd, &c, sizeof c, &pos); !e.empty()) return bad(e);
    // The trailer starts with its magic where a chunk has its counts (no
    // chunk is that large).
    if (c.entries == static_cast<uint32_t>(kSnapshotEndMagic) &&
        c.payload_bytes == static_cast<uint32_t>(kSnapshotEndMagic >> 32)) {
      Trailer t{};
      std::memcpy(&t, &c, sizeof c);
      if (auto e =
              read_exact(f.fd, reinterpret_cast<char*>(&t) + sizeof c, sizeof t - sizeof c, &pos);
          !e.empty()) {
        return bad(e);
      }
      if (t.entries != entries || t.chunks != chunks || entries != info->entries ||
          bytes != info->entry_bytes || t.checksum != XXH3_64bits_digest(&sums)) {
        return bad("the trailer does not match the chunks");
      }
      if (pos != info->file_bytes) return bad("bytes after the trailer");
      break;
    }
    if (c.entries == 0) return bad("a chunk of no entries");
    if (c.entries > info->entries - entries) return bad("more entries than the header counts");
    if (c.payload_bytes > kSnapshotMaxChunkBytes) return bad("a chunk larger than allowed");
    buf.resize(c.payload_bytes);
    if (auto e = read_exact(f.fd, buf.data(), buf.size(), &pos); !e.empty()) return bad(e);
    if (XXH3_64bits(buf.data(), buf.size()) != c.checksum) {
      return bad("chunk " + std::to_string(chunks) + "'s checksum does not match");
    }
    XXH3_64bits_update(&sums, &c.checksum, sizeof c.checksum);
    if (auto ok = apply_chunk(buf, c.entries, partitions, into, "snapshot " + path, &bytes); !ok) {
      return std::move(ok).error();
    }
    entries += c.entries;
    ++chunks;
  }
  if (auto ok = into.set_partition_count(partitions); !ok) {
    return std::move(ok).error();
  }
  for (uint32_t p = 0; p < info->partitions.size(); ++p) {
    const SnapshotPartition& sp = info->partitions[p];
    into.restore_partition(
        p, sp.next_offset, sp.high_watermark,
        TableWriter::LastRecord{sp.last_offset, sp.last_timestamp_ms, sp.last_key_hash});
  }
  into.set_source(info->source_cluster, info->source_topic);
  return info;
}

}  // namespace kvs
