// The announcement protocol (docs/format.md, "Memory reclamation (epochs)"
// and "Ordering rules"):
// how a read guard tells kvsd's writer which epoch it reads in, and when this
// process may unmap a segment it no longer needs.
//
// Per thread and table, a kvs_txn owns one slot in one of this process's
// reader files for the current Generation (src/registry.hpp). The fast path
// of kvs_read_begin is: compare the thread's last txn with the table and its
// generation, exchange 1 into the slot (a full barrier), check that the
// generation is still the current one and not replaced, then store the
// global epoch into the slot. kvs_read_begin and kvs_read_end live here, in
// the same unit as the thread's last txn, so that the fast path is one
// function with a plain TLS load.
#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "kvs/kvs.h"
#include "src/reader/errors.hpp"
#include "src/reader/state.hpp"

using namespace kvs;
using namespace kvs::format;
using namespace kvs::reader;

namespace {

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
  auto f = new_reader_file(g);
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

// Pins every epoch first (1 is the smallest), so that the generation can be
// checked before anything in its data segment is touched: collect() unmaps
// a generation only after it stopped being current and while every slot of
// this process in it reads 0. Then announces the epoch the read runs in.
// Returns false, announcing nothing, if `x`'s generation is no longer
// current, or was replaced and `stay` is false (the slow path then opens
// the replacement; while it cannot, reads stay).
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

}  // namespace

namespace kvs::reader {

// A generation no longer current is retired (its free slots are not given
// out again), unmapped once every slot of this process in it reads 0, and
// its reader files removed once no thread holds a slot in them.
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

void forget_thread_guards() {
  for (auto& x : t_txns.txns) {
    x->gen = nullptr;
    x->slot = nullptr;
    x->pool.reset();
    x->depth = 0;
  }
  t_last = nullptr;
}

void forget_table(const kvs_table* t) {
  if (t_last && t_last->table_id == t->id) t_last = nullptr;
}

}  // namespace kvs::reader

extern "C" {

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

}  // extern "C"
