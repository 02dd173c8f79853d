// kvs_snapshot_write: a snapshot file (libclient/format/snapshot.hpp) of a
// live table, written by any reader while kvsd goes on applying records.
//
// The walk reads the segment the way kvs_for_each does, under a guard that
// is renewed for each chunk of about 1 MiB, so that it holds no memory back
// from reuse for longer than a chunk takes. The partitions' positions are
// read before the walk: every record below them is visible by then (kvsd
// publishes a position only after its records), and a key never moves in
// the index, so each key live then and not changed since is in the file.
// Keys that changed during the walk may be in it with a later value, or
// twice: the records after the positions are applied again when the file is
// loaded, which brings each of them to the log's state (kvsd publishes a
// table loaded from a snapshot only once it has caught up, so readers never
// see a key go back).
//
// The file is written beside its name and renamed over it once complete and
// fsynced; the directory is fsynced then. A writer killed at any point, or a
// full disk, leaves what was at `path` as it was.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/sys.hpp"
#include "format/snapshot.hpp"
#include "kvs/kvs.h"
#include "kvs/result.hpp"
#include "src/reader_internal.hpp"

using namespace kvs;
using namespace kvs::format;

namespace {

// A walk restarts when the table is replaced under it (a growth, a
// rebuild); this many in a row is an error.
constexpr int kMaxRestarts = 8;

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

// Entries gathered into a chunk in memory (under a guard), then handed to
// a thread of their own that checksums and writes it while the walk fills
// the next one; then the trailer. At most one chunk waits to be written.
class Chunks {
 public:
  explicit Chunks(int fd) : fd_(fd), io_([this] { write_loop(); }) {
    buf_.reserve(kSnapshotChunkBytes + 4096);
  }
  ~Chunks() { stop(); }
  Chunks(const Chunks&) = delete;
  Chunks& operator=(const Chunks&) = delete;

  // True once the chunk has reached its size.
  bool add(const EntryRef& e, Origin origin) {
    const EntryHeader h{e.key_len, e.value_len, origin.partition, 0, origin.timestamp_ms};
    const size_t at = buf_.size();
    buf_.resize(at + sizeof h + e.key_len + e.value_len);
    std::memcpy(buf_.data() + at, &h, sizeof h);
    if (e.key_len) std::memcpy(buf_.data() + at + sizeof h, e.key, e.key_len);
    if (e.value_len) std::memcpy(buf_.data() + at + sizeof h + e.key_len, e.value, e.value_len);
    ++in_chunk_;
    ++entries_;
    bytes_ += uint64_t{e.key_len} + e.value_len;
    return buf_.size() >= kSnapshotChunkBytes;
  }
  bool full() const { return buf_.size() >= kSnapshotChunkBytes; }
  // Hands the chunk to the writing thread once the one before is written.
  // False (errno set) once a write failed.
  bool flush() {
    if (in_chunk_ == 0) return true;
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !pending_ || err_ != 0; });
    if (err_ != 0) {
      errno = err_;
      return false;
    }
    pending_ = Pending{std::move(buf_), in_chunk_};
    buf_ = std::move(spare_);
    buf_.clear();
    in_chunk_ = 0;
    ++chunks_;
    cv_.notify_all();
    return true;
  }
  // The last chunk, then the trailer. False (errno set) if a write failed.
  bool finish() {
    if (!flush() || !stop()) return false;
    const Trailer t{kSnapshotEndMagic, entries_, chunks_,
                    XXH3_64bits(sums_.data(), sums_.size() * sizeof(uint64_t))};
    return write_all(fd_, &t, sizeof t);
  }
  uint64_t entries() const { return entries_; }
  uint64_t bytes() const { return bytes_; }

 private:
  struct Pending {
    std::vector<char> buf;
    uint32_t entries;
  };
  // Waits for the chunk handed over to be written and ends the thread;
  // false (errno set) if a write failed.
  bool stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (io_.joinable()) io_.join();
    if (err_ != 0) errno = err_;
    return err_ == 0;
  }
  void write_loop() {
    for (;;) {
      Pending p;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return pending_ || stopping_; });
        if (!pending_) return;
        p = std::move(*pending_);
      }
      const ChunkHeader c{p.entries, static_cast<uint32_t>(p.buf.size()),
                          XXH3_64bits(p.buf.data(), p.buf.size())};
      const bool ok = write_all(fd_, &c, sizeof c) && write_all(fd_, p.buf.data(), p.buf.size());
      const int err = ok ? 0 : errno;
      if (ok) {
        // Writeback starts now, a chunk at a time, rather than all at the
        // fsync (a hint; errors show at the fsync).
        written_ += sizeof c + p.buf.size();
        (void)::sync_file_range(fd_, static_cast<off_t>(synced_),
                                static_cast<off_t>(written_ - synced_), SYNC_FILE_RANGE_WRITE);
        synced_ = written_;
      }
      std::lock_guard lock(mu_);
      sums_.push_back(c.checksum);
      if (!ok) err_ = err;
      spare_ = std::move(p.buf);
      pending_.reset();
      cv_.notify_all();
      if (!ok) return;
    }
  }

  int fd_;
  std::vector<char> buf_;  // the chunk being filled (the walk's thread)
  uint32_t in_chunk_ = 0;
  uint64_t entries_ = 0, bytes_ = 0, chunks_ = 0;
  std::mutex mu_;  // guards what follows, shared with the writing thread
  std::condition_variable cv_;
  std::optional<Pending> pending_;  // handed over, not written yet
  std::vector<char> spare_;         // a written chunk's buffer, for reuse
  std::vector<uint64_t> sums_;      // the chunks' checksums, for the trailer's
  int err_ = 0;                     // errno of a failed write
  bool stopping_ = false;
  // The writing thread's own: the chunks' bytes written, and those handed
  // to writeback.
  uint64_t written_ = 0, synced_ = 0;
  std::thread io_;  // last: started once the members above exist
};

