// Finding, checking and following a table's segment: a Generation is one
// mapped segment; maybe_reopen() moves the table to the segment that carries
// its name after kvsd replaced (or someone deleted) the current one.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>

#include "base/sys.hpp"
#include "protocol/frame.hpp"
#include "src/reader/state.hpp"
#include "src/reader_internal.hpp"

using namespace kvs::format;

namespace kvs::reader {

namespace {

// How often a reader retries to open a replacement it could not open (for
// instance one of another layout version); it keeps reading the old segment.
constexpr auto kReopenRetry = std::chrono::seconds(1);

// Whether the current generation's segment has lost its name (its link
// count is 0) with no replacement flagged. An fstat: the slow paths only.
bool unlinked(const Generation* cur) {
  struct stat st {};
  return ::fstat(cur->data->fd(), &st) == 0 && st.st_nlink == 0;
}

void populate(Generation& g);

// A handed-over segment must be the socket's peer's (both as this process
// sees them) and writable by nobody else: the equivalent of the owner check
// of a segment opened by name, without trusting a uid by number.
Result<void> check_handed_owner(const shm::Mapping& m, uid_t peer) {
  struct stat st {};
  if (::fstat(m.fd(), &st) != 0) return sys_error("fstat " + m.name, errno);
  if (!shm::trusted_peer(peer)) {
    return make_error(Errc::kPermission, m.name + ": the socket is served by uid " +
                                             std::to_string(peer) +
                                             ", which is neither root, this user, the user 'kvs', "
                                             "KVS_TRUSTED_UID nor unmapped; refusing its table");
  }
  if (st.st_uid != peer || (st.st_mode & (S_IWGRP | S_IWOTH))) {
    return make_error(Errc::kPermission, m.name + ": the segment handed over belongs to uid " +
                                             std::to_string(st.st_uid) + " (mode " +
                                             std::to_string(st.st_mode & 0777) +
                                             "), not to the socket's peer (uid " +
                                             std::to_string(peer) + "); refusing to read it");
  }
  return {};
}

}  // namespace

Result<void> check_table(const shm::Mapping& m) {
  const std::string path = shm::path_of(m.name);
  const HeaderVerdict v = check_header(m.data(), m.size());
  switch (v.check) {
    case HeaderCheck::kOk:
      return {};
    case HeaderCheck::kNotOurs:
      return make_error(Errc::kCorrupt, path + " is not a kvs table (bad magic)");
    case HeaderCheck::kLayout:
      return make_error(
          Errc::kLayoutMismatch,
          path + " has layout " + std::to_string(v.found_version) + ", this libkvs reads " +
              std::to_string(kLayoutVersion) +
              (v.found_version == kLayoutVersion ? " (but another fingerprint)" : "") +
              "; upgrade libkvs or kvsd so they match");
    case HeaderCheck::kCorrupt:
      break;
  }
  return make_error(Errc::kCorrupt, path + " has an inconsistent header (size " +
                                        std::to_string(m.size()) +
                                        " bytes); kvsd rebuilds it on its next start");
}

Result<std::unique_ptr<Generation>> open_generation(const std::string& segment) {
  auto g = std::make_unique<Generation>();
  auto data = shm::open_segment(segment, shm::Access::kReadOnly);
  if (!data) return std::move(data).error();
  g->data = std::move(*data);
  if (auto ok = check_table(*g->data); !ok) return std::move(ok).error();
  uid_t owner = 0;
  if (auto ok = shm::check_segment_owner(*g->data, &owner); !ok) {
    return std::move(ok).error();
  }
  g->owner = owner;
  g->registry_dir = registry::dir_path(segment);
  if (auto ok = registry::check_dir(g->registry_dir, owner); !ok) return std::move(ok).error();
  populate(*g);
  return g;
}

Result<std::unique_ptr<Generation>> open_handed_generation(const std::string& socket,
                                                           const std::string& table) {
  HandedFds h;
  if (auto ok = ask_kvsd(socket, table, protocol::kOpenAll, 0, &h); !ok) {
    return std::move(ok).error();
  }
  if (h.fds[0] < 0 || h.fds[1] < 0) {
    return make_error(Errc::kProtocol, socket + " handed over no segment or reader file");
  }
  auto g = std::make_unique<Generation>();
  auto data = shm::adopt_segment(h.take(0), socket + " (table " + table + ")");
  if (!data) return std::move(data).error();
  g->data = std::move(*data);
  if (auto ok = check_table(*g->data); !ok) return std::move(ok).error();
  if (auto ok = check_handed_owner(*g->data, h.peer); !ok) return std::move(ok).error();
  g->owner = h.peer;
  g->socket = socket;
  g->table = table;
  populate(*g);
  if (h.incarnation != g->header->incarnation) {
    return make_error(Errc::kProtocol, socket + " handed over a reader file of another segment");
  }
  auto f = registry::ReaderFile::adopt(h.take(1), h.incarnation);  // owns it, failed or not
  if (!f) return std::move(f).error();
  g->pool->files.push_back(std::move(*f));
  return g;
}

Result<std::unique_ptr<registry::ReaderFile>> new_reader_file(const Generation& g) {
  if (g.socket.empty()) return registry::ReaderFile::create(g.registry_dir, g.header->incarnation);
  HandedFds h;
  if (auto ok = ask_kvsd(g.socket, g.table, protocol::kOpenReaderFile, g.header->incarnation, &h);
      !ok) {
    return std::move(ok).error();
  }
  if (h.fds[1] < 0) return make_error(Errc::kProtocol, g.socket + " handed over no reader file");
  return registry::ReaderFile::adopt(h.take(1), g.header->incarnation);
}

namespace {

// Map the header and view of g's segment, and populate its used part.
void populate(Generation& g) {
  g.header = reinterpret_cast<const TableHeader*>(g.data->data());
  g.view = TableView(g.data->data(), *g.header);
  // Map the used part now, so that first reads do not take page faults
  // (microseconds each). The unused arena stays lazy: populating it would
  // commit memory. Kernels before 5.14 lack this advice; that is harmless.
  const uint64_t used = std::min<uint64_t>(
      g.data->size(),
      format::align_up(
          g.header->arena_offset + g.header->arena_used.load(std::memory_order_acquire), 4096));
  ::madvise(g.data->data(), used, MADV_POPULATE_READ);
}

}  // namespace

// Failures leave the old generation current (readers keep reading it) and
// are retried after kReopenRetry, or at once when the flag says the
// successor was named since (a try inside the swap's window finds the old
// segment still under the name).
void maybe_reopen(kvs_table* t) {
  Generation* cur = t->cur.load(std::memory_order_relaxed);
  const uint32_t flag = cur->header->replaced.load(std::memory_order_acquire);
  const int64_t now = steady_ns();
  // Deleted from under its readers (by hand, or systemd's RemoveIPC=):
  // whatever has the name now is followed, as after a replacement, at the
  // retry pace.
  if (flag == 0 && !unlinked(cur)) return;
  const bool named_since = flag == kReplacedNamed && t->reopen_flag != kReplacedNamed;
  if (!named_since && now < t->next_reopen_ns) return;
  auto g =
      t->socket.empty() ? open_generation(t->segment) : open_handed_generation(t->socket, t->name);
  if (!g || (*g)->header->incarnation == cur->header->incarnation) {
    t->reopen_flag = flag;
    t->next_reopen_ns =
        now + std::chrono::duration_cast<std::chrono::nanoseconds>(kReopenRetry).count();
    return;
  }
  t->reopen_flag = 0;
  t->gens.push_back(std::move(*g));
  // seq_cst: ordered before collect()'s loads of slot epochs (pairs with the
  // reader's exchange, then reload of `cur`).
  t->cur.store(t->gens.back().get(), std::memory_order_seq_cst);
}

std::chrono::nanoseconds reopen_retry() { return kReopenRetry; }

}  // namespace kvs::reader

namespace kvs::detail {

Result<std::unique_ptr<shm::Mapping>> map_segment(const SegmentSource& source) {
  if (!source.socket.empty()) {
    reader::HandedFds h;
    if (auto ok = reader::ask_kvsd(source.socket, source.table, protocol::kOpenSegment, 0, &h);
        !ok) {
      return std::move(ok).error();
    }
    if (h.fds[0] < 0) return make_error(Errc::kProtocol, source.socket + " sent no segment");
    auto m = shm::adopt_segment(h.take(0), source.socket + " (table " + source.table + ")");
    if (!m) return m;
    if (auto ok = reader::check_table(**m); !ok) return std::move(ok).error();
    if (auto ok = reader::check_handed_owner(**m, h.peer); !ok) return std::move(ok).error();
    return m;
  }
  auto m = shm::open_segment(source.segment, shm::Access::kReadOnly);
  if (!m) return m;
  if (auto ok = reader::check_table(**m); !ok) return std::move(ok).error();
  if (auto ok = shm::check_segment_owner(**m, nullptr); !ok) return std::move(ok).error();
  return m;
}

}  // namespace kvs::detail
