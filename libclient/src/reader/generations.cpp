// Finding, checking and following a table's segment: a Generation is one
// mapped segment; maybe_reopen() moves the table to the segment that carries
// its name after kvsd replaced (or someone deleted) the current one.
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>

#include "base/sys.hpp"
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
  g->header = reinterpret_cast<const TableHeader*>(g->data->data());
  g->view = TableView(g->data->data(), *g->header);
  // Map the used part now, so that first reads do not take page faults
  // (microseconds each). The unused arena stays lazy: populating it would
  // commit memory. Kernels before 5.14 lack this advice; that is harmless.
  const uint64_t used = std::min<uint64_t>(
      g->data->size(),
      format::align_up(
          g->header->arena_offset + g->header->arena_used.load(std::memory_order_acquire), 4096));
  ::madvise(g->data->data(), used, MADV_POPULATE_READ);
  return g;
}

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
  auto g = open_generation(t->segment);
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

Result<std::unique_ptr<shm::Mapping>> map_segment(const std::string& segment) {
  auto m = shm::open_segment(segment, shm::Access::kReadOnly);
  if (!m) return m;
  if (auto ok = reader::check_table(**m); !ok) return std::move(ok).error();
  if (auto ok = shm::check_segment_owner(**m, nullptr); !ok) return std::move(ok).error();
  return m;
}

}  // namespace kvs::detail
