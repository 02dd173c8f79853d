// Sleeping until the table is READY (kvs_wait_ready) or has applied a write
// (kvs_wait): on the segment's futex word, counted by kvsd through the wait
// socket (src/wait_link.hpp) so that kvsd wakes only when someone sleeps.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>

#include "kvs/kvs.h"
#include "src/futex.hpp"
#include "src/reader/errors.hpp"
#include "src/reader/state.hpp"
#include "src/reader_internal.hpp"

using namespace kvs;
using namespace kvs::format;
using namespace kvs::reader;

namespace {

// How long a waiter sleeps at most while kvsd has not counted it (no kvsd,
// an older one, or its answer is late): it polls, as before there was a
// wait socket.
constexpr auto kUncountedSleep = std::chrono::milliseconds(1);

// How long one sleep on `g`'s word lasts at most.
std::chrono::nanoseconds sleep_slice(const Generation& g, bool counted, int timeout_ms,
                                     std::chrono::steady_clock::time_point deadline) {
  std::chrono::nanoseconds slice =
      counted ? detail::counted_sleep() : std::chrono::nanoseconds(kUncountedSleep);
  // A replacement not mapped yet is retried every reopen_retry(), and the
  // old segment's word does not move again.
  if (g.header->replaced.load(std::memory_order_relaxed) != 0)
    slice = std::min<std::chrono::nanoseconds>(slice, reopen_retry());
  if (timeout_ms >= 0)
    slice = std::min<std::chrono::nanoseconds>(slice, deadline - std::chrono::steady_clock::now());
  return slice;
}

// Calls ready(current generation) under the table's lock until it returns a
// code, sleeping on the segment's futex word in between; KVS_ETIMEDOUT
// once timeout_ms (< 0: none) has passed. The word is read before ready()
// looks: kvsd moves it after it published, so a change that ready() missed
// makes the sleep return at once.
template <class Ready>
int wait_until(kvs_table* t, int timeout_ms, Ready ready) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0));
  // What is there already costs no word with kvsd.
  if (auto rc = with_current(t, ready)) return *rc;
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
    futex::wait(&g->header->changes, seen, sleep_slice(*g, counted, timeout_ms, deadline));
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

namespace kvs::detail {

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

}  // namespace kvs::detail

extern "C" {

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
    next = partition_states(g)[p].next_offset.load(std::memory_order_acquire);
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
