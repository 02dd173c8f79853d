// libkvs's C ABI for reading: opening a table, lookups, iteration and the
// table's counters. A thin layer over the rooms in src/reader/ (state.hpp
// lists them): read guards are src/reader/announce.cpp, waits
// src/reader/waits.cpp, errors src/reader/errors.cpp.
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "format/index.hpp"
#include "format/layout.hpp"
#include "kvs/kvs.h"
#include "protocol/frame.hpp"
#include "protocol/wait_socket.hpp"
#include "src/reader/errors.hpp"
#include "src/reader/state.hpp"
#include "src/reader_internal.hpp"
#include "src/shm.hpp"
#include "src/wait_link.hpp"

using namespace kvs;
using namespace kvs::format;
using namespace kvs::reader;

namespace {
std::atomic<uint64_t> g_next_table_id{1};
constexpr const char* kDefaultSocket = "/run/kvs/kvsd.sock";

// An option, else the environment variable if set and not empty, else the default.
std::string from_env(const char* option, const char* var, const char* fallback) {
  if (option) return option;
  const char* env = std::getenv(var);
  return env && *env ? env : fallback;
}

Result<int> handover_mode(int option) {
  if (option < KVS_HANDOVER_AUTO || option > KVS_HANDOVER_ALWAYS) {
    return make_error(Errc::kInvalidArgument,
                      "kvs_open: handover " + std::to_string(option) + " is not 0, 1 or 2");
  }
  const char* env = std::getenv("KVS_HANDOVER");
  if (option != KVS_HANDOVER_AUTO || env == nullptr || *env == '\0') return option;
  const std::string v = env;
  if (v == "auto") return KVS_HANDOVER_AUTO;
  if (v == "never") return KVS_HANDOVER_NEVER;
  if (v == "always") return KVS_HANDOVER_ALWAYS;
  return make_error(Errc::kInvalidArgument,
                    "KVS_HANDOVER='" + v + "' is not one of auto, never, always");
}

// The error of opening by name, and why asking kvsd's socket failed too.
// A socket that is not there says nothing new: the first error stands.
Error both(const Error& by_name, const Error& by_socket) {
  if (by_socket.code == Errc::kNoTable &&
      by_socket.message.find("is kvsd running") != std::string::npos)
    return by_name;
  return Error{by_socket.code, by_name.message + "; and asking kvsd: " + by_socket.message};
}

// The wait link of a handed-over table: each connection is asked of kvsd.
std::shared_ptr<WaitLink> handed_wait_link(const std::string& socket, const std::string& table,
                                           uid_t owner) {
  return std::make_shared<WaitLink>([socket, table, owner]() -> int {
    HandedFds h;
    if (!ask_kvsd(socket, table, protocol::kOpenWaitLink, 0, &h) || h.fds[2] < 0) return -1;
    const int fd = h.take(2);
    ucred peer{};
    socklen_t len = sizeof peer;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 || peer.uid != owner ||
        ::fcntl(fd, F_SETFL, O_NONBLOCK) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  });
}
}  // namespace

extern "C" {

int kvs_open(const char* name, const kvs_open_options* options, kvs_table** out) {
  if (name == nullptr || out == nullptr)
    return fail(Errc::kInvalidArgument, "kvs_open: NULL argument");
  *out = nullptr;
  const std::string prefix = options && options->shm_prefix ? options->shm_prefix : "kvs.";
  const std::string dir =
      from_env(options ? options->shm_dir : nullptr, "KVS_SHM_DIR", shm::kDefaultDir);
  auto seg = shm::segment_in(dir, prefix, name);
  if (!seg) return fail(seg.error());
  auto mode = handover_mode(options ? options->handover : KVS_HANDOVER_AUTO);
  if (!mode) return fail(mode.error());
  install_fork_handlers();
  try {
    auto t = std::make_unique<kvs_table>();
    t->segment = *seg;
    t->name = name;
    auto g = *mode == KVS_HANDOVER_ALWAYS
                 ? Result<std::unique_ptr<Generation>>(make_error(Errc::kNoTable, ""))
                 : open_generation(*seg);
    const bool ask = !g && *mode != KVS_HANDOVER_NEVER &&
                     (*mode == KVS_HANDOVER_ALWAYS || g.error().code == Errc::kNoTable ||
                      g.error().code == Errc::kPermission);
    if (ask) {
      const std::string socket =
          from_env(options ? options->socket_path : nullptr, "KVS_SOCKET", kDefaultSocket);
      auto h = open_handed_generation(socket, name);
      if (!h && *mode == KVS_HANDOVER_AUTO) return fail(both(g.error(), h.error()));
      g = std::move(h);
      if (g) t->socket = socket;
    }
    if (!g) return fail(g.error());
    t->link = t->socket.empty()
                  ? std::make_shared<WaitLink>(wait_socket::path((*g)->registry_dir), (*g)->owner)
                  : handed_wait_link(t->socket, name, (*g)->owner);
    t->gens.push_back(std::move(*g));
    t->cur.store(t->gens.back().get(), std::memory_order_release);
    t->id = g_next_table_id.fetch_add(1, std::memory_order_relaxed);
    track_table(t.get());
    *out = t.release();
    return KVS_OK;
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, "kvs_open: out of memory");
  }
}

