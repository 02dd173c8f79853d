// libkvs's read path and its C ABI.
//
// Per thread and table, a kvs_txn owns one slot of the reader registry. The
// fast path of kvs_read_begin is: compare the thread's last txn with the
// table, load the global epoch, exchange it into the slot (a full barrier).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "format/index.hpp"
#include "format/layout.hpp"
#include "kvs/kvs.h"
#include "src/registry.hpp"
#include "src/shm.hpp"

using namespace kvs;
using namespace kvs::format;

namespace {

thread_local std::string t_last_error;

int fail(const Error& e) {
  t_last_error = e.message;
  return static_cast<int>(e.code);
}
int fail(Errc code, std::string message) {
  t_last_error = std::move(message);
  return static_cast<int>(code);
}

std::atomic<uint64_t> g_next_table_id{1};

// Registry slots this process claimed for one table. Threads that exit give
// their slot back here for the next thread; kvs_close releases them all.
struct SlotPool {
  std::mutex mu;
  std::vector<ReaderSlot*> free;
  std::vector<ReaderSlot*> claimed;
  bool closed = false;
};

}  // namespace

struct kvs_table {
  std::unique_ptr<shm::Mapping> data;
  std::unique_ptr<shm::Mapping> registry_map;
  const TableHeader* header = nullptr;
  TableView view;
  RegistryView registry;
  uint64_t id = 0;
  std::shared_ptr<SlotPool> pool = std::make_shared<SlotPool>();
};

struct kvs_txn {
  const kvs_table* table = nullptr;
  ReaderSlot* slot = nullptr;
  uint32_t depth = 0;
  uint64_t table_id = 0;
  std::shared_ptr<SlotPool> pool;
};

namespace {

// This thread's guards, one per table it reads.
struct ThreadTxns {
  std::vector<std::unique_ptr<kvs_txn>> txns;

  ~ThreadTxns() {
    for (auto& t : txns) give_back(*t);
  }
  static void give_back(kvs_txn& t) {
    std::lock_guard lock(t.pool->mu);
    if (!t.pool->closed) t.pool->free.push_back(t.slot);
  }
};
thread_local ThreadTxns t_txns;
// The guard this thread used last: trivially destructible, so the fast path
// of kvs_read_begin needs no TLS initialisation check.
// initial-exec: a plain %fs-relative load instead of a __tls_get_addr call
// (one pointer of static TLS, which glibc reserves even for dlopen).
__attribute__((tls_model("initial-exec"))) thread_local kvs_txn* t_last = nullptr;

kvs_txn* txn_slow(kvs_table* t, int* err) {
  auto& txns = t_txns.txns;
  t_last = nullptr;
  // Drop guards of tables that were closed.
  std::erase_if(txns, [](const std::unique_ptr<kvs_txn>& x) {
    std::lock_guard lock(x->pool->mu);
    return x->pool->closed;
  });
  for (auto& x : txns) {
    if (x->table_id == t->id) return t_last = x.get();
  }
  ReaderSlot* slot = nullptr;
  {
    std::lock_guard lock(t->pool->mu);
    if (!t->pool->free.empty()) {
      slot = t->pool->free.back();
      t->pool->free.pop_back();
    }
  }
  if (slot == nullptr) {
    const uint64_t owner = make_owner(static_cast<uint32_t>(::getpid()), shm::self_start_time());
    const auto hint =
        static_cast<uint32_t>(std::hash<std::thread::id>{}(std::this_thread::get_id()));
    slot = t->registry.claim(owner, hint);
    if (slot == nullptr) {
      *err = fail(Errc::kRegistryFull,
                  shm::path_of(t->registry_map->name) + ": all " +
                      std::to_string(t->registry.slot_count()) +
                      " reader slots are in use; raise the table's reader_slots in kvsd.toml "
                      "or find stuck readers with 'kvsctl stats'");
      return nullptr;
    }
    std::lock_guard lock(t->pool->mu);
    t->pool->claimed.push_back(slot);
  }
  auto x = std::make_unique<kvs_txn>();
  x->table = t;
  x->slot = slot;
  x->table_id = t->id;
  x->pool = t->pool;
  txns.push_back(std::move(x));
  return t_last = txns.back().get();
}

Result<void> check_table(const kvs_table& t) {
  const std::string path = shm::path_of(t.data->name);
  const HeaderVerdict v = check_header(t.data->data(), t.data->size());
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
                                        std::to_string(t.data->size()) +
                                        " bytes); kvsd rebuilds it on its next start");
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
  try {
    auto t = std::make_unique<kvs_table>();
    auto data = shm::open_segment(*seg, shm::Access::kReadOnly);
    if (!data) return fail(data.error());
    t->data = std::move(*data);
    if (auto ok = check_table(*t); !ok) return fail(ok.error());
    auto reg = shm::open_segment(shm::registry_name(*seg), shm::Access::kReadWrite);
    if (!reg) return fail(reg.error());
    t->registry_map = std::move(*reg);
    auto rv = RegistryView::attach(*t->registry_map);
    if (!rv) return fail(rv.error());
    t->registry = *rv;
    t->header = reinterpret_cast<const TableHeader*>(t->data->data());
    t->view = TableView(t->data->data(), *t->header);
    // Map the used part now, so that first reads do not take page faults
    // (microseconds each). The unused arena stays lazy: populating it would
    // commit memory. Kernels before 5.14 lack this advice; that is harmless.
    const uint64_t used = std::min<uint64_t>(
        t->data->size(),
        format::align_up(
            t->header->arena_offset + t->header->arena_used.load(std::memory_order_acquire), 4096));
    ::madvise(t->data->data(), used, MADV_POPULATE_READ);
    t->id = g_next_table_id.fetch_add(1, std::memory_order_relaxed);
    *out = t.release();
    return KVS_OK;
  } catch (const std::bad_alloc&) {
    return fail(Errc::kNoMemory, "kvs_open: out of memory");
  }
}

