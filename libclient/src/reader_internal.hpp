// What the rest of libkvs (snapshot_write.cpp, watch.cpp) may see of a
// table and a read guard. Internal; not part of the ABI.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "format/index.hpp"
#include "format/layout.hpp"
#include "kvs/kvs.h"
#include "kvs/result.hpp"
#include "src/shm.hpp"
#include "src/wait_link.hpp"

namespace kvs::detail {

struct GuardView {
  const format::TableHeader* header;
  const uint8_t* base;            // the segment's first byte
  const format::TableView* view;  // valid while the guard is open
  const void* generation;         // identity: differs once the table was replaced
  std::string path;               // "/dev/shm/<segment>", for messages
  bool nested;                    // the guard is inside another of this thread's
};

// The segment an open guard (depth > 0) reads.
GuardView guard_view(const kvs_txn* x);
// The name the table was opened by.
const std::string& table_name(const kvs_table* t);
// Records `message` for kvs_last_error() and returns code (reader/errors.cpp).
int set_last_error(int code, std::string message);
// The table's link to kvsd's wait socket (a watch keeps it past kvs_close).
const std::shared_ptr<WaitLink>& wait_link(kvs_table* t);
// Where a table's segment comes from: its name, or kvsd's socket for a
// table kvsd handed over.
struct SegmentSource {
  std::string segment;
  std::string socket;  // "": opened by name
  std::string table;
};
SegmentSource segment_source(const kvs_table* t);
// Maps the segment that carries the table's name now (read-only), after
// the checks kvs_open makes; without a reader slot or registry file.
Result<std::unique_ptr<shm::Mapping>> map_segment(const SegmentSource& source);
// How long a waiter that kvsd counts sleeps at most before it looks again.
std::chrono::nanoseconds counted_sleep();

}  // namespace kvs::detail
