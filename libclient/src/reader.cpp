// libkvs's read path and its C ABI.
//
// A kvs_table follows the segment that carries the table's name. kvsd may
// replace that segment (a rebuild, a layout change): it renames the new one
// into place and then sets `replaced` in the old header. Each segment a
// process maps is a Generation; readers move to the newest one at their next
// outermost read_begin, and an old Generation is unmapped once none of this
// process's threads reads it.
//
// Per thread and table, a kvs_txn owns one slot in one of this process's
// reader files for the current Generation (src/registry.hpp). The fast path
// of kvs_read_begin is: compare the thread's last txn with the table and its
// generation, exchange 1 into the slot (a full barrier), check that the
// generation is still the current one and not replaced, then store the
// global epoch into the slot.
//
// fork(): the child must not announce in its parent's files (the parent
// clears them, and the parent's lock says nothing of the child's life).
// pthread_atfork handlers hold every lock across the fork, and in the child
// drop the parent's files and this thread's guards: the child claims files
// of its own at its next read. Views of a guard open across fork() are not
// valid in the child.
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "format/index.hpp"
#include "format/layout.hpp"
#include "kvs/kvs.h"
#include "protocol/wait_socket.hpp"
#include "src/futex.hpp"
#include "src/reader_internal.hpp"
#include "src/registry.hpp"
#include "src/shm.hpp"
#include "src/wait_link.hpp"

using namespace kvs;
using namespace kvs::format;

namespace {

thread_local std::string t_last_error;
}  // namespace

// For the write client (client.cpp): one kvs_last_error() for the library.
namespace kvs::detail {
int set_last_error(int code, std::string message) {
  t_last_error = std::move(message);
  return code;
}
}  // namespace kvs::detail

namespace {

int fail(const Error& e) {
  t_last_error = e.message;
  return static_cast<int>(e.code);
}
int fail(Errc code, std::string message) {
  t_last_error = std::move(message);
  return static_cast<int>(code);
}

std::atomic<uint64_t> g_next_table_id{1};

// How often a reader retries to open a replacement it could not open (for
// instance one of another layout version); it keeps reading the old segment.
constexpr auto kReopenRetry = std::chrono::seconds(1);

// This process's reader files in one Generation's registry, and the slots
// in them. Threads that exit give their slot back here for the next thread.
// `retired`: the generation was replaced, slots given back are not reused.
// `closed`: the files were removed (kvs_close, or the generation is gone).
struct SlotPool {
  std::mutex mu;
  std::vector<std::unique_ptr<registry::ReaderFile>> files;
  std::vector<ReaderSlot*> free;
  uint32_t held = 0;  // slots bound to a thread's txn
  bool retired = false;
  bool closed = false;

  bool any_reading() const {
    for (const auto& f : files) {
      for (uint32_t i = 0; i < kReaderFileSlots; ++i) {
        if (f->slot(i).epoch.load(std::memory_order_seq_cst) != 0) return true;
      }
    }
    return false;
  }
};

// One mapped segment of a table.
struct Generation {
  std::unique_ptr<shm::Mapping> data;
  const TableHeader* header = nullptr;
  TableView view;
  std::string registry_dir;
  uid_t owner = 0;  // the segment's owner: kvsd's user
  std::shared_ptr<SlotPool> pool = std::make_shared<SlotPool>();
  // Threads sleeping on the futex word in this mapping: it stays mapped
  // until they wake (see sleep_on_changes).
  std::atomic<uint32_t> sleepers{0};
};

}  // namespace

struct kvs_table {
  // The generation new reads start in. Only ever changes under `mu`.
  std::atomic<Generation*> cur{nullptr};
  std::mutex mu;
  std::vector<std::unique_ptr<Generation>> gens;  // under mu; includes cur
  std::string segment;
  std::string name;  // as kvs_open was given it
  uint64_t id = 0;
  // Retry pacing (under mu): after a try that found no successor, the
  // next waits until next_reopen_ns, unless `replaced` has moved past
  // reopen_flag (the successor was named since).
  int64_t next_reopen_ns = 0;  // steady clock
  uint32_t reopen_flag = 0;
  std::shared_ptr<WaitLink> link;  // to kvsd's wait socket (watches share it)
};

