// What the rest of libkvs (snapshot_write.cpp) may see of a read guard: the
// mapped segment behind it. Internal; not part of the ABI.
#pragma once

#include <cstdint>
#include <string>

#include "format/index.hpp"
#include "format/layout.hpp"
#include "kvs/kvs.h"

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
// Records `message` for kvs_last_error() and returns code (reader.cpp).
int set_last_error(int code, std::string message);

}  // namespace kvs::detail
