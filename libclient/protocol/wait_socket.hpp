// The wait socket: how a reader process tells kvsd that it sleeps on a
// table's futex word (TableHeader::changes), so that kvsd wakes it. One
// stream socket per table, "<registry dir>/wait", that kvsd listens on. A
// process connects once per table and sends kWaiting when its first thread
// starts to wait and kDone when its last one stops; kvsd answers each
// kWaiting with kCounted once it wakes for that connection. kvsd counts a
// connection that closes (its process died, in any pid namespace) as done:
// nobody's death leaves kvsd waking for nothing. Shared by kvsd and libkvs.
#pragma once

#include <string>

namespace kvs::wait_socket {

inline constexpr char kWaiting = '+';
inline constexpr char kDone = '-';
inline constexpr char kCounted = '!';

inline std::string path(const std::string& registry_dir) { return registry_dir + "/wait"; }

}  // namespace kvs::wait_socket