void kvs_close(kvs_table* t) {
  if (t == nullptr) return;
  {
    std::lock_guard lock(t->pool->mu);
    t->pool->closed = true;
    for (ReaderSlot* s : t->pool->claimed) RegistryView::release(s);
  }
  if (t_last && t_last->table_id == t->id) t_last = nullptr;
  delete t;
}

int kvs_read_begin(kvs_table* t, kvs_txn** out) {
  if (t == nullptr || out == nullptr)
    return fail(Errc::kInvalidArgument, "kvs_read_begin: NULL argument");
  kvs_txn* x = t_last;
  if (x == nullptr || x->table_id != t->id) {
    int err = 0;
    try {
      x = txn_slow(t, &err);
    } catch (const std::bad_alloc&) {
      return fail(Errc::kNoMemory, "kvs_read_begin: out of memory");
    }
    if (x == nullptr) return err;
  }
  if (x->depth++ == 0) {
    const uint64_t e = t->header->epoch.load(std::memory_order_acquire);
    // seq_cst exchange: the announcement is globally visible before any slot
    // load of this read (pairs with the fence in TableWriter::reclaim()).
    x->slot->epoch.exchange(e, std::memory_order_seq_cst);
  }
  *out = x;
  return KVS_OK;
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
  switch (x->table->view.find(key, key_len, hash_key(key, key_len), &e)) {
    case Lookup::kFound:
      if (value) *value = e.value;
      if (value_len) *value_len = e.value_len;
      return KVS_OK;
    case Lookup::kAbsent:
      return KVS_ENOTFOUND;
    case Lookup::kCorrupt:
      break;
  }
  return fail(Errc::kCorrupt, shm::path_of(x->table->data->name) +
                                  ": lookup left the table's bounds; kvsd rebuilds it on restart");
}