// A partition's position and the fingerprint of a record below it (kvsd
// checks that record against the log when it loads the file). kvsd updates
// the fingerprint as it applies records: one that changed while read, or
// that is not below the position read first, is tried again, and after a
// few tries left out (offset -1: kvsd then resumes without that check).
SnapshotPartition read_partition(const PartitionState& ps) {
  SnapshotPartition sp{};
  sp.last_offset = -1;
  for (int attempt = 0; attempt < 64; ++attempt) {
    sp.next_offset = ps.next_offset.load(std::memory_order_acquire);
    const int64_t last = ps.last_offset.load(std::memory_order_acquire);
    const int64_t ts = ps.last_timestamp_ms.load(std::memory_order_relaxed);
    const uint64_t hash = ps.last_key_hash.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (last != ps.last_offset.load(std::memory_order_relaxed)) continue;
    if (last >= 0 && last < sp.next_offset) {
      sp.last_offset = last;
      sp.last_timestamp_ms = ts;
      sp.last_key_hash = hash;
      break;
    }
  }
  // The watermark is published after the position: never below it here.
  sp.high_watermark = std::max(ps.high_watermark.load(std::memory_order_acquire), sp.next_offset);
  if (sp.next_offset < 0) sp.next_offset = sp.high_watermark = 0;
  return sp;
}

std::vector<SnapshotPartition> read_partitions(const detail::GuardView& v) {
  const TableHeader& h = *v.header;
  const uint32_t n =
      std::min(h.partition_count.load(std::memory_order_acquire), h.partition_capacity);
  const auto* ps = reinterpret_cast<const PartitionState*>(v.base + h.partitions_offset);
  std::vector<SnapshotPartition> out(n);
  for (uint32_t p = 0; p < n; ++p) out[p] = read_partition(ps[p]);
  return out;
}

struct Written {
  kvs_snapshot_info info{};
  bool replaced = false;  // the table was replaced during the walk: start over
};

// Removes the temporary file on every way out but the rename.
struct TempFile {
  std::string name;
  bool keep = false;
  ~TempFile() {
    if (!keep && !name.empty()) ::unlink(name.c_str());
  }
};

// A read guard of the walk, ended on every way out.
class Guard {
 public:
  explicit Guard(kvs_table* t) : t_(t) {}
  ~Guard() { end(); }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
  Result<detail::GuardView> begin() {
    if (int rc = kvs_read_begin(t_, &x_); rc != KVS_OK) {
      x_ = nullptr;
      return Error{static_cast<Errc>(rc), kvs_last_error()};
    }
    return detail::guard_view(x_);
  }
  void end() {
    if (x_ != nullptr) kvs_read_end(x_);
    x_ = nullptr;
  }

 private:
  kvs_table* t_;
  kvs_txn* x_ = nullptr;
};

// The walk of a table's index under guards that are renewed every few
// hundred entries; the entries go to `chunks`.
class IndexWalk {
 public:
  IndexWalk(Guard& guard, const detail::GuardView& v, Chunks& chunks, const std::string& where,
            size_t partitions)
      : guard_(guard),
        v_(v),
        generation_(v.generation),
        chunks_(chunks),
        where_(where),
        partitions_(partitions),
        groups_(v.view->group_count()),
        arena_end_(v.header->arena_offset + v.header->arena_bytes) {}