struct kvs_txn {
  const Generation* gen = nullptr;  // null: not bound (new, or reset in a forked child)
  ReaderSlot* slot = nullptr;
  uint32_t depth = 0;
  uint64_t table_id = 0;
  std::shared_ptr<SlotPool> pool;
};

namespace {

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Gives back the slot of `x` to its pool (under the pool's lock).
void give_back_locked(SlotPool& pool, ReaderSlot* slot) {
  if (pool.closed) return;
  --pool.held;
  if (!pool.retired) pool.free.push_back(slot);
}

// This thread's guards, one per table it reads.
struct ThreadTxns {
  std::vector<std::unique_ptr<kvs_txn>> txns;

  ~ThreadTxns() {
    for (auto& t : txns) {
      if (!t->pool) continue;
      std::lock_guard lock(t->pool->mu);
      give_back_locked(*t->pool, t->slot);
    }
  }
};
thread_local ThreadTxns t_txns;
// The guard this thread used last: trivially destructible, so the fast path
// of kvs_read_begin needs no TLS initialisation check.
// initial-exec: a plain %fs-relative load instead of a __tls_get_addr call
// (one pointer of static TLS, which glibc reserves even for dlopen).
__attribute__((tls_model("initial-exec"))) thread_local kvs_txn* t_last = nullptr;

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

// Maps the segment called `segment` and checks it and its registry.
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

// Whether the current generation's segment has lost its name (its link
// count is 0) with no replacement flagged. An fstat: the slow paths only.
bool unlinked(const Generation* cur) {
  struct stat st {};
  return ::fstat(cur->data->fd(), &st) == 0 && st.st_nlink == 0;
}

// Under t->mu: if the current generation was replaced, maps the new segment
// and makes it current. Failures leave the old one current (readers keep
// reading it) and are retried after kReopenRetry, or at once when the flag
// says the successor was named since (a try inside the swap's window finds
// the old segment still under the name).
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

// Under t->mu: unmaps generations that are no longer current and that no
// thread of this process reads; removes their reader files once no thread
// holds a slot in them.
void collect(kvs_table* t) {
  Generation* cur = t->cur.load(std::memory_order_relaxed);
  std::erase_if(t->gens, [&](std::unique_ptr<Generation>& g) {
    if (g.get() == cur || g->sleepers.load(std::memory_order_relaxed) > 0) return false;
    std::lock_guard lock(g->pool->mu);
    if (!g->pool->retired) {
      g->pool->retired = true;
      g->pool->free.clear();
    }
    if (g->data) {
      if (g->pool->any_reading()) return false;  // a thread is inside a read
      g->data.reset();
    }
    if (g->pool->held > 0) return false;  // idle threads still own slots
    g->pool->closed = true;
    g->pool->files.clear();
    return true;
  });
}

// A slot of `pool` for a thread: one given back, else one never used, else
// one in a new file. Under pool.mu.
Result<ReaderSlot*> take_slot(SlotPool& pool, const Generation& g) {
  if (!pool.free.empty()) {
    ReaderSlot* s = pool.free.back();
    pool.free.pop_back();
    return s;
  }
  for (auto& f : pool.files) {
    if (ReaderSlot* s = f->take_unused()) return s;
  }
  auto f = registry::ReaderFile::create(g.registry_dir, g.header->incarnation);
  if (!f) return std::move(f).error();
  pool.files.push_back(std::move(*f));
  return pool.files.back()->take_unused();
}

// Binds `x` to generation `g`: gives up its old slot, takes one in g.
int bind(kvs_txn* x, Generation* g) {
  if (x->pool) {
    std::lock_guard lock(x->pool->mu);
    give_back_locked(*x->pool, x->slot);
  }
  x->gen = nullptr;
  x->slot = nullptr;
  x->pool.reset();
  std::lock_guard lock(g->pool->mu);
  auto slot = take_slot(*g->pool, *g);
  if (!slot) return fail(slot.error());
  ++g->pool->held;
  x->gen = g;
  x->slot = *slot;
  x->pool = g->pool;
  return KVS_OK;
}

// This thread's txn for `t`, created on first use.
kvs_txn* find_txn(kvs_table* t) {
  auto& txns = t_txns.txns;
  t_last = nullptr;
  // Drop guards of tables that were closed.
  std::erase_if(txns, [](const std::unique_ptr<kvs_txn>& x) {
    if (!x->pool) return false;
    std::lock_guard lock(x->pool->mu);
    return x->pool->closed;
  });
  for (auto& x : txns) {
    if (x->table_id == t->id) return t_last = x.get();
  }
  auto x = std::make_unique<kvs_txn>();
  x->table_id = t->id;
  txns.push_back(std::move(x));
  return t_last = txns.back().get();
}

// The announcement protocol. Pins every epoch first (1 is the smallest), so
// that the generation can be checked before anything in its data segment is
// touched: collect() unmaps a generation only after it stopped being current
// and while every slot of this process in it reads 0. Then announces the
// epoch the read runs in. Returns false, announcing nothing, if `x`'s
// generation is no longer current, or was replaced and `stay` is false (the
// slow path then opens the replacement; while it cannot, reads stay).
//
// Why announcing 1 then e is safe for the writer (TableWriter::reclaim): it
// sees 0, 1 or e. 0: the exchange comes after its fence in the total order,
// so this read sees every slot it cleared before. 1: blocks all reuse. e:
// either e <= the retirement epoch (blocks), or the acquire load of e saw the
// writer's epoch increment, which follows the clearing of the slot.
inline bool enter(kvs_table* t, kvs_txn* x, bool stay) {
  const Generation* g = x->gen;
  x->slot->epoch.exchange(1, std::memory_order_seq_cst);
  if (t->cur.load(std::memory_order_seq_cst) == g) [[likely]] {
    const TableHeader* h = g->header;
    if (h->replaced.load(std::memory_order_relaxed) == 0 || stay) [[likely]] {
      x->slot->epoch.store(h->epoch.load(std::memory_order_acquire), std::memory_order_release);
      x->depth = 1;
      return true;
    }
  }
  x->slot->epoch.store(0, std::memory_order_release);
  return false;
}

int read_begin_slow(kvs_table* t, kvs_txn** out) {
  kvs_txn* x = t_last;
  if (x == nullptr || x->table_id != t->id) x = find_txn(t);
  if (x->depth > 0) {
    ++x->depth;
    *out = x;
    return KVS_OK;
  }
  for (;;) {
    {
      std::lock_guard lock(t->mu);
      maybe_reopen(t);
      Generation* g = t->cur.load(std::memory_order_relaxed);
      if (x->gen != g) {
        if (int rc = bind(x, g); rc != KVS_OK) return rc;
      }
      collect(t);
    }
    if (enter(t, x, /*stay=*/true)) {
      *out = x;
      return KVS_OK;
    }
  }
}

// Every open table, for the fork handlers. Lock order: g_tables_mu, then a
// table's mu, then its generations' pool mu.
std::mutex g_tables_mu;
std::vector<kvs_table*> g_tables;

void before_fork() {
  g_tables_mu.lock();
  for (kvs_table* t : g_tables) {
    t->mu.lock();
    for (auto& g : t->gens) g->pool->mu.lock();
  }
}

void after_fork_in_parent() {
  for (kvs_table* t : g_tables) {
    for (auto& g : t->gens) g->pool->mu.unlock();
    t->mu.unlock();
  }
  g_tables_mu.unlock();
}

// In the child, on the thread that forked (the only one): the parent's files
// are the parent's; this thread's guards end (their views are not valid).
void after_fork_in_child() {
  for (kvs_table* t : g_tables) {
    for (auto& g : t->gens) {
      SlotPool& old = *g->pool;
      for (auto& f : old.files) f->abandon();
      old.files.clear();
      old.free.clear();
      old.closed = true;
      old.mu.unlock();
      g->pool = std::make_shared<SlotPool>();
      g->sleepers.store(0, std::memory_order_relaxed);  // the parent's threads
    }
    t->mu.unlock();
  }
  for (auto& x : t_txns.txns) {
    x->gen = nullptr;
    x->slot = nullptr;
    x->pool.reset();
    x->depth = 0;
  }
  t_last = nullptr;
  g_tables_mu.unlock();
}

// Runs fn(current generation) under the table's lock, following a
// replacement: for what lives in the header and partition states, which are
// never reused, so no guard (and no reader slot) is needed.
template <class F>
auto with_current(kvs_table* t, F fn) -> decltype(fn(std::declval<const Generation&>())) {
  std::lock_guard lock(t->mu);
  maybe_reopen(t);
  collect(t);
  return fn(*t->cur.load(std::memory_order_relaxed));
}

// How long a waiter sleeps at most while kvsd has not counted it (no kvsd,
// an older one, or its answer is late): it polls, as before there was a
// wait socket.
constexpr auto kUncountedSleep = std::chrono::milliseconds(1);

// Calls ready(current generation) under the table's lock until it returns a
// code, sleeping on the segment's futex word in between; KVS_ETIMEDOUT
// once timeout_ms (< 0: none) has passed. The word is read before ready()
// looks: kvsd moves it after it published, so a change that ready() missed
// makes the sleep return at once.
template <class Ready>
int wait_until(kvs_table* t, int timeout_ms, Ready ready) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0));
  {
    // What is there already costs no word with kvsd.
    std::lock_guard lock(t->mu);
    maybe_reopen(t);
    collect(t);
    if (auto rc = ready(*t->cur.load(std::memory_order_relaxed))) return *rc;
  }
  struct Waiting {
    WaitLink& link;
    ~Waiting() { link.leave(); }
  } waiting{*t->link};
  bool counted = t->link->enter();
  for (bool first = true;; first = false) {
    Generation* g = nullptr;
    uint32_t seen = 0;
    {
      std::lock_guard lock(t->mu);
      maybe_reopen(t);
      collect(t);
      g = t->cur.load(std::memory_order_relaxed);
      // seq_cst: pairs with kvsd's increment and its read of the waiter
      // count (TableWriter::publish_batch).
      seen = g->header->changes.load(std::memory_order_seq_cst);
      if (auto rc = ready(*g)) return *rc;
      g->sleepers.fetch_add(1, std::memory_order_relaxed);
    }
    // After a wake, whether kvsd still counts us (it may have restarted):
    // asked only now, so that a wake that brought what we wait for returns
    // without that syscall.
    if (!first) counted = t->link->counted();
    const auto now = clock::now();
    std::chrono::nanoseconds slice =
        counted ? detail::counted_sleep() : std::chrono::nanoseconds(kUncountedSleep);
    // A replacement not mapped yet is retried every kReopenRetry, and the
    // old segment's word does not move again.
    if (g->header->replaced.load(std::memory_order_relaxed) != 0)
      slice = std::min<std::chrono::nanoseconds>(slice, kReopenRetry);
    if (timeout_ms >= 0) slice = std::min<std::chrono::nanoseconds>(slice, deadline - now);
    futex::wait(&g->header->changes, seen, slice);
    {
      std::lock_guard lock(t->mu);  // collect() reads it under the lock
      g->sleepers.fetch_sub(1, std::memory_order_relaxed);
    }
    if (timeout_ms >= 0 && clock::now() >= deadline) {
      std::lock_guard lock(t->mu);
      if (auto rc = ready(*t->cur.load(std::memory_order_relaxed))) return *rc;
      return KVS_ETIMEDOUT;
    }
  }
}

}  // namespace

