// The types the server's three parts share: a served table, a connection
// (owned by Connections), a request (owned by Requests) and the references
// librdkafka carries for each produced record (handed out by Requests,
// returned by Producer). Plain data: the rules live with their owners.
#pragma once

#include <librdkafka/rdkafka.h>
#include <sys/types.h>

#include <atomic>
#include <boost/container/small_vector.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "kvs/kvs.h"
#include "protocol/frame.hpp"

namespace kvs::daemon::server {

using clock = std::chrono::steady_clock;
namespace proto = protocol;

struct Table {
  std::string name, topic;
  uint32_t max_key_bytes = 0, max_value_bytes = 0;
  uint32_t max_partitions = 0;
  // The topic's partition count as kvsd's consumer last learnt it (every
  // second; 0: not known yet): writes are partitioned over it, as Java's
  // default partitioner does over what its metadata says.
  std::atomic<int32_t> partitions{0};
  kvs_table* reader = nullptr;  // applied offsets, for VISIBLE and WAIT
  rd_kafka_topic_t* rkt = nullptr;
};

// Descriptors sent with the reply that starts at byte `at` of Conn::out
// (SCM_RIGHTS); the connection closes its copies once they are sent.
struct Attached {
  size_t at = 0;
  std::vector<int> fds;
};

struct Conn {
  int fd = -1;
  uint64_t id = 0;
  std::string in;  // bytes received, from in_off on not yet parsed
  size_t in_off = 0;
  std::string out;  // replies, from out_off on not yet sent
  size_t out_off = 0;
  bool hello = false;
  bool closing = false;  // close once `out` is sent
  bool eof = false;      // the peer sent everything it will send
  uint32_t pending = 0;  // requests without a reply (kept by Requests)
  uint32_t events = 0;   // epoll interest now registered
  bool dirty = false;    // in Connections' dirty list
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  // Why this peer may not write / be handed a table ("" if it may): a
  // connection is kept if it may do either (server/peer_access.hpp).
  std::string write_refusal, read_refusal;
  std::vector<Attached> attached;  // in order of `at`
  uint32_t handed = 0;             // OPEN replies with descriptors on this connection
  clock::time_point accepted{};
  clock::time_point frame_started{};  // an unfinished frame's first bytes; {}: none
  size_t charged = 0;                 // input buffer beyond kFreeInputBytes, drawn from the budget
  bool budget_wait = false;           // not read until max_unfinished_frame_bytes has room
  size_t out_counted = 0;             // unsent replies, as counted in unsent_total
};

struct Request;
// Names a request across its reuse: the pool slot and the request's sequence
// number (a slot whose request was freed holds another sequence number).
struct ReqRef {
  uint32_t slot = 0;
  uint64_t seq = 0;
};

struct MsgRef {  // a produced record's opaque: which operation of which request
  Request* req;
  uint32_t index;
};

// Requests are pooled (Requests' slots): a write allocates nothing of its
// own once the pool has warmed up.
struct Request {
  uint32_t slot = 0;  // in the pool, for good
  bool live = false;  // in use; false: on the free list
  uint64_t seq = 0;   // unique per use of the slot
  uint64_t conn_id = 0;
  uint64_t id = 0;
  proto::Type reply = proto::Type::kPutOk;  // kPutOk, kEraseOk, kBatchOk or kWaitOk
  bool visible = false;
  bool answered = false;
  Table* table = nullptr;
  clock::time_point deadline;
  uint32_t timeout_ms = 0;
  uint32_t outstanding = 0;  // records produced whose delivery report is still due
  uint32_t remaining = 0;    // operations without an outcome
  uint32_t parked = 0;       // operations waiting in the producer for queue space
  // A put or erase has one operation: kept inside the request, as the pool
  // keeps the requests together, so that the hot path stays in few lines.
  boost::container::small_vector<proto::BatchResult, 1> results;
  std::string error;  // message of the first failed operation
  boost::container::small_vector<MsgRef, 1> refs;
};

}  // namespace kvs::daemon::server
