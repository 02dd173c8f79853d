// Loading snapshot files; see snapshot.hpp for the rules and
// libclient/format/snapshot.hpp for the bytes.
#include "writer/snapshot.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/sys.hpp"

namespace kvs {
using namespace format;

namespace {

uint64_t hash_of(const std::string& s) { return XXH3_64bits(s.data(), s.size()); }

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

// The latest Kafka timestamp a record in a snapshot created at
// h.created_unix_ns may carry: producers' clocks (CreateTime) may run
// ahead of the snapshot's host, by a day at most. A record stamped later
// would win format::replaces against every later record of its key from
// another partition: a crafted file could plant a key no tombstone removes.
int64_t latest_timestamp_ms(const FileHeader& h) {
  constexpr int64_t kAheadMs = int64_t{86400} * 1000;
  return static_cast<int64_t>(
             std::min<uint64_t>(h.created_unix_ns / 1000000, uint64_t{INT64_MAX} - kAheadMs)) +
         kAheadMs;
}

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
    if (sp.last_offset >= 0 && sp.last_timestamp_ms > latest_timestamp_ms(h)) {
      return bad("partition " + std::to_string(p) +
                 "'s last record is stamped more than a day after the snapshot was created");
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

// Opens a regular file only: a FIFO or a device named as a snapshot
// (seed_from) must not block kvsd's start.
Result<int> open_snapshot(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return make_error(Errc::kNoTable, "no snapshot " + path);
    return sys_error("opening snapshot " + path, errno);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(Errc::kCorrupt, "snapshot " + path + ": not a regular file");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) (void)::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

struct ChunkEntry {
  std::string_view key, value;
  Origin origin;
};

// One chunk's entries, checked whole (bounds, origins) before any is
// applied; adds their key and value bytes to *bytes. The index groups of
// the entries a few places ahead are loaded while one is applied, so that
// their misses overlap.
Result<void> apply_chunk(const std::vector<char>& buf, uint32_t entries, uint32_t partitions,
                         int64_t latest_ms, TableWriter& into, const std::string& where,
                         uint64_t* bytes, std::vector<ChunkEntry>& parsed) {
  parsed.clear();
  {
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
      if (e.timestamp_ms > latest_ms) {
        return make_error(Errc::kCorrupt, where + ": an entry stamped " +
                                              std::to_string(e.timestamp_ms) +
                                              " ms, more than a day after the snapshot was "
                                              "created: a forged or damaged file");
      }
      parsed.push_back(ChunkEntry{std::string_view(buf.data() + at, e.key_len),
                                  std::string_view(buf.data() + at + e.key_len, e.value_len),
                                  Origin{e.timestamp_ms, e.partition}});
      at += uint64_t{e.key_len} + e.value_len;
    }
    if (at != buf.size()) return make_error(Errc::kCorrupt, where + ": bytes after the entries");
  }
  constexpr size_t kAhead = 16;
  for (size_t i = 0; i < parsed.size() && i < kAhead; ++i) into.prefetch(parsed[i].key);
  for (size_t i = 0; i < parsed.size(); ++i) {
    if (i + kAhead < parsed.size()) into.prefetch(parsed[i + kAhead].key);
    const ChunkEntry& e = parsed[i];
    *bytes += e.key.size() + e.value.size();
    auto r = into.apply(e.key, e.value, e.origin);
    if (!r) return std::move(r).error().context(where);
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
  FileHeader h{};
  h.created_unix_ns = info->created_unix_ns;
  const int64_t latest_ms = latest_timestamp_ms(h);
  if (partitions > into.header().partition_capacity) {
    return bad(std::to_string(partitions) + " partitions, more than the table tracks (" +
               std::to_string(into.header().partition_capacity) + ", max_partitions)");
  }
  std::vector<uint64_t> sums;  // the chunks' checksums, for the trailer's
  uint64_t entries = 0, chunks = 0, bytes = 0;
  std::vector<char> buf;
  std::vector<ChunkEntry> parsed;
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
          bytes != info->entry_bytes ||
          t.checksum != XXH3_64bits(sums.data(), sums.size() * sizeof(uint64_t))) {
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
    sums.push_back(c.checksum);
    if (auto ok = apply_chunk(buf, c.entries, partitions, latest_ms, into, "snapshot " + path,
                              &bytes, parsed);
        !ok) {
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