extern "C" {

int kvs_open(const char* name, const kvs_open_options* options, kvs_table** out) {
  if (name == nullptr || out == nullptr)
    return fail(Errc::kInvalidArgument, "kvs_open: NULL argument");
  *out = nullptr;
  const std::string prefix = options && options->shm_prefix ? options->shm_prefix : "kvs.";
  auto seg = shm::segment_name(prefix, name);
  if (!seg) return fail(seg.error());
  static std::once_flag fork_handlers;
  std::call_once(fork_handlers,
                 [] { ::pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child); });
  try {
    auto t = std::make_unique<kvs_table>();
    t->segment = *seg;
    t->name = name;
    auto g = open_generation(*seg);
    if (!g) return fail(g.error());
    t->link = std::make_shared<WaitLink>(wait_socket::path((*g)->registry_dir), (*g)->owner);
    t->gens.push_back(std::move(*g));
    t->cur.store(t->gens.back().get(), std::memory_order_release);
    t->id = g_next_table_id.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(g_tables_mu);
    g_tables.push_back(t.get());
    *out = t.release();
    return KVS_OK;
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, "kvs_open: out of memory");
  }
}

void kvs_close(kvs_table* t) {
  if (t == nullptr) return;
  {
    std::lock_guard tables_lock(g_tables_mu);
    std::erase(g_tables, t);
  }
  {
    std::lock_guard table_lock(t->mu);
    for (auto& g : t->gens) {
      std::lock_guard lock(g->pool->mu);
      g->pool->closed = true;
      g->pool->files.clear();
      g->pool->free.clear();
    }
  }
  if (t_last && t_last->table_id == t->id) t_last = nullptr;
  delete t;
}