void kvs_close(kvs_table* t) {
  if (t == nullptr) return;
  untrack_table(t);
  {
    std::lock_guard table_lock(t->mu);
    for (auto& g : t->gens) {
      std::lock_guard lock(g->pool->mu);
      g->pool->closed = true;
      g->pool->files.clear();
      g->pool->free.clear();
    }
  }
  forget_table(t);
  delete t;
}

int kvs_get(kvs_txn* x, const void* key, size_t key_len, const void** value, size_t* value_len) {
  if (x == nullptr || x->depth == 0 || (key == nullptr && key_len > 0)) {
    return fail(Errc::kInvalidArgument, "kvs_get: needs an open guard and a key");
  }
  EntryRef e;
  switch (x->gen->view.find(key, key_len, hash_key(key, key_len), &e)) {
    case Lookup::kFound:
      if (value) *value = e.value;
      if (value_len) *value_len = e.value_len;
      return KVS_OK;
    case Lookup::kAbsent:
      return KVS_ENOTFOUND;
    case Lookup::kCorrupt:
      break;
  }
  return fail(Errc::kCorrupt, shm::path_of(x->gen->data->name) +
                                  ": lookup left the table's bounds; kvsd rebuilds it on restart");
}

int kvs_multi_get(kvs_txn* x, size_t count, const void* const* keys, const size_t* key_lens,
                  const void** values, size_t* value_lens, int* results) {
  if (x == nullptr || x->depth == 0 || (count > 0 && (!keys || !key_lens || !results))) {
    return fail(Errc::kInvalidArgument,
                "kvs_multi_get: needs an open guard, keys, lengths, results");
  }
  const TableView& view = x->gen->view;
  constexpr size_t kBatch = 32;
  constexpr int kGroupPasses = 8;  // groups probed in passes; then find()
  uint64_t hashes[kBatch];
  uint64_t groups[kBatch];      // the group a key's probe is at
  uint64_t candidates[kBatch];  // slot word of the candidate entry; 0: none
  uint8_t active[kBatch];       // keys still probing groups
  for (size_t base = 0; base < count; base += kBatch) {
    const size_t n = std::min(kBatch, count - base);
    // Passes over all keys, so that their cache misses overlap: the home
    // groups; then in each pass, every key still probing filters its group's
    // tags (branch-free: the position of a key in its group is random and
    // would mispredict once per key) and either has a candidate (its entry
    // is prefetched), is absent (no match and the group never overflowed) or
    // moves on to the next group (prefetched). At a full table (80% of the
    // slots) about one key in six needs a second group; prefetching every
    // home group's neighbour up front measured no faster. Then the keys are
    // compared. A key not settled so (a tag collision, a long overflow
    // chain) gets the full probe of find().
    size_t n_active = n;
    for (size_t i = 0; i < n; ++i) {
      hashes[i] = hash_key(keys[base + i], key_lens[base + i]);
      groups[i] = view.home(hashes[i]);
      view.prefetch_group_at(groups[i]);
      active[i] = static_cast<uint8_t>(i);
    }
    for (int pass = 0; pass < kGroupPasses && n_active > 0; ++pass) {
      size_t still = 0;
      for (size_t j = 0; j < n_active; ++j) {
        const size_t i = active[j];
        candidates[i] = view.match_in(groups[i], hashes[i]);
        if (candidates[i] == 0 && view.overflowed(groups[i])) {
          groups[i] = view.next_group(groups[i]);
          view.prefetch_group_at(groups[i]);
          active[still++] = static_cast<uint8_t>(i);
        }
      }
      n_active = still;
    }
    // Keys still probing get find(): mark them with a candidate of 0 and a
    // group of ~0.
    for (size_t j = 0; j < n_active; ++j) groups[active[j]] = ~uint64_t{0};
    for (size_t i = 0; i < n; ++i) {
      EntryRef e;
      const size_t k = base + i;
      Lookup l;
      if (candidates[i] != 0) {
        l = view.resolve_candidate(keys[k], key_lens[k], hashes[i], candidates[i], &e);
      } else if (groups[i] != ~uint64_t{0}) {
        l = Lookup::kAbsent;  // no match in a group that never overflowed
      } else {
        l = view.find(keys[k], key_lens[k], hashes[i], &e);
      }
      switch (l) {
        case Lookup::kFound:
          if (values) values[k] = e.value;
          if (value_lens) value_lens[k] = e.value_len;
          results[k] = KVS_OK;
          // The value's last line, which the candidate prefetch did not
          // cover when the value is longer: the caller's reads of all the
          // values then overlap too.
          if (e.value_len > 0) __builtin_prefetch(e.value + e.value_len - 1);
          break;
        case Lookup::kAbsent:
          results[k] = KVS_ENOTFOUND;
          break;
        case Lookup::kCorrupt:
          results[k] = KVS_ECORRUPT;
          break;
      }
    }
  }
  return KVS_OK;
}

