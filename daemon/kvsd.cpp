#include "kvsd.hpp"

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include "kafka/consumer.hpp"
#include "kafka/embedded_kafka.hpp"
#include "kafka/shutdown.hpp"
#include "kafka/stats.hpp"
#include "kafka/topic_checks.hpp"
#include "kafka/topic_wait.hpp"
#include "kafka/watermark_poller.hpp"
#include "log.hpp"
#include "metrics/board.hpp"
#include "metrics/endpoint.hpp"
#include "replica.hpp"
#include "server/server.hpp"
#include "snapshots.hpp"
#include "src/registry.hpp"
#include "wait_hub.hpp"
#include "writer/table_writer.hpp"

namespace kvs::daemon {

namespace {

void on_signal(int) { g_stop = 1; }

// The consumer's fetch wait on the embedded Kafka, unless [kafka] sets it.
constexpr std::pair<const char*, const char*> kEmbeddedFetchWait{"fetch.wait.max.ms", "10"};

void notify(const std::string& msg) { sd_notify(0, msg.c_str()); }

// At start: the topic's partition count, retried while the cluster does not
// answer or calls the topic unknown, up to `bound` (kafka/topic_wait.hpp),
// creating it where the config says so; STATUS= and the log say what kvsd
// waits for.
Result<int32_t> wait_for_topic(const Replica& t, kafka::Consumer& c, std::chrono::seconds bound) {
  using Clock = kafka::TopicWait::Clock;
  const auto start = Clock::now();
  kafka::TopicWait wait(bound, t.cfg.create_topic, start);
  auto next_log = start;
  for (;;) {
    // Each metadata request waits at most what is left of the bound.
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(start + bound - Clock::now());
    const auto timeout = std::clamp<int64_t>(left.count(), 500, 5000);
    auto n = c.partition_count(t.cfg.topic, static_cast<int>(timeout));
    const auto now = Clock::now();
    switch (wait.after(n, now)) {
      case kafka::TopicWait::Next::kUse:
        return n;
      case kafka::TopicWait::Next::kGiveUp:
        if (n.error().code == Errc::kNotFound) {
          return make_error(Errc::kNotFound,
                            n.error().message + " (still, after " + std::to_string(bound.count()) +
                                " s: topic_wait_s); create it with cleanup.policy=compact" +
                                (t.cfg.create_topic ? "" : ", or set create_topic = true"));
        }
        return make_error(n.error().code, "no usable answer from Kafka within " +
                                              std::to_string(bound.count()) +
                                              " s (topic_wait_s): " + n.error().message);
      case kafka::TopicWait::Next::kCreate: {
        // Durability: acks=all protects a write only with at least two
        // in-sync replicas, and only if no replica that missed it can lead.
        std::map<std::string, std::string> configs{{"unclean.leader.election.enable", "false"}};
        const int32_t rf = t.cfg.create_replication_factor;
        if (rf >= 2) {
          configs["min.insync.replicas"] =
              std::to_string(std::min(t.cfg.create_min_insync_replicas, rf));
        }
        KVS_LOG_INFO(
            "table %s: creating topic %s (%d partitions, cleanup.policy=compact%s%s): it "
            "stayed unknown to the cluster",
            t.cfg.name.c_str(), t.cfg.topic.c_str(), t.cfg.create_partitions,
            rf >= 2 ? ", min.insync.replicas=" : "",
            rf >= 2 ? configs["min.insync.replicas"].c_str() : "");
        auto made = c.create_topic(t.cfg.topic, t.cfg.create_partitions, rf, configs, 10000);
        if (!made && made.error().code != Errc::kTimeout) {
          return std::move(made).error().context(
              "create the topic yourself "
              "(cleanup.policy=compact)");
        }
        continue;  // metadata lags behind creation for a moment
      }
      case kafka::TopicWait::Next::kRetry:
        break;
    }
    if (g_stop) return n;
    const std::string what =
        wait.unknown() ? "topic " + t.cfg.topic + " to be known to the cluster" : "Kafka to answer";
    notify("STATUS=table " + t.cfg.name + ": waiting for " + what);
    if (now >= next_log) {
      KVS_LOG_WARN("table %s: waiting for %s (%s); giving up after %lld s", t.cfg.name.c_str(),
                   what.c_str(), n.error().message.c_str(), static_cast<long long>(bound.count()));
      next_log = now + std::chrono::seconds(10);
    }
    const auto pause = wait.backoff();
    for (auto slept = std::chrono::milliseconds(0); slept < pause && !g_stop;
         slept += std::chrono::milliseconds(50)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

// Takes batches of messages from the consumer and applies each to its
// table. Index groups of the records a few places ahead are loaded while
// one is applied and, a few places later, the entry an overwrite compares
// its key with: a batch costs about one cache miss, not two dependent ones
// per record.
class BatchApplier {
 public:
  BatchApplier(std::vector<Replica>& tables,
               const std::map<std::string, size_t, std::less<>>& by_topic)
      : tables_(tables), by_topic_(by_topic), batch_(kBatch), owner_(kBatch) {}

  // Waits at most timeout_ms for a batch and applies it. False if kvsd
  // cannot go on.
  bool poll_and_apply(kafka::Consumer& c, int timeout_ms) {
    for (auto& t : tables_) t.skip_batch = false;
    n_ = c.poll_batch(timeout_ms, batch_.data(), kBatch);
    bool ok = true;
    for (size_t j = 0; j < kAhead; ++j) prefetch(j);
    for (size_t j = 0; j < kEntryAhead; ++j) prefetch_entry(j);
    for (size_t i = 0; i < n_; ++i) {
      prefetch(i + kAhead);
      prefetch_entry(i + kEntryAhead);
      rd_kafka_message_t* m = batch_[i];
      Replica* t = owner_[i];
      if (t == nullptr || m->partition < 0) {
        if (m->err) KVS_LOG_WARN("Kafka: %s", rd_kafka_message_errstr(m));
      } else {
        ok = apply_message(*t, c, m) && ok;
      }
      kafka::Consumer::release(m);
    }
    return ok;
  }

 private:
  static constexpr size_t kBatch = 1024, kAhead = 16, kEntryAhead = 8;

  // The table of a topic handle; names are looked up once per handle.
  Replica* table_of(const rd_kafka_topic_t* rkt) {
    for (const auto& [h, i] : by_handle_) {
      if (h == rkt) return &tables_[i];
    }
    auto it = by_topic_.find(std::string_view(rd_kafka_topic_name(rkt)));
    if (it == by_topic_.end()) return nullptr;
    if (by_handle_.size() >= 64) by_handle_.clear();  // handles are long-lived; stay bounded anyway
    by_handle_.emplace_back(rkt, it->second);
    return &tables_[it->second];
  }
  // owner_[j]: the table of batch_[j], looked up once, when it is prefetched.
  void prefetch(size_t j) {
    if (j >= n_) return;
    const rd_kafka_message_t* m = batch_[j];
    owner_[j] = m->rkt ? table_of(m->rkt) : nullptr;
    if (owner_[j] != nullptr && !m->err && m->key != nullptr) {
      owner_[j]->active().prefetch({static_cast<const char*>(m->key), m->key_len});
    }
  }
  void prefetch_entry(size_t j) {
    if (j >= n_) return;
    const rd_kafka_message_t* m = batch_[j];
    if (owner_[j] != nullptr && !m->err && m->key != nullptr) {
      owner_[j]->active().prefetch_entry({static_cast<const char*>(m->key), m->key_len});
    }
  }

  std::vector<Replica>& tables_;
  const std::map<std::string, size_t, std::less<>>& by_topic_;
  std::vector<rd_kafka_message_t*> batch_;
  std::vector<Replica*> owner_;
  size_t n_ = 0;
  std::vector<std::pair<const rd_kafka_topic_t*, size_t>> by_handle_;
};

// What the apply loop does besides applying, each on its own clock: the lag
// and the readers that hold memory back (every second), STATUS= (when it
// changes, and the bootstrap progress every second), the watchdog.
class Housekeeping {
 public:
  Housekeeping(std::vector<Replica>& tables, kafka::Consumer& c, kafka::WatermarkPoller& poller,
               Server& server, metrics::Board& board)
      : tables_(tables), consumer_(c), poller_(poller), server_(server), board_(board) {
    watchdog_ = sd_watchdog_enabled(0, &watchdog_usec_) > 0;
  }

  // False if kvsd cannot go on.
  bool tick(clock::time_point now, bool all_ready) {
    bool ok = true;
    if (now >= next_second_) {
      next_second_ = now + std::chrono::seconds(1);
      consumer_.serve_events();
      for (size_t i = 0; i < tables_.size(); ++i) {
        Replica& t = tables_[i];
        const int32_t n = poller_.partition_count(t.cfg.topic);
        if (n > 0) server_.set_partition_count(t.cfg.name, n);
        if (n > t.partition_count()) ok = follow_new_partitions(t, consumer_, poller_, n) && ok;
        if (n > 0 && n < t.partition_count())
          ok = follow_fewer_partitions(t, consumer_, poller_, n) && ok;
        poller_.follow(t.cfg.topic, t.partition_count());  // a rebuild may have changed it
        refresh_lag(t, consumer_, poller_);
        report_holder(t, now);
        if (i < board_.size()) publish(t, *board_[i]);
      }
      bool rebuilding = false;
      for (const auto& t : tables_) rebuilding = rebuilding || replacing(t.phase);
      const std::string status =
          "STATUS=" +
          (all_ready && !rebuilding
               ? "READY: " + std::to_string(tables_.size()) + " table(s) current"
               : progress_status(tables_, all_ready)) +
          pressure_status(tables_);
      // Progress is news every second; a steady state only when it changes.
      if (status != last_status_ || !all_ready || rebuilding) notify(status);
      last_status_ = status;
    }
    if (watchdog_ && now >= next_watchdog_) {
      notify("WATCHDOG=1");
      next_watchdog_ = now + std::chrono::microseconds(watchdog_usec_ / 2);
    }
    return ok;
  }

 private:
  // What the metrics endpoint reads of a table besides its segment.
  static void publish(const Replica& t, metrics::TableBoard& b) {
    metrics::store(b.records_applied, t.applied_total);
    metrics::store(b.rebuilds, t.rebuilds);
    metrics::store(b.growths, t.growths);
    const size_t n = std::min(t.parts.size(), b.oldest_unapplied_ns.size());
    for (size_t p = 0; p < n; ++p)
      metrics::store(b.oldest_unapplied_ns[p], t.parts[p].oldest_unapplied_ns);
    b.partitions.store(static_cast<uint32_t>(n), std::memory_order_relaxed);
  }

  std::vector<Replica>& tables_;
  kafka::Consumer& consumer_;
  kafka::WatermarkPoller& poller_;
  Server& server_;
  metrics::Board& board_;
  bool watchdog_ = false;
  uint64_t watchdog_usec_ = 0;
  clock::time_point next_second_{}, next_watchdog_{};
  std::string last_status_;
};

// Logs what the cluster said of the topics' configs once it answered (a
// topic that is not compacted, or not durable, or whose records cannot be
// as large as its table allows).
void log_topic_warnings(kafka::Consumer& c, const std::vector<Replica>& tables) {
  auto configs = c.poll_topic_configs();
  if (!configs) return;
  for (const auto& [topic, cfgs] : *configs) {
    if (!cfgs) {
      KVS_LOG_INFO("cannot tell whether topic %s is compacted and durable (%s)", topic.c_str(),
                   cfgs.error().message.c_str());
      continue;
    }
    uint64_t key_bytes = 0, value_bytes = 0;
    for (const auto& t : tables) {
      if (t.cfg.topic != topic) continue;
      key_bytes = std::max<uint64_t>(key_bytes, t.cfg.max_key_bytes);
      value_bytes = std::max<uint64_t>(value_bytes, t.cfg.max_value_bytes);
    }
    for (const auto& w : kafka::topic_warnings(topic, cfgs.value(), key_bytes, value_bytes))
      KVS_LOG_WARN("%s", w.c_str());
  }
}

// Starts librdkafka's mock cluster in this process with every table's
// topic, and points `properties` at it.
Result<std::unique_ptr<kafka::EmbeddedKafka>> start_embedded(
    const config::Config& cfg, std::vector<std::pair<std::string, std::string>>& properties) {
  auto k = kafka::EmbeddedKafka::start(1);
  if (!k) return std::move(k).error();
  for (const auto& t : cfg.tables) {
    if (auto ok = (*k)->create_topic(t.topic, t.create_partitions); !ok) return ok.error();
  }
  std::erase_if(properties, [](const auto& p) { return p.first == "bootstrap.servers"; });
  properties.emplace_back("bootstrap.servers", (*k)->bootstrap_servers());
  // The mock cluster answers a fetch that finds no new record only when
  // fetch.wait.max.ms (librdkafka's default: 500 ms) has passed, even if a
  // record arrives meanwhile; a real broker answers as soon as one does.
  // With the default, every "visible" write and kvs_wait would take up to
  // half a second here. A short wait costs an empty fetch every 10 ms
  // while idle. [kafka] may still set it.
  if (std::none_of(properties.begin(), properties.end(),
                   [](const auto& p) { return p.first == kEmbeddedFetchWait.first; })) {
    properties.emplace_back(kEmbeddedFetchWait.first, kEmbeddedFetchWait.second);
  }
  std::printf("embedded Kafka: bootstrap.servers=%s\n", (*k)->bootstrap_servers().c_str());
  std::fflush(stdout);
  KVS_LOG_WARN(
      "embedded Kafka (librdkafka's mock cluster) at %s: its data lives only as long "
      "as this kvsd process; use a real cluster for anything you keep",
      (*k)->bootstrap_servers().c_str());
  return k;
}

// Step 1 of run(): the tables, attached to the segments that are there or
// created. An exit code if that failed.
std::optional<int> open_replicas(const config::Config& cfg, bool fresh,
                                 std::vector<Replica>& tables,
                                 std::map<std::string, size_t, std::less<>>& by_topic,
                                 WaitHub& waits) {
  auto gid = config::resolve_group(cfg.shm_group, "shm_group");
  if (!gid) {
    KVS_LOG_ERROR("%s", gid.error().message.c_str());
    return kExitConfig;
  }
  for (const auto& tc : cfg.tables) {
    auto t = open_replica(cfg, tc, *gid, fresh);
    if (!t) {
      KVS_LOG_ERROR("table %s: %s", tc.name.c_str(), t.error().message.c_str());
      return 1;
    }
    // Without its wait socket a table works as before: waiting readers
    // poll every millisecond.
    auto waiting = waits.listen(tc.name, registry::dir_path(t->writer->segment_name()),
                                cfg.registry_mode, *gid, tc.reader_slots);
    if (waiting) {
      t->writer->wake_for(*waiting);
    } else {
      KVS_LOG_WARN("table %s: no wait socket (%s); readers that wait poll every millisecond",
                   tc.name.c_str(), waiting.error().message.c_str());
    }
    by_topic[tc.topic] = tables.size();
    tables.push_back(std::move(*t));
  }
  if (auto ok = waits.start(); !ok) {
    KVS_LOG_ERROR("%s", ok.error().message.c_str());
    return 1;
  }
  // Processes that slept on a segment before this kvsd listened try the
  // new sockets now.
  for (auto& t : tables) t.writer->wake_all();
  return std::nullopt;
}

// Step 2 of run(): each table's partitions, the high watermarks to reach
// and where to start; then the consumer is assigned. An exit code if kvsd
// cannot go on (0 when it was told to stop meanwhile).
std::optional<int> start_consuming(const config::Config& cfg, kafka::Consumer& consumer,
                                   std::vector<Replica>& tables) {
  std::vector<kafka::PartitionStart> starts;
  for (auto& t : tables) {
    auto n = wait_for_topic(t, consumer, std::chrono::seconds(cfg.topic_wait_s));
    if (g_stop) return 0;
    if (!n) {
      KVS_LOG_ERROR("table %s: %s", t.cfg.name.c_str(), n.error().message.c_str());
      return 1;
    }
    if (auto ok = open_partitions(t, consumer, *n, starts); !ok || g_stop) {
      if (g_stop) return 0;
      KVS_LOG_ERROR("%s", ok.error().message.c_str());
      return ok.error().code == Errc::kInvalidArgument ? kExitConfig : 1;
    }
    KVS_LOG_INFO("table %s: topic %s, %d partitions", t.cfg.name.c_str(), t.cfg.topic.c_str(), *n);
  }
  // A topic that is not compacted loses keys to retention; the table would
  // then be rebuilt from what remains. Asked in the background: the answer
  // must not delay READY, and not every cluster can tell.
  std::vector<std::string> topics;
  for (const auto& t : tables) topics.push_back(t.cfg.topic);
  consumer.request_topic_configs(topics, 5000);
  if (auto ok = consumer.assign(starts); !ok) {
    KVS_LOG_ERROR("%s", ok.error().message.c_str());
    return 1;
  }
  return std::nullopt;
}

// READY for systemd: once every table is current (a rebuilt table's swap
// is news too). update() is false if kvsd cannot go on.
class Readiness {
 public:
  explicit Readiness(std::vector<Replica>& tables) : tables_(tables) {}
  bool update() {
    bool all = true, ok = true;
    for (auto& t : tables_) {
      const ReadyChange change = check_ready(t);
      if (change == ReadyChange::kFailed) ok = false;
      if (change == ReadyChange::kRebuilt && all_ready_)
        notify("STATUS=READY: table " + t.cfg.name + " rebuilt");
      all = all && t.ready;
    }
    if (all && !all_ready_) {
      all_ready_ = true;
      notify("READY=1\nSTATUS=READY: " + std::to_string(tables_.size()) + " table(s) current");
    }
    return ok;
  }
  bool all_ready() const { return all_ready_; }

 private:
  std::vector<Replica>& tables_;
  bool all_ready_ = false;
};

// Step 3 of run(): consumes and applies until told to stop (or until kvsd
// cannot go on: returns 1 then).
int apply_until_stopped(const config::Config& cfg, kafka::Consumer& consumer,
                        std::vector<Replica>& tables,
                        const std::map<std::string, size_t, std::less<>>& by_topic, Server& server,
                        metrics::Board& board) {
  Readiness readiness(tables);
  int exit_code = readiness.update() ? 0 : 1;
  // High watermarks and partition counts from a thread of their own, also
  // for partitions that are not fetched while a record of theirs waits.
  kafka::WatermarkPoller poller(consumer, std::chrono::seconds(1), std::chrono::seconds(2));
  for (const auto& t : tables) poller.follow(t.cfg.topic, t.partition_count());
  Housekeeping chores(tables, consumer, poller, server, board);
  // Until the poller's first answer: the partition counts seen at start.
  for (const auto& t : tables) server.set_partition_count(t.cfg.name, t.partition_count());
  BatchApplier applier(tables, by_topic);
  while (!g_stop && exit_code == 0) {
    // A record waiting for room is tried again when due, not a poll later.
    const auto poll_start = clock::now();
    const auto poll_until =
        next_hold_try(tables, poll_start + std::chrono::milliseconds(cfg.poll_timeout_ms));
    const auto poll_ms = std::chrono::ceil<std::chrono::milliseconds>(poll_until - poll_start);
    bool ok =
        applier.poll_and_apply(consumer, static_cast<int>(std::max<int64_t>(0, poll_ms.count())));
    const auto now = clock::now();
    for (auto& t : tables) {
      ok = end_batch(t, consumer) && ok;
      if (t.n_held > 0) ok = retry_holds(t, consumer, now) && ok;
    }
    server.applied();
    ok = readiness.update() && ok;
    log_topic_warnings(consumer, tables);
    ok = chores.tick(now, readiness.all_ready()) && ok;
    if (!ok) exit_code = 1;
  }
  return exit_code;
}

}  // namespace

int run(const config::Config& cfg, const RunOptions& opts) {
  g_stop = 0;
  log::set_level(cfg.log_level);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  auto properties = cfg.kafka;
  // librdkafka's statistics for /metrics, unless [kafka] says how often.
  const bool stats_set = std::any_of(properties.begin(), properties.end(), [](const auto& kv) {
    return kv.first == "statistics.interval.ms";
  });
  if (!cfg.metrics_listen.empty() && !stats_set)
    properties.emplace_back("statistics.interval.ms", kafka::kStatsIntervalMs);
  std::unique_ptr<kafka::EmbeddedKafka> embedded;
  if (opts.embedded_kafka) {
    auto k = start_embedded(cfg, properties);
    if (!k) {
      KVS_LOG_ERROR("%s", k.error().message.c_str());
      return 1;
    }
    embedded = std::move(*k);
  }
  // 1. The tables.
  WaitHub waits;  // outlives the tables' writers, which read its counts
  std::vector<Replica> tables;
  std::map<std::string, size_t, std::less<>> by_topic;
  if (auto code = open_replicas(cfg, embedded != nullptr, tables, by_topic, waits)) return *code;
  // 2. Kafka: where each partition starts.
  auto consumer = kafka::Consumer::create(properties);
  if (!consumer) {
    KVS_LOG_ERROR("%s: %s", cfg.source.c_str(), consumer.error().message.c_str());
    return kExitConfig;
  }
  if (auto code = start_consuming(cfg, *consumer, tables)) return *code;
  // Writes are served from here on, during bootstrap too (Kafka takes them;
  // VISIBLE waits until the table has caught up to them).
  SnapshotStatus snapshot_status;
  auto server = Server::start(cfg, properties, &snapshot_status, &waits);
  if (!server) {
    KVS_LOG_ERROR("%s", server.error().message.c_str());
    return server.error().code == Errc::kInvalidArgument ? kExitConfig : 1;
  }
  // Prometheus's endpoint; kvsd serves its tables without it if the address
  // cannot be listened on.
  metrics::Board board;
  for (const auto& tc : cfg.tables)
    board.push_back(std::make_unique<metrics::TableBoard>(tc.max_partitions));
  auto endpoint = metrics::Endpoint::start(cfg, **server, &snapshot_status, &board);
  if (!endpoint) KVS_LOG_ERROR("%s; /metrics is off", endpoint.error().message.c_str());
  // Snapshots, from a thread of their own; none of an embedded cluster's
  // tables, whose data ends with this process.
  Snapshotter snapshots(cfg, snapshot_status, /*enabled=*/embedded == nullptr);
  snapshots.start();
  // 3. Consume and apply until told to stop.
  const int exit_code = apply_until_stopped(cfg, *consumer, tables, by_topic, **server, board);
  notify("STOPPING=1");
  // Writes in flight get a moment to be acknowledged and answered.
  (*server)->stop(std::chrono::milliseconds(std::min<uint32_t>(cfg.write_timeout_ms, 5000)));
  // A clean stop leaves each READY table's snapshot as of now.
  if (exit_code == 0) {
    notify("STATUS=writing snapshots");
    snapshots.write_all();
  }
  KVS_LOG_INFO("stopping: segments stay for the next start");
  if (endpoint) endpoint->reset();
  server->reset();
  consumer->close(kafka::kDestroyLimit);
  if (kafka::unfinished_destroys() > 0) {
    // librdkafka's threads are still running: exit() would run destructors
    // under them. The segments are consistent at any instruction; the
    // writers mark them as having no writer first.
    tables.clear();
    KVS_LOG_INFO("exiting now with code %d", exit_code);
    std::_Exit(exit_code);
  }
  return exit_code;
}

}  // namespace kvs::daemon
