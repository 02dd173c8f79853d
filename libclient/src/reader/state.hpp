// What an open table is to libkvs's read path: the segments it maps
// (generations), this process's reader slots in them, and a thread's guard.
// The rooms that act on this state:
//   announce.cpp     the announcement protocol: enter, bind, collect, and
//                    kvs_read_begin/kvs_read_end (docs/format.md proves it)
//   generations.cpp  finding, checking and following the table's segment
//   fork.cpp         the pthread_atfork handlers
//   waits.cpp        sleeping on the segment's futex word (kvs_wait*)
//   handover.cpp     asking kvsd's socket for a table's descriptors
//   errors.cpp       kvs_last_error and kvs_strerror
//   ../reader.cpp    the rest of the C ABI, a thin layer over these
//
// A kvs_table follows the segment that carries the table's name. kvsd may
// replace that segment (a growth, a rebuild, a layout change): it renames
// the new one into place and then sets `replaced` in the old header. Each
// segment a process maps is a Generation; readers move to the newest one at
// their next outermost read_begin, and an old Generation is unmapped once
// none of this process's threads reads it.
#pragma once

#include <sys/types.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "format/index.hpp"
#include "format/layout.hpp"
#include "kvs/kvs.h"
#include "kvs/result.hpp"
#include "src/registry.hpp"
#include "src/shm.hpp"
#include "src/wait_link.hpp"

namespace kvs::reader {

// This process's reader files in one Generation's registry, and the slots
// in them. Threads that exit give their slot back here for the next thread.
// `retired`: the generation was replaced, slots given back are not reused.
// `closed`: the files were removed (kvs_close, or the generation is gone).
struct SlotPool {
  std::mutex mu;
  std::vector<std::unique_ptr<registry::ReaderFile>> files;
  std::vector<format::ReaderSlot*> free;
  uint32_t held = 0;  // slots bound to a thread's txn
  bool retired = false;
  bool closed = false;

  bool any_reading() const {
    for (const auto& f : files) {
      for (uint32_t i = 0; i < format::kReaderFileSlots; ++i) {
        if (f->slot(i).epoch.load(std::memory_order_seq_cst) != 0) return true;
      }
    }
    return false;
  }
};

// One mapped segment of a table.
struct Generation {
  std::unique_ptr<shm::Mapping> data;
  const format::TableHeader* header = nullptr;
  format::TableView view;
  std::string registry_dir;  // "" for a handed-over segment
  uid_t owner = 0;           // the segment's owner: kvsd's user
  // A segment kvsd handed over (docs/protocol.md, OPEN): reader files are
  // asked of kvsd's socket too.
  std::string socket;  // "" if opened by name
  std::string table;
  std::shared_ptr<SlotPool> pool = std::make_shared<SlotPool>();
  // Threads sleeping on the futex word in this mapping: it stays mapped
  // until they wake (see waits.cpp).
  std::atomic<uint32_t> sleepers{0};
};

}  // namespace kvs::reader

struct kvs_table {
  // The generation new reads start in. Only ever changes under `mu`.
  std::atomic<kvs::reader::Generation*> cur{nullptr};
  std::mutex mu;
  std::vector<std::unique_ptr<kvs::reader::Generation>> gens;  // under mu; includes cur
  std::string segment;
  std::string name;    // as kvs_open was given it
  std::string socket;  // kvsd's socket, if the table was handed over ("": opened by name)
  uint64_t id = 0;
  // Retry pacing (under mu): after a try that found no successor, the
  // next waits until next_reopen_ns, unless `replaced` has moved past
  // reopen_flag (the successor was named since).
  int64_t next_reopen_ns = 0;  // steady clock
  uint32_t reopen_flag = 0;
  std::shared_ptr<kvs::WaitLink> link;  // to kvsd's wait socket (watches share it)
};

struct kvs_txn {
  const kvs::reader::Generation* gen = nullptr;  // null: not bound (new, or reset in a child)
  kvs::format::ReaderSlot* slot = nullptr;
  uint32_t depth = 0;
  uint64_t table_id = 0;
  std::shared_ptr<kvs::reader::SlotPool> pool;
};

namespace kvs::reader {

// handover.cpp
// Descriptors kvsd handed over: the segment, a reader file, a wait link
// (-1 where not sent), closed with this unless taken.
struct HandedFds {
  std::array<int, 3> fds{-1, -1, -1};
  uint64_t incarnation = 0;  // of the segment, or the reader file's
  uid_t peer = 0;            // the socket's peer (kvsd's user, as seen here)
  HandedFds() = default;
  HandedFds(const HandedFds&) = delete;
  HandedFds& operator=(const HandedFds&) = delete;
  ~HandedFds();
  int take(size_t i);
};
// Asks kvsd at `socket` for what `want` names (protocol::kOpen*) of
// `table`; `incarnation` of the reader file (0: the current segment's).
// Errors: kNoTable (no kvsd, or no such table yet), kPermission (kvsd or
// the socket refused), kInvalidArgument (not a table kvsd serves),
// kProtocol, kSystem.
Result<void> ask_kvsd(const std::string& socket, const std::string& table, uint8_t want,
                      uint64_t incarnation, HandedFds* out);

// generations.cpp
// Maps the segment called `segment` and checks it and its registry.
Result<std::unique_ptr<Generation>> open_generation(const std::string& segment);
// Asks kvsd at `socket` for `table` and checks what it handed over.
Result<std::unique_ptr<Generation>> open_handed_generation(const std::string& socket,
                                                           const std::string& table);
// A new reader file for g (made here, or by kvsd for a handed segment).
Result<std::unique_ptr<registry::ReaderFile>> new_reader_file(const Generation& g);
// Checks a mapped segment's header: ours, this layout, consistent.
Result<void> check_table(const shm::Mapping& m);
// Under t->mu: if the current generation was replaced (or lost its name),
// maps the new segment and makes it current; failures are retried later.
void maybe_reopen(kvs_table* t);
// How often a replacement that could not be opened is tried again.
std::chrono::nanoseconds reopen_retry();

// announce.cpp
// Under t->mu: unmaps generations that are no longer current and that no
// thread of this process reads.
void collect(kvs_table* t);
// This thread's guards end (after fork, in the child).
void forget_thread_guards();
// This thread stops pointing at `t`'s guard (kvs_close).
void forget_table(const kvs_table* t);

// fork.cpp
// Installs the fork handlers (once; before the first table is opened, so
// that they are ordered before what opening registers).
void install_fork_handlers();
// The fork handlers hold and reset every tracked table.
void track_table(kvs_table* t);
void untrack_table(kvs_table* t);

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

// The partition states of a mapped segment.
inline const format::PartitionState* partition_states(const Generation& g) {
  return reinterpret_cast<const format::PartitionState*>(g.data->data() +
                                                         g.header->partitions_offset);
}

}  // namespace kvs::reader