  // Walks every group: true at the end, false if the table was replaced
  // during the walk (the snapshot is then of no use).
  Result<bool> run() {
    for (uint64_t g = 0; g < kAhead; ++g) prefetch(g);
    for (uint64_t g = 0; g < groups_; ++g) {
      prefetch(g + kAhead);
      for (int i = 0; i < kSlotsPerGroup; ++i) {
        // seq_cst, as in find(): the loads follow the guard's announcement.
        const uint64_t w = v_.view->group(g).slots[i].load(std::memory_order_seq_cst);
        if (w == 0) continue;
        auto added = add(w);
        if (!added) return std::move(added).error();
        // The rest of the group comes under the next guard.
        if (*added && !renew()) return stopped();
      }
      if (++guarded_groups_ >= kGroupsPerGuard && !renew()) return stopped();
    }
    return true;
  }

 private:
  // The entries of the group kAhead places on are loaded while this one is
  // copied: the walk overlaps its misses instead of taking one per entry.
  // (Only a hint: the slot may change before it is read for real.)
  static constexpr uint64_t kAhead = 8;
  // A guard covers a few hundred entries (tens of microseconds of copying)
  // or groups of a sparse index: a walk whose thread is held off the CPU
  // (kvsd's runs SCHED_IDLE) holds no memory back for long. Chunks are
  // written between guards.
  static constexpr uint64_t kEntriesPerGuard = 256, kBytesPerGuard = 64 << 10,
                            kGroupsPerGuard = 1024;

  void prefetch(uint64_t g) const {
    if (g >= groups_) return;
    for (int i = 0; i < kSlotsPerGroup; ++i) {
      const uint64_t off = slot_offset(v_.view->group(g).slots[i].load(std::memory_order_relaxed));
      if (off != 0 && off + 128 <= arena_end_) {
        __builtin_prefetch(v_.base + off);
        __builtin_prefetch(v_.base + off + 64);
      }
    }
  }

  // Adds the entry of slot word `w` to the chunks: true when the guard is
  // due to be renewed.
  Result<bool> add(uint64_t w) {
    EntryRef e;
    if (!v_.view->entry_at(slot_offset(w), &e)) {
      return Error{Errc::kCorrupt, v_.path + ": an index slot points outside the arena"};
    }
    const Origin o = v_.view->origin_at(slot_offset(w));
    // A partition the topic gained during the walk: its records are all
    // after the file's positions (it is read from its start on load).
    if (o.partition >= partitions_) return false;
    // Chunks are written once past kSnapshotChunkBytes, so with this
    // bound none passes kSnapshotMaxChunkBytes.
    const uint64_t bytes = sizeof(EntryHeader) + uint64_t{e.key_len} + e.value_len;
    if (bytes > kSnapshotMaxChunkBytes - kSnapshotChunkBytes) {
      return Error{Errc::kTooLarge, where_ + ": an entry of " + std::to_string(bytes) +
                                        " bytes is larger than a snapshot chunk may hold"};
    }
    const bool full = chunks_.add(e, o);
    guarded_bytes_ += bytes;
    return full || ++guarded_entries_ >= kEntriesPerGuard || guarded_bytes_ >= kBytesPerGuard;
  }

  // Ends the guard, writes the chunk if full, and begins the next guard;
  // false when the walk must stop (replaced_, or an error in err_).
  bool renew() {
    guarded_entries_ = guarded_bytes_ = guarded_groups_ = 0;
    guard_.end();
    if (chunks_.full() && !chunks_.flush()) {
      err_ = sys_error("writing " + where_, errno);
      return false;
    }
    auto again = guard_.begin();
    if (!again) {
      err_ = std::move(again).error();
      return false;
    }
    v_ = *again;
    replaced_ = v_.generation != generation_;
    return !replaced_;
  }

  Result<bool> stopped() {
    if (replaced_) return false;
    return err_;
  }

  Guard& guard_;
  detail::GuardView v_;
  const void* generation_;
  Chunks& chunks_;
  const std::string& where_;
  const size_t partitions_;
  const uint64_t groups_;
  const uint64_t arena_end_;
  uint64_t guarded_entries_ = 0, guarded_bytes_ = 0, guarded_groups_ = 0;
  bool replaced_ = false;
  Error err_;
};

// The file's header, written last over its placeholder.
Result<void> write_header(int fd, FileHeader h, const std::string& where) {
  h.checksum = header_checksum(h);
  if (const ssize_t n = ::pwrite(fd, &h, sizeof h, 0); n != static_cast<ssize_t>(sizeof h)) {
    if (n >= 0) errno = EIO;
    return sys_error("writing " + where, errno);
  }
  return {};
}