int kvs_get_copy(kvs_table* t, const void* key, size_t key_len, void* buf, size_t buf_len,
                 size_t* value_len) {
  kvs_txn* x = nullptr;
  if (int rc = kvs_read_begin(t, &x); rc != KVS_OK) return rc;
  const void* v = nullptr;
  size_t len = 0;
  int rc = kvs_get(x, key, key_len, &v, &len);
  if (rc == KVS_OK) {
    if (value_len) *value_len = len;
    if (len > buf_len) {
      rc = fail(Errc::kBufferTooSmall, "kvs_get_copy: value has " + std::to_string(len) +
                                           " bytes, buffer " + std::to_string(buf_len));
    } else if (len > 0) {
      std::memcpy(buf, v, len);
    }
  }
  kvs_read_end(x);
  return rc;
}

int kvs_for_each(kvs_txn* x,
                 int (*fn)(void* ctx, const void* key, size_t key_len, const void* value,
                           size_t value_len),
                 void* ctx) {
  if (x == nullptr || x->depth == 0 || fn == nullptr) {
    return fail(Errc::kInvalidArgument, "kvs_for_each: needs an open guard and a callback");
  }
  const TableView& view = x->gen->view;
  for (uint64_t g = 0; g < view.group_count(); ++g) {
    for (int i = 0; i < kSlotsPerGroup; ++i) {
      // seq_cst, as in find(): the slot loads follow the announcement in the
      // order the writer's reclamation argument needs (format/index.hpp).
      const uint64_t w = view.group(g).slots[i].load(std::memory_order_seq_cst);
      if (w == 0) continue;
      EntryRef e;
      if (!view.entry_at(slot_offset(w), &e)) {
        return fail(Errc::kCorrupt,
                    shm::path_of(x->gen->data->name) + ": an index slot points outside the arena");
      }
      if (int rc = fn(ctx, e.key, e.key_len, e.value, e.value_len); rc != 0) return rc;
    }
  }
  return KVS_OK;
}

uint64_t kvs_size(kvs_table* t) {
  if (t == nullptr) return 0;
  return with_current(t, [](const Generation& g) -> uint64_t {
    return g.header->size.load(std::memory_order_relaxed);
  });
}

int kvs_state(kvs_table* t) {
  if (t == nullptr) return fail(Errc::kInvalidArgument, "kvs_state: NULL table");
  return with_current(t, [](const Generation& g) -> int {
    return static_cast<int>(g.header->state.load(std::memory_order_acquire));
  });
}

uint32_t kvs_partition_count(kvs_table* t) {
  if (t == nullptr) return 0;
  return with_current(t, [](const Generation& g) -> uint32_t {
    return std::min(g.header->partition_count.load(std::memory_order_acquire),
                    g.header->partition_capacity);
  });
}

int kvs_partition_offsets(kvs_table* t, uint32_t partition, int64_t* next_offset,
                          int64_t* high_watermark) {
  if (t == nullptr) return fail(Errc::kInvalidArgument, "kvs_partition_offsets: NULL table");
  return with_current(t, [&](const Generation& g) -> int {
    if (partition >= g.header->partition_capacity) {
      return fail(Errc::kInvalidArgument,
                  "kvs_partition_offsets: no partition " + std::to_string(partition));
    }
    const PartitionState* ps = partition_states(g);
    if (next_offset) *next_offset = ps[partition].next_offset.load(std::memory_order_acquire);
    if (high_watermark)
      *high_watermark = ps[partition].high_watermark.load(std::memory_order_acquire);
    return KVS_OK;
  });
}