int kvs_read_begin(kvs_table* t, kvs_txn** out) {
  if (t == nullptr || out == nullptr)
    return fail(Errc::kInvalidArgument, "kvs_read_begin: NULL argument");
  kvs_txn* x = t_last;
  if (x != nullptr && x->table_id == t->id) [[likely]] {
    if (x->depth > 0) {
      ++x->depth;
      *out = x;
      return KVS_OK;
    }
    if (x->gen == t->cur.load(std::memory_order_relaxed) && enter(t, x, /*stay=*/false))
        [[likely]] {
      *out = x;
      return KVS_OK;
    }
  }
  try {
    return read_begin_slow(t, out);
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, "kvs_read_begin: out of memory");
  }
}

void kvs_read_end(kvs_txn* x) {
  if (x == nullptr || x->depth == 0) return;
  if (--x->depth == 0) {
    // release: our reads of entries happen before the writer sees us leave.
    x->slot->epoch.store(0, std::memory_order_release);
  }
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

int kvs_wait_ready(kvs_table* t, int timeout_ms) {
  if (t == nullptr) return fail(Errc::kInvalidArgument, "kvs_wait_ready: NULL table");
  const int rc = wait_until(t, timeout_ms, [](const Generation& g) -> std::optional<int> {
    if (g.header->state.load(std::memory_order_acquire) ==
        static_cast<uint32_t>(TableState::kReady))
      return KVS_OK;
    return std::nullopt;
  });
  if (rc != KVS_ETIMEDOUT) return rc;
  return fail(Errc::kTimeout, shm::path_of(t->segment) + " not READY after " +
                                  std::to_string(timeout_ms) + " ms (kvsd still bootstrapping)");
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
    const auto* ps =
        reinterpret_cast<const PartitionState*>(g.data->data() + g.header->partitions_offset);
    if (next_offset) *next_offset = ps[partition].next_offset.load(std::memory_order_acquire);
    if (high_watermark)
      *high_watermark = ps[partition].high_watermark.load(std::memory_order_acquire);
    return KVS_OK;
  });
}

