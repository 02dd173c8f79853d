// kvsd's metrics in the Prometheus text exposition format (version 0.0.4):
// what to say and how to spell it. It reads only what kvsd already
// publishes for other processes and threads: the tables' segment headers
// (through libkvs, as kvsctl stats does), the write server's published
// counters and the snapshot status. Nothing here touches the apply path's
// data or takes a lock it holds.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kafka/stats.hpp"
#include "kvs/kvs.h"
#include "metrics/board.hpp"
#include "server/counters.hpp"
#include "snapshots.hpp"

namespace kvs::daemon::metrics {

// One table as the endpoint sees it.
struct TableSource {
  std::string name, topic;
  uint64_t max_memory_bytes = 0;  // from kvsd.toml (0: no limit)
  kvs_table* table = nullptr;     // opened by the endpoint; null: not there yet
};

// Writes families and samples; a family's HELP and TYPE come before its
// samples, once.
class Writer {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help);
  // labels: "name" then "value" pairs.
  void sample(std::string_view name, const std::vector<std::string_view>& labels, double value);
  void sample(std::string_view name, const std::vector<std::string_view>& labels, uint64_t value);
  std::string take() { return std::move(out_); }

 private:
  void labels(const std::vector<std::string_view>& labels);
  std::string out_;
};

// A label value escaped as the format requires (backslash, quote, newline).
std::string escape_label(std::string_view v);

// Everything the page is made of besides the tables' segments.
struct Sources {
  server::Counters counters;                   // as the server thread last published them
  const server::WriteStats* writes = nullptr;  // null: no write figures
  const Board* board = nullptr;                // null: no apply-thread figures
  const SnapshotStatus* snapshots = nullptr;   // null: no snapshot figures
  std::vector<std::shared_ptr<const kafka::ClientStats>> kafka;  // librdkafka's latest statistics
  std::string_view version;
};

// librdkafka's statistics (kafka_figures.cpp).
void kafka_figures(Writer& w, const std::vector<std::shared_ptr<const kafka::ClientStats>>& stats,
                   uint64_t now);

// The whole page.
std::string render(const std::vector<TableSource>& tables, const Sources& sources);

}  // namespace kvs::daemon::metrics
