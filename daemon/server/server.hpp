// kvsd's write server: the Unix socket of docs/protocol.md, served by one
// thread with epoll, and the Kafka producer behind it.
//
// Writes are produced with enable.idempotence=true, acks=all and the murmur2
// partitioner (Java's default), and answered from librdkafka's delivery
// reports, with the token (partition, offset). With VISIBLE the answer waits
// until the table applied the token; the applier calls applied() after each
// batch it publishes.
//
// Threads: everything runs on the server's own thread (epoll, librdkafka's
// delivery reports through rd_kafka_poll). applied() and stop() may be called
// from any thread.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config/config.hpp"
#include "kvs/result.hpp"
#include "server/counters.hpp"
#include "snapshots.hpp"

namespace kvs::daemon {

class WaitHub;

class Server {
 public:
  // Creates the socket (mode, group from cfg) and the producer, and starts
  // serving. `kafka` are the [kafka] properties (bootstrap.servers resolved).
  // Errors: kInvalidArgument (a librdkafka property, a group), kSystem (the
  // socket cannot be created: the message names the path and the way out),
  // kBusy (another kvsd serves the socket).
  // `snapshots` (may be null) gives stats the tables' last snapshots;
  // `waits` (may be null) connects readers handed a table to its wait socket.
  static Result<std::unique_ptr<Server>> start(
      const config::Config& cfg, const std::vector<std::pair<std::string, std::string>>& kafka,
      const SnapshotStatus* snapshots = nullptr, WaitHub* waits = nullptr);
  ~Server();  // stop()s if needed

  // The applier published new offsets: answer the VISIBLE writes and WAITs
  // they satisfy. Cheap (one atomic load) when nobody waits.
  void applied();

  // The partition count of table `table`'s topic, as the consumer learnt
  // it: writes are partitioned over it (thread-safe; the apply thread calls
  // it every second).
  void set_partition_count(const std::string& table, int32_t n);

  // The counters as the server's thread last published them (after each
  // turn of its loop; any thread).
  server::Counters counters() const;
  // Write failures by code and write latencies (any thread).
  const server::WriteStats& write_stats() const;

  // Stops accepting, gives writes in flight up to `drain` to be acknowledged
  // and answered, then closes every connection.
  void stop(std::chrono::milliseconds drain);

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvs::daemon