int kvs_stat(kvs_table* t, kvs_table_stats* out) {
  if (t == nullptr || out == nullptr)
    return fail(Errc::kInvalidArgument, "kvs_stat: NULL argument");
  *out = with_current(t, [](const Generation& g) {
    const TableHeader& h = *g.header;
    kvs_table_stats s{};
    s.entries = h.size.load(std::memory_order_relaxed);
    s.capacity = h.capacity;
    s.arena_used_bytes = h.arena_used.load(std::memory_order_relaxed);
    s.arena_bytes = h.arena_bytes;
    s.segment_bytes = h.segment_bytes;
    s.puts = h.puts.load(std::memory_order_relaxed);
    s.erases = h.erases.load(std::memory_order_relaxed);
    s.skipped = h.skipped.load(std::memory_order_relaxed);
    s.writer_attaches = h.writer_attaches.load(std::memory_order_relaxed);
    s.writer_pid = h.writer_pid.load(std::memory_order_relaxed);
    s.reader_slots = h.reader_slot_limit.load(std::memory_order_relaxed);
    s.reader_slots_used = h.reader_slots_used.load(std::memory_order_relaxed);
    s.readers_reading = h.readers_reading.load(std::memory_order_relaxed);
    s.held_partitions = h.held_partitions.load(std::memory_order_relaxed);
    s.hold_reason = h.hold_reason.load(std::memory_order_relaxed);
    s.holder_pid = h.holder_pid.load(std::memory_order_relaxed);
    s.holder_since_unix_ns = h.holder_since_unix_ns.load(std::memory_order_relaxed);
    s.holder_bytes = h.holder_bytes.load(std::memory_order_relaxed);
    s.oldest_unapplied_unix_ns = h.oldest_unapplied_unix_ns.load(std::memory_order_relaxed);
    s.waiters = h.waiters.load(std::memory_order_relaxed);
    s.wakes = h.wakes.load(std::memory_order_relaxed);
    s.change_log_entries = h.log_entries;
    s.change_log_position = h.log_head.load(std::memory_order_relaxed);
    const uint32_t parts =
        std::min(h.partition_count.load(std::memory_order_acquire), h.partition_capacity);
    const PartitionState* ps = partition_states(g);
    for (uint32_t p = 0; p < parts; ++p) {
      s.backlog += partition_lag(ps[p].next_offset.load(std::memory_order_relaxed),
                                 ps[p].high_watermark.load(std::memory_order_relaxed));
    }
    return s;
  });
  return KVS_OK;
}

// One try at the digest and the offsets it covers: false if kvsd was
// applying a record, or published an offset, while they were read.
static bool read_digest(const Generation& g, kvs_digest* out) {
  const TableHeader& h = *g.header;
  const uint32_t parts =
      std::min(h.partition_count.load(std::memory_order_acquire), h.partition_capacity);
  const PartitionState* ps = partition_states(g);
  std::vector<int64_t> before(parts), after(parts);
  const uint32_t seq = h.digest_seq.load(std::memory_order_acquire);
  if (seq & 1) return false;
  for (uint32_t p = 0; p < parts; ++p)
    before[p] = ps[p].next_offset.load(std::memory_order_acquire);
  const uint64_t contents = h.digest.load(std::memory_order_acquire);
  const uint64_t bracket = h.digest_slot.load(std::memory_order_acquire);
  for (uint32_t p = 0; p < parts; ++p) after[p] = ps[p].next_offset.load(std::memory_order_acquire);
  if (bracket != 0 || h.digest_seq.load(std::memory_order_acquire) != seq || before != after ||
      h.digest.load(std::memory_order_acquire) != contents) {
    return false;
  }
  *out = kvs_digest{table_digest(contents, after.data(), parts), contents, parts};
  return true;
}

int kvs_table_digest(kvs_table* t, kvs_digest* out) {
  if (t == nullptr || out == nullptr)
    return fail(Errc::kInvalidArgument, "kvs_table_digest: NULL argument");
  // A record takes kvsd about a microsecond: a few thousand tries span
  // milliseconds of applying, yielding in between.
  for (int attempt = 0; attempt < 4096; ++attempt) {
    if (with_current(t, [&](const Generation& g) { return read_digest(g, out); })) return KVS_OK;
    if (attempt % 64 == 63) sched_yield();
  }
  return fail(Errc::kBusy, "kvs_table_digest: kvsd applied records throughout the read of table " +
                               t->name +
                               "'s digest, or holds one whose offset it has not published yet "
                               "(it is restarting); try again");
}

}  // extern "C"

namespace kvs::detail {

GuardView guard_view(const kvs_txn* x) {
  const Generation& g = *x->gen;
  return GuardView{g.header, g.data->data(), &g.view, &g, shm::path_of(g.data->name), x->depth > 1};
}

const std::string& table_name(const kvs_table* t) { return t->name; }

const std::shared_ptr<WaitLink>& wait_link(kvs_table* t) { return t->link; }

SegmentSource segment_source(const kvs_table* t) { return {t->segment, t->socket, t->name}; }

}  // namespace kvs::detail