// The walk: header placeholder, partitions, chunks, trailer, header.
Result<Written> write_entries(kvs_table* t, int fd, const std::string& where) {
  Written out;
  Guard guard(t);
  auto begun = guard.begin();
  if (!begun) return std::move(begun).error();
  if (begun->nested) {
    return Error{Errc::kInvalidArgument,
                 "kvs_snapshot_write: called inside a read guard of the table; end it first"};
  }
  const uint64_t created = now_unix_ns();
  const std::vector<SnapshotPartition> parts = read_partitions(*begun);
  const uint64_t cluster = begun->header->source_cluster.load(std::memory_order_relaxed);
  const uint64_t topic = begun->header->source_topic.load(std::memory_order_relaxed);
  FileHeader h{};
  const uint64_t psum = XXH3_64bits(parts.data(), parts.size() * sizeof(SnapshotPartition));
  // The header is written last, over a placeholder: a file without its
  // header is never taken for a snapshot.
  if (!write_all(fd, &h, sizeof h) ||
      !write_all(fd, parts.data(), parts.size() * sizeof(SnapshotPartition)) ||
      !write_all(fd, &psum, sizeof psum)) {
    return sys_error("writing " + where, errno);
  }
  Chunks chunks(fd);
  auto walked = IndexWalk(guard, *begun, chunks, where, parts.size()).run();
  if (!walked) return std::move(walked).error();
  if (!*walked) {
    out.replaced = true;
    return out;
  }
  guard.end();
  if (!chunks.finish()) return sys_error("writing " + where, errno);
  const std::string& name = detail::table_name(t);
  h = FileHeader{kSnapshotMagic,
                 kSnapshotVersion,
                 sizeof(FileHeader),
                 snapshot_fingerprint(),
                 created,
                 cluster,
                 topic,
                 XXH3_64bits(name.data(), name.size()),
                 chunks.entries(),
                 chunks.bytes(),
                 static_cast<uint32_t>(parts.size()),
                 0,
                 0};
  if (auto ok = write_header(fd, h, where); !ok) return std::move(ok).error();
  out.info.entries = chunks.entries();
  out.info.entry_bytes = chunks.bytes();
  out.info.created_unix_ns = created;
  out.info.partitions = static_cast<uint32_t>(parts.size());
  return out;
}

// One attempt: a temporary file, the walk, fsync, rename, the directory's fsync.
Result<Written> write_once(kvs_table* t, const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  TempFile tmp{path + ".tmp." + std::to_string(::getpid()) + "." +
               std::to_string(now_unix_ns() ^ counter.fetch_add(1))};
  Fd f{::open(tmp.name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640)};
  if (f.fd < 0) return sys_error("creating snapshot " + tmp.name, errno);
  auto w = write_entries(t, f.fd, tmp.name);
  if (!w || w->replaced) return w;
  if (::fsync(f.fd) != 0) return sys_error("fsync " + tmp.name, errno);
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return sys_error("fstat " + tmp.name, errno);
  w->info.file_bytes = static_cast<uint64_t>(st.st_size);
  if (::rename(tmp.name.c_str(), path.c_str()) != 0) {
    return sys_error("renaming " + tmp.name + " to " + path, errno);
  }
  tmp.keep = true;
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  Fd d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd < 0 || ::fsync(d.fd) != 0) {
    return sys_error("snapshot " + path + " is written, but the fsync of its directory " + dir +
                         " failed (a crash may still lose the rename)",
                     errno);
  }
  return w;
}

}  // namespace

int kvs_snapshot_write(kvs_table* t, const char* path, kvs_snapshot_info* info) {
  if (t == nullptr || path == nullptr || *path == '\0') {
    return detail::set_last_error(KVS_EINVAL, "kvs_snapshot_write: NULL table or path");
  }
  const auto start = std::chrono::steady_clock::now();
  try {
    for (int attempt = 0; attempt <= kMaxRestarts; ++attempt) {
      auto w = write_once(t, path);
      if (!w) return detail::set_last_error(static_cast<int>(w.error().code), w.error().message);
      if (w->replaced) continue;
      w->info.restarts = static_cast<uint32_t>(attempt);
      w->info.duration_ns =
          static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                    std::chrono::steady_clock::now() - start)
                                    .count());
      if (info) *info = w->info;
      return KVS_OK;
    }
  } catch (const std::bad_alloc&) {
    return detail::set_last_error(KVS_ENOMEM, "kvs_snapshot_write: out of memory");
  } catch (const std::exception& e) {
    return detail::set_last_error(KVS_ESYS, std::string("kvs_snapshot_write: ") + e.what());
  }
  return detail::set_last_error(
      KVS_EBUSY, "kvs_snapshot_write: table " + detail::table_name(t) + " was replaced during " +
                     std::to_string(kMaxRestarts + 1) + " walks in a row (it is growing); retry");
}
