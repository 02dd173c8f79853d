#include "kvsd.hpp"

#include <grp.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <thread>

#include "kafka/consumer.hpp"
#include "kafka/embedded_kafka.hpp"
#include "log.hpp"
#include "writer/table_writer.hpp"

namespace kvs::daemon {
namespace {

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

using clock = std::chrono::steady_clock;

struct Table {
  config::TableConfig cfg;
  std::unique_ptr<TableWriter> writer;
  int32_t partitions = 0;
  std::vector<int64_t> target;   // high watermark seen at start
  std::vector<bool> reached;     // position has reached target
  std::vector<int64_t> pending;  // next offset to publish after the batch; -1: none
  uint64_t applied = 0;
  uint64_t skipped = 0;
  bool ready = false;
};

Result<gid_t> resolve_group(const std::string& g) {
  if (g.empty()) return static_cast<gid_t>(-1);
  if (g.find_first_not_of("0123456789") == std::string::npos) {
    return static_cast<gid_t>(std::stoul(g));
  }
  if (const struct group* gr = ::getgrnam(g.c_str())) return gr->gr_gid;
  return make_error(Errc::kInvalidArgument,
                    "kvsd.shm_group = \"" + g + "\": no such group; create it or use a number");
}

// Retries `fn` while it fails with kTimeout (a broker not answering yet),
// logging each failure, until it succeeds, fails otherwise, or kvsd stops.
template <class F>
auto with_retry(const char* what, F fn) -> decltype(fn()) {
  for (int attempt = 1;; ++attempt) {
    auto r = fn();
    if (r || r.error().code != Errc::kTimeout || g_stop) return r;
    KVS_LOG_WARN("%s: %s; retrying (attempt %d)", what, r.error().message.c_str(), attempt);
    for (int i = 0; i < 10 && !g_stop; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void notify(const std::string& msg) { sd_notify(0, msg.c_str()); }

}  // namespace

int run(const config::Config& cfg, const RunOptions& opts) {
  g_stop = 0;
  log::set_level(cfg.log_level);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  auto properties = cfg.kafka;
  std::unique_ptr<kafka::EmbeddedKafka> embedded;
  if (opts.embedded_kafka) {
    auto k = kafka::EmbeddedKafka::start(1);
    if (!k) {
      KVS_LOG_ERROR("%s", k.error().message.c_str());
      return 1;
    }
    embedded = std::move(*k);
    for (const auto& t : cfg.tables) {
      if (auto ok = embedded->create_topic(t.topic, t.create_partitions); !ok) {
        KVS_LOG_ERROR("%s", ok.error().message.c_str());
        return 1;
      }
    }
    std::erase_if(properties, [](const auto& p) { return p.first == "bootstrap.servers"; });
    properties.emplace_back("bootstrap.servers", embedded->bootstrap_servers());
    std::printf("embedded Kafka: bootstrap.servers=%s\n", embedded->bootstrap_servers().c_str());
    std::fflush(stdout);
    KVS_LOG_WARN(
        "embedded Kafka (librdkafka's mock cluster) at %s: its data lives only as long "
        "as this kvsd process; use a real cluster for anything you keep",
        embedded->bootstrap_servers().c_str());
  }

  auto gid = resolve_group(cfg.shm_group);
  if (!gid) {
    KVS_LOG_ERROR("%s", gid.error().message.c_str());
    return kExitConfig;
  }

  // 1. The tables: attach to the segments that are there, else create them.
  std::vector<Table> tables;
  std::map<std::string, size_t> by_topic;
  for (const auto& tc : cfg.tables) {
    WriterOptions wo;
    wo.table = tc.name;
    wo.shm_prefix = cfg.shm_prefix;
    wo.capacity = tc.capacity;
    wo.arena_bytes = tc.memory_limit_bytes;
    wo.partition_capacity = tc.max_partitions;
    wo.reader_slots = tc.reader_slots;
    wo.max_key_bytes = tc.max_key_bytes;
    wo.max_value_bytes = tc.max_value_bytes;
    wo.data_mode = cfg.data_mode;
    wo.registry_mode = cfg.registry_mode;
    wo.group = *gid;
    wo.dead_reader_check = std::chrono::milliseconds(cfg.dead_reader_check_ms);
    if (embedded) {
      // A new embedded cluster starts empty: offsets recorded against an
      // earlier one mean nothing. Readers of the old segment keep it mapped.
      if (auto seg = shm::segment_name(cfg.shm_prefix, tc.name)) shm::remove_segment(*seg);
    }
    auto w = TableWriter::open(wo);
    if (!w) {
      KVS_LOG_ERROR("table %s: %s", tc.name.c_str(), w.error().message.c_str());
      return 1;
    }
    const char* how = (*w)->attach_kind() == AttachKind::kAttached  ? "attached to"
                      : (*w)->attach_kind() == AttachKind::kCreated ? "created"
                                                                    : "replaced";
    KVS_LOG_INFO("table %s: %s /dev/shm/%s (%llu entries)", tc.name.c_str(), how,
                 (*w)->segment_name().c_str(), static_cast<unsigned long long>((*w)->stats().size));
    (*w)->set_state(format::TableState::kBootstrapping);
    Table t;
    t.cfg = tc;
    t.writer = std::move(*w);
    by_topic[tc.topic] = tables.size();
    tables.push_back(std::move(t));
  }

  // 2. Kafka: partitions, the high watermarks to reach, where to start.
  auto consumer = kafka::Consumer::create(properties);
  if (!consumer) {
    KVS_LOG_ERROR("%s: %s", cfg.source.c_str(), consumer.error().message.c_str());
    return kExitConfig;
  }
  std::vector<kafka::PartitionStart> starts;
  for (auto& t : tables) {
    auto n = with_retry("fetching metadata",
                        [&] { return consumer->partition_count(t.cfg.topic, 5000); });
    if (g_stop) return 0;
    if (!n) {
      KVS_LOG_ERROR(
          "table %s: %s; create it with cleanup.policy=compact%s", t.cfg.name.c_str(),
          n.error().message.c_str(),
          t.cfg.create_topic ? " (create_topic needs CreateTopics, not supported yet)" : "");
      return 1;
    }
    if (auto ok = t.writer->set_partition_count(static_cast<uint32_t>(*n)); !ok) {
      KVS_LOG_ERROR("%s; raise the table's max_partitions", ok.error().message.c_str());
      return 1;
    }
    t.partitions = *n;
    t.target.assign(*n, 0);
    t.reached.assign(*n, false);
    t.pending.assign(*n, -1);
    for (int32_t p = 0; p < *n; ++p) {
      auto wm = with_retry("fetching watermarks",
                           [&] { return consumer->watermarks(t.cfg.topic, p, 5000); });
      if (g_stop) return 0;
      if (!wm) {
        KVS_LOG_ERROR("table %s: %s", t.cfg.name.c_str(), wm.error().message.c_str());
        return 1;
      }
      t.target[p] = wm->second;
      t.writer->set_high_watermark(static_cast<uint32_t>(p), wm->second);
      const int64_t next = t.writer->next_offset(static_cast<uint32_t>(p));
      t.reached[p] = next >= wm->second;
      starts.push_back({t.cfg.topic, p, next > 0 ? next : -2});
    }
    KVS_LOG_INFO("table %s: topic %s, %d partitions", t.cfg.name.c_str(), t.cfg.topic.c_str(), *n);
  }
  if (auto ok = consumer->assign(starts); !ok) {
    KVS_LOG_ERROR("%s", ok.error().message.c_str());
    return 1;
  }

  auto check_ready = [&](Table& t) {
    if (t.ready) return;
    for (bool r : t.reached) {
      if (!r) return;
    }
    t.ready = true;
    t.writer->set_state(format::TableState::kReady);
    KVS_LOG_INFO("table %s: READY (%llu records applied, %llu skipped)", t.cfg.name.c_str(),
                 static_cast<unsigned long long>(t.applied),
                 static_cast<unsigned long long>(t.skipped));
  };
  bool all_ready = false;
  auto update_all_ready = [&] {
    if (all_ready) return;
    for (auto& t : tables) {
      check_ready(t);
      if (!t.ready) return;
    }
    all_ready = true;
    notify("READY=1\nSTATUS=READY: " + std::to_string(tables.size()) + " table(s) current");
  };
  update_all_ready();

  uint64_t watchdog_usec = 0;
  const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0;
  auto next_status = clock::now();
  auto next_watchdog = clock::now();

  // 3. Consume and apply until told to stop.
  constexpr size_t kBatch = 1024;
  std::vector<rd_kafka_message_t*> batch(kBatch);
  while (!g_stop) {
    const size_t n =
        consumer->poll_batch(static_cast<int>(cfg.poll_timeout_ms), batch.data(), kBatch);
    for (size_t i = 0; i < n; ++i) {
      rd_kafka_message_t* m = batch[i];
      auto it = by_topic.find(rd_kafka_topic_name(m->rkt));
      if (it == by_topic.end() || m->partition < 0) {
        if (m->err) KVS_LOG_WARN("Kafka: %s", rd_kafka_message_errstr(m));
        kafka::Consumer::release(m);
        continue;
      }
      Table& t = tables[it->second];
      const int32_t p = m->partition;
      if (p >= t.partitions) {
        kafka::Consumer::release(m);
        continue;
      }
      if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        // The end of what the broker has: everything below m->offset is applied.
        if (m->offset > t.pending[p]) t.pending[p] = m->offset;
        if (m->offset >= t.target[p]) t.reached[p] = true;
      } else if (m->err) {
        KVS_LOG_ERROR("table %s: %s[%d]: %s", t.cfg.name.c_str(), t.cfg.topic.c_str(), p,
                      rd_kafka_message_errstr(m));
      } else {
        const std::string_view key(static_cast<const char*>(m->key), m->key_len);
        Result<void> r;
        for (;;) {
          if (m->payload == nullptr) {  // tombstone
            auto e = t.writer->erase(key);
            r = e ? Result<void>{} : Result<void>(std::move(e).error());
          } else {
            r = t.writer->put(key, {static_cast<const char*>(m->payload), m->len});
          }
          if (r || g_stop) break;
          if (r.error().code == Errc::kBusy) {
            t.writer->reclaim();  // readers still see the space: let them move on
            std::this_thread::yield();
            continue;
          }
          if (r.error().code == Errc::kTableFull) {
            // Skipping would lose data: wait for space (deletes, or a restart
            // with a larger table), saying so.
            KVS_LOG_ERROR("table %s: %s; holding %s[%d] at offset %lld", t.cfg.name.c_str(),
                          r.error().message.c_str(), t.cfg.topic.c_str(), p,
                          static_cast<long long>(m->offset));
            for (int w = 0; w < 10 && !g_stop; ++w) {
              std::this_thread::sleep_for(std::chrono::milliseconds(100));
            }
            t.writer->reclaim();
            continue;
          }
          break;
        }
        if (g_stop && !r) {
          // Not applied: its offset is not published, so the next kvsd redoes it.
          for (size_t j = i; j < n; ++j) kafka::Consumer::release(batch[j]);
          break;
        }
        if (!r) {
          ++t.skipped;
          KVS_LOG_WARN("table %s: skipped %s[%d] offset %lld: %s", t.cfg.name.c_str(),
                       t.cfg.topic.c_str(), p, static_cast<long long>(m->offset),
                       r.error().message.c_str());
        } else {
          ++t.applied;
        }
        t.pending[p] = m->offset + 1;
        if (m->offset + 1 >= t.target[p]) t.reached[p] = true;
      }
      kafka::Consumer::release(m);
    }
    // Publish offsets only now: every record below them is visible.
    for (auto& t : tables) {
      for (int32_t p = 0; p < t.partitions; ++p) {
        if (t.pending[p] >= 0) {
          t.writer->set_next_offset(static_cast<uint32_t>(p), t.pending[p]);
          t.pending[p] = -1;
        }
      }
      t.writer->reclaim();
    }
    update_all_ready();
    const auto now = clock::now();
    if (watchdog && now >= next_watchdog) {
      notify("WATCHDOG=1");
      next_watchdog = now + std::chrono::microseconds(watchdog_usec / 2);
    }
    if (!all_ready && now >= next_status) {
      next_status = now + std::chrono::seconds(1);
      uint64_t applied = 0;
      double done = 0, total = 0;
      for (const auto& t : tables) {
        applied += t.applied;
        for (int32_t p = 0; p < t.partitions; ++p) {
          total += static_cast<double>(t.target[p]);
          done += static_cast<double>(
              std::min(t.writer->next_offset(static_cast<uint32_t>(p)), t.target[p]));
        }
      }
      const int pct = total > 0 ? static_cast<int>(100.0 * done / total) : 100;
      notify("STATUS=BOOTSTRAPPING: " + std::to_string(applied) + " records, " +
             std::to_string(pct) + "%");
    }
  }
  notify("STOPPING=1");
  KVS_LOG_INFO("stopping: segments stay for the next start");
  return 0;
}

}  // namespace kvs::daemon