const char* kvs_strerror(int code) {
  switch (code) {
    case KVS_OK:
      return "success";
    case KVS_ENOTFOUND:
      return "key not found";
    case KVS_ENOTABLE:
      return "table does not exist (is kvsd running?)";
    case KVS_ELAYOUT:
      return "table has another layout version";
    case KVS_ECORRUPT:
      return "table segment is corrupt";
    case KVS_EACCES:
      return "permission denied";
    case KVS_EINVAL:
      return "invalid argument";
    case KVS_ETIMEDOUT:
      return "timed out";
    case KVS_EREADERS:
      return "reader registry full";
    case KVS_ERANGE:
      return "buffer too small";
    case KVS_EFULL:
      return "table full";
    case KVS_ETOOBIG:
      return "key or value too large";
    case KVS_EBUSY:
      return "table held by another writer";
    case KVS_ESYS:
      return "system error";
    case KVS_ENOMEM:
      return "out of memory";
    case KVS_ENOTSUP:
      return "operation not supported";
    case KVS_EPROTO:
      return "protocol error";
    case KVS_EQUEUE:
      return "kvsd's producer queue is full";
    case KVS_ECONN:
      return "no connection to kvsd";
    case KVS_EKAFKA:
      return "Kafka refused the write";
    default:
      return "unknown error";
  }
}