int kvs_multi_get(kvs_txn* x, size_t count, const void* const* keys, const size_t* key_lens,
                  const void** values, size_t* value_lens, int* results) {
  if (x == nullptr || x->depth == 0 || (count > 0 && (!keys || !key_lens || !results))) {
    return fail(Errc::kInvalidArgument,
                "kvs_multi_get: needs an open guard, keys, lengths, results");
  }
  const TableView& view = x->table->view;
  constexpr size_t kBatch = 32;
  uint64_t hashes[kBatch];
  uint64_t firsts[kBatch];
  for (size_t base = 0; base < count; base += kBatch) {
    const size_t n = std::min(kBatch, count - base);
    // Three passes so that the cache misses of all keys overlap: the group
    // lines, then the candidate entries, then the comparisons.
    for (size_t i = 0; i < n; ++i) {
      hashes[i] = hash_key(keys[base + i], key_lens[base + i]);
      view.prefetch_group(hashes[i]);
    }
    for (size_t i = 0; i < n; ++i) firsts[i] = view.first_match(hashes[i]);
    for (size_t i = 0; i < n; ++i) {
      EntryRef e;
      const size_t k = base + i;
      switch (view.resolve(keys[k], key_lens[k], hashes[i], firsts[i], &e)) {
        case Lookup::kFound:
          if (values) values[k] = e.value;
          if (value_lens) value_lens[k] = e.value_len;
          results[k] = KVS_OK;
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
  const TableView& view = x->table->view;
  for (uint64_t g = 0; g < view.group_count(); ++g) {
    for (int i = 0; i < kSlotsPerGroup; ++i) {
      const uint64_t w = view.group(g).slots[i].load(std::memory_order_acquire);
      if (w == 0) continue;
      EntryRef e;
      if (!view.entry_at(slot_offset(w), &e)) {
        return fail(Errc::kCorrupt, shm::path_of(x->table->data->name) +
                                        ": an index slot points outside the arena");
      }
      if (int rc = fn(ctx, e.key, e.key_len, e.value, e.value_len); rc != 0) return rc;
    }
  }
  return KVS_OK;
}

uint64_t kvs_size(kvs_table* t) { return t ? t->header->size.load(std::memory_order_relaxed) : 0; }

int kvs_state(kvs_table* t) {
  return t ? static_cast<int>(t->header->state.load(std::memory_order_acquire)) : 0;
}

int kvs_wait_ready(kvs_table* t, int timeout_ms) {
  if (t == nullptr) return fail(Errc::kInvalidArgument, "kvs_wait_ready: NULL table");
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::milliseconds(timeout_ms);
  auto pause = std::chrono::microseconds(100);
  // Polls: the state changes once per kvsd start, and a futex would need a
  // writable mapping in every reader.
  while (kvs_state(t) != KVS_STATE_READY) {
    if (timeout_ms >= 0 && clock::now() >= deadline) {
      return fail(Errc::kTimeout, shm::path_of(t->data->name) + " not READY after " +
                                      std::to_string(timeout_ms) +
                                      " ms (kvsd still bootstrapping)");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(10000));
  }
  return KVS_OK;
}

uint32_t kvs_partition_count(kvs_table* t) {
  return t ? t->header->partition_count.load(std::memory_order_acquire) : 0;
}

int kvs_partition_offsets(kvs_table* t, uint32_t partition, int64_t* next_offset,
                          int64_t* high_watermark) {
  if (t == nullptr || partition >= t->header->partition_capacity) {
    return fail(Errc::kInvalidArgument,
                "kvs_partition_offsets: no partition " + std::to_string(partition));
  }
  const auto* ps =
      reinterpret_cast<const PartitionState*>(t->data->data() + t->header->partitions_offset);
  if (next_offset) *next_offset = ps[partition].next_offset.load(std::memory_order_acquire);
  if (high_watermark)
    *high_watermark = ps[partition].high_watermark.load(std::memory_order_acquire);
  return KVS_OK;
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
    default:
      return "unknown error";
  }
}

const char* kvs_last_error(void) { return t_last_error.c_str(); }

}  // extern "C"