const char* kvs_last_error(void) { return t_last_error.c_str(); }

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
    const auto* ps = reinterpret_cast<const PartitionState*>(g.data->data() + h.partitions_offset);
    for (uint32_t p = 0; p < parts; ++p) {
      s.backlog += partition_lag(ps[p].next_offset.load(std::memory_order_relaxed),
                                 ps[p].high_watermark.load(std::memory_order_relaxed));
    }
    return s;
  });
  return KVS_OK;
}

int kvs_wait(kvs_table* t, const kvs_token* token, int timeout_ms) {
  if (t == nullptr || token == nullptr)
    return fail(Errc::kInvalidArgument, "kvs_wait: NULL argument");
  if (token->partition < 0 || token->offset < 0) {
    return fail(Errc::kInvalidArgument, "kvs_wait: token (" + std::to_string(token->partition) +
                                            ", " + std::to_string(token->offset) +
                                            ") is not one a write returned");
  }
  const auto p = static_cast<uint32_t>(token->partition);
  int64_t next = -1;
  const int rc = wait_until(t, timeout_ms, [&](const Generation& g) -> std::optional<int> {
    const TableHeader& h = *g.header;
    if (p >= h.partition_capacity) {
      return fail(Errc::kInvalidArgument, "kvs_wait: " + shm::path_of(t->segment) +
                                              " tracks at most " +
                                              std::to_string(h.partition_capacity) +
                                              " partitions, no partition " + std::to_string(p));
    }
    // A partition the topic gained lately is followed once kvsd sees it:
    // waited for, unless the segment cannot track it at all.
    if (p >= std::min(h.partition_count.load(std::memory_order_acquire), h.partition_capacity))
      return std::nullopt;
    const auto* ps = reinterpret_cast<const PartitionState*>(g.data->data() + h.partitions_offset);
    next = ps[p].next_offset.load(std::memory_order_acquire);
    if (next > token->offset) return KVS_OK;
    return std::nullopt;
  });
  if (rc != KVS_ETIMEDOUT) return rc;
  return fail(Errc::kTimeout, shm::path_of(t->segment) + " has not applied partition " +
                                  std::to_string(token->partition) + " offset " +
                                  std::to_string(token->offset) + " within " +
                                  std::to_string(timeout_ms) +
                                  " ms (next offset there: " + std::to_string(next) + ")");
}

}  // extern "C"

namespace kvs::detail {

GuardView guard_view(const kvs_txn* x) {
  const Generation& g = *x->gen;
  return GuardView{g.header, g.data->data(), &g.view, &g, shm::path_of(g.data->name), x->depth > 1};
}

const std::string& table_name(const kvs_table* t) { return t->name; }

const std::shared_ptr<WaitLink>& wait_link(kvs_table* t) { return t->link; }

const std::string& segment_name(const kvs_table* t) { return t->segment; }

std::chrono::nanoseconds counted_sleep() {
  // A counted waiter looks again at least this often anyway: a kvsd that
  // died with no successor wakes nobody, and any reader may move sleepers
  // off the word (FUTEX_CMP_REQUEUE needs only read access), which this
  // bounds. Tests lengthen it (KVS_WAIT_RECHECK_MS) so that a missed wake
  // shows.
  static const std::chrono::nanoseconds slice = [] {
    const char* v = std::getenv("KVS_WAIT_RECHECK_MS");
    const long ms = v ? std::strtol(v, nullptr, 10) : 0;
    return std::chrono::nanoseconds(
        std::chrono::milliseconds(ms > 0 ? std::min<long>(ms, 3600 * 1000) : 1000));
  }();
  return slice;
}

Result<std::unique_ptr<shm::Mapping>> map_segment(const std::string& segment) {
  auto m = shm::open_segment(segment, shm::Access::kReadOnly);
  if (!m) return m;
  if (auto ok = check_table(**m); !ok) return std::move(ok).error();
  if (auto ok = shm::check_segment_owner(**m, nullptr); !ok) return std::move(ok).error();
  return m;
}

}  // namespace kvs::detail
